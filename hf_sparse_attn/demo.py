"""`hf-sparse-attn demo`: one sparse prefill next to the dense one, with the density actually used.

Until the trained proxy backbone ships, the demo model is a tiny random Qwen3 whose indexers keep
their initial weights, so the numbers show the mechanics (selection, density, the error at that
density), not trained quality.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace

import torch
from transformers import AutoModelForCausalLM, Qwen3Config

from .attention import last_selection
from .config import SparseAttentionConfig
from .modeling import attach_indexer, attention_layers


def tiny_qwen3_config() -> Qwen3Config:
    return Qwen3Config(
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=65536,
        tie_word_embeddings=True,
    )


@torch.no_grad()
def run_demo(seq_len: int, sparse_config: SparseAttentionConfig, device: str, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    config = tiny_qwen3_config()
    dense = (
        AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="sdpa").to(device).eval()
    )
    sparse = attach_indexer(copy.deepcopy(dense), sparse_config)
    ids = torch.randint(0, config.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(seed)).to(
        device
    )
    t0 = time.perf_counter()
    ref = dense(ids, logits_to_keep=0).logits.float()
    t_dense = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = sparse(ids, logits_to_keep=0).logits.float()
    t_sparse = time.perf_counter() - t0
    layers = {}
    for module in attention_layers(sparse):
        blocks = last_selection(module)
        layers[module.layer_idx] = None if blocks is None else float(blocks.density().mean())
    full = attach_indexer(copy.deepcopy(dense), replace(sparse_config, top_k=None, top_p=None, density=1.0))
    full_out = full(ids, logits_to_keep=0).logits.float()
    kept = [v for v in layers.values() if v is not None]
    return {
        "seq_len": seq_len,
        "budget": "=".join(map(str, sparse_config.budget)),
        "block_size": sparse_config.block_size,
        "per_layer_kept_fraction": layers,
        "mean_kept_fraction": sum(kept) / max(1, len(kept)),
        "max_abs_diff_vs_dense": float((out - ref).abs().max()),
        "max_abs_diff_vs_dense_at_full_density": float((full_out - ref).abs().max()),
        "top1_agreement_vs_dense": float((out.argmax(-1) == ref.argmax(-1)).float().mean()),
        "seconds_dense": t_dense,
        "seconds_sparse": t_sparse,
        "device": device,
    }
