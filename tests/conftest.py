"""Tiny random Qwen3 / Qwen3.5 models and reference helpers shared by the CPU tests."""

from __future__ import annotations

import copy
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from transformers import AutoModelForCausalLM, Qwen3Config
from transformers.models.qwen3_5 import Qwen3_5TextConfig

import hf_sparse_attn  # noqa: F401  (registers sparse_prefill)

VOCAB = 128


def qwen3_config(
    num_heads: int = 8, num_kv_heads: int = 2, head_dim: int = 16, layers: int = 2
) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    )


def qwen3_5_config(layers: int = 4) -> Qwen3_5TextConfig:
    return Qwen3_5TextConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        max_position_embeddings=8192,
    )


def build(config, seed: int = 0, attn: str = "sdpa"):
    """A model from a private copy of ``config`` (from_config mutates the config it gets)."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=attn).eval()


def twin(model):
    """An independent copy of ``model`` to attach indexers to, leaving the dense one untouched."""
    return copy.deepcopy(model)


@pytest.fixture(params=["qwen3", "qwen3_5"])
def tiny_config(request):
    return qwen3_config() if request.param == "qwen3" else qwen3_5_config()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative error ||out - ref|| / ||ref|| in fp32 (fla's assert style: one number per tensor)."""
    return float((out.float() - ref.float()).norm() / ref.float().norm().clamp(min=1e-12))


def dense_causal_attention(q, k, v, scale, token_mask=None):
    """Materialized reference: causal softmax attention with an optional extra bool mask [B, H, S, S]."""
    B, H, S, D = q.shape
    rep = H // k.shape[1]
    kk, vv = k.float().repeat_interleave(rep, 1), v.float().repeat_interleave(rep, 1)
    scores = q.float() @ kk.transpose(-1, -2) * scale
    keep = torch.ones(S, S, dtype=torch.bool).tril()
    keep = keep if token_mask is None else keep & token_mask
    scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)
    return probs @ vv, probs


@pytest.fixture(autouse=True)
def _kernels_at_full_density(monkeypatch):
    """Many tests compare the sparse path with sdpa at density 1: there they must run the sparse
    kernels, not the dense shortcut a full budget takes in use (tested on its own in test_model.py)."""
    from hf_sparse_attn.runtime import attention

    monkeypatch.setattr(attention, "DENSE_WHEN_FASTER", False)
