"""Attach indexers to a Qwen3 / Qwen3.5 model, freeze the backbone, save and load indexer weights only.

Indexer tensors are named ``layers.<layer_idx>.indexer.<param>`` in ``indexer.safetensors``, so one
file fits every wrapper of the same backbone (CausalLM, the multimodal Qwen3.5 class, a peft model).
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .attention import ATTENTION_NAME
from .config import CONFIG_NAME, SparseAttentionConfig
from .indexer import Indexer

WEIGHTS_NAME = "indexer.safetensors"
SUPPORTED_MODEL_TYPES = ("qwen3", "qwen3_5", "qwen3_5_text")
SUPPORTED_ATTENTION_CLASSES = ("Qwen3Attention", "Qwen3_5Attention")


def _text_config(model: nn.Module):
    config = model.config
    return getattr(config, "text_config", None) or config


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """Causal self-attention modules of a supported model, in layer order; raises for other models."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise NotImplementedError(
            f"hf-sparse-attn supports Qwen3 and Qwen3.5 models (model_type in {SUPPORTED_MODEL_TYPES}); "
            f"got model_type={model_type!r} ({type(model).__name__})"
        )
    layers = [m for m in model.modules() if type(m).__name__ in SUPPORTED_ATTENTION_CLASSES]
    if not layers:
        raise NotImplementedError(f"found no {SUPPORTED_ATTENTION_CLASSES} module in {type(model).__name__}")
    return sorted(layers, key=lambda m: m.layer_idx)


def _is_full_attention(text_config, layer_idx: int) -> bool:
    layer_types = getattr(text_config, "layer_types", None)
    return layer_types is None or layer_types[layer_idx] == "full_attention"


def attach_indexer(
    model: nn.Module, config: SparseAttentionConfig | None = None, replace: bool = False
) -> nn.Module:
    """Add an indexer to every full-attention layer, freeze the backbone, switch to ``sparse_prefill``.

    Layers in ``config.dense_layers`` and sliding-window layers get ``indexer = None`` (dense path);
    Qwen3.5's linear-attention layers are left alone. Returns ``model`` (modified in place).
    """
    config = config or SparseAttentionConfig()
    layers = attention_layers(model)
    if not replace and any(getattr(m, "indexer", None) is not None for m in layers):
        raise ValueError("model already has indexers; pass replace=True to discard them, or use load_indexer")
    text_config = _text_config(model)
    n_layers = getattr(text_config, "num_hidden_layers", None)
    bad = [i for i in config.dense_layers if n_layers is not None and i >= n_layers]
    if bad:
        raise ValueError(f"dense_layers {bad} out of range: the model has {n_layers} layers")
    for p in model.parameters():
        p.requires_grad_(False)
    for module in layers:
        idx = module.layer_idx
        if idx in config.dense_layers or not _is_full_attention(text_config, idx):
            module.indexer = None
            continue
        weight = module.q_proj.weight
        num_heads = text_config.num_attention_heads
        indexer = Indexer(num_heads, text_config.num_key_value_heads, module.head_dim, config, layer_idx=idx)
        module.indexer = indexer.to(device=weight.device, dtype=weight.dtype)
    model.config.sparse_attention = config.to_dict()
    model.set_attn_implementation(ATTENTION_NAME)
    return model


def indexers(model: nn.Module) -> dict[int, Indexer]:
    """{layer_idx: Indexer} of the attached indexers."""
    return {
        m.layer_idx: m.indexer for m in attention_layers(model) if getattr(m, "indexer", None) is not None
    }


def sparse_config_of(model: nn.Module) -> SparseAttentionConfig:
    found = indexers(model)
    if not found:
        raise ValueError("model has no indexers: call attach_indexer(model, config) first")
    return next(iter(found.values())).config


ARCHITECTURE_FIELDS = ("indexer_heads", "indexer_dim", "dense_layers")


def update_sparse_config(model: nn.Module, **changes) -> SparseAttentionConfig:
    """Switch budget / selector / block size of the attached indexers in place (weights untouched).

    A budget field given (``top_k``, ``density`` or ``top_p``) replaces the current budget rule.
    Fields that change the indexer's weights or which layers have one raise: re-attach instead.
    """
    fixed = sorted(set(changes) & set(ARCHITECTURE_FIELDS))
    if fixed:
        raise ValueError(
            f"{fixed} change the indexer architecture; call attach_indexer(model, config) instead"
        )
    current = sparse_config_of(model).to_dict()
    if {"top_k", "density", "top_p"} & set(changes):
        current.update(top_k=None, density=None, top_p=None, layer_top_p=None)
    current.update(changes)
    config = SparseAttentionConfig.from_dict(current)
    for indexer in indexers(model).values():
        indexer.config = config
    model.config.sparse_attention = config.to_dict()
    return config


def indexer_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"layers.{idx}.indexer.{name}": t.detach().contiguous()
        for idx, indexer in indexers(model).items()
        for name, t in indexer.state_dict().items()
    }


def save_indexer(model: nn.Module, directory: str | os.PathLike) -> str:
    """Write ``indexer.safetensors`` + ``sparse_config.json`` (indexer weights only, not the backbone)."""
    os.makedirs(directory, exist_ok=True)
    config = sparse_config_of(model)
    config.save_pretrained(directory)
    path = os.path.join(directory, WEIGHTS_NAME)
    save_file(
        indexer_state_dict(model), path, metadata={"format": "pt", "sparse_config": str(config.to_dict())}
    )
    return path


def _resolve(path_or_repo: str | os.PathLike, revision: str | None) -> str:
    if os.path.isdir(path_or_repo):
        return str(path_or_repo)
    if os.path.exists(path_or_repo):
        raise ValueError(
            f"{path_or_repo} is a file; pass the directory holding {WEIGHTS_NAME} and {CONFIG_NAME}"
        )
    from huggingface_hub import snapshot_download

    return snapshot_download(str(path_or_repo), revision=revision, allow_patterns=[WEIGHTS_NAME, CONFIG_NAME])


def load_indexer(model: nn.Module, path_or_repo: str | os.PathLike, revision: str | None = None) -> nn.Module:
    """Attach indexers with the saved config (if absent or different) and load their weights strictly."""
    directory = _resolve(path_or_repo, revision)
    weights = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}: save one with save_indexer(model, dir)")
    config = SparseAttentionConfig.from_pretrained(directory)
    current = indexers(model)
    if not current or next(iter(current.values())).config != config:
        attach_indexer(model, config, replace=True)
    expected = indexer_state_dict(model)
    state = load_file(weights)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{n}: file {tuple(state[n].shape)} vs model {tuple(expected[n].shape)}"
        for n in sorted(set(state) & set(expected))
        if state[n].shape != expected[n].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{weights} does not fit this model (was it saved from a different base model?): "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected "
            f"{unexpected[:8]}{'...' if len(unexpected) > 8 else ''}, shape mismatches {shapes[:8]}"
        )
    for idx, indexer in indexers(model).items():
        prefix = f"layers.{idx}.indexer."
        indexer.load_state_dict({n[len(prefix) :]: t for n, t in state.items() if n.startswith(prefix)})
    return model
