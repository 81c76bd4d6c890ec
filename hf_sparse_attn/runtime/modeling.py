"""Attach indexers to a Qwen3 / Qwen3.5 model, freeze the backbone, save and load indexer weights only.

Indexer tensors are named ``layers.<layer_idx>.indexer.<param>`` in ``indexer.safetensors``, so one
file fits every wrapper of the same backbone (CausalLM, the multimodal Qwen3.5 class, a peft model).
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from .attention import ATTENTION_NAME, sparse_prefill_attention
from .config import CONFIG_NAME, SparseAttentionConfig, write_config
from .fileio import temp_path_beside
from .forward_hooks import install_forward_hooks
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


def _build_indexers(model: nn.Module, config: SparseAttentionConfig) -> dict[nn.Module, Indexer | None]:
    """New indexers for ``model``'s attention layers, validated against the model, not yet installed."""
    layers = attention_layers(model)
    text_config = _text_config(model)
    n_layers = getattr(text_config, "num_hidden_layers", None) or len(layers)
    bad = [i for i in config.dense_layers if i >= n_layers]
    if bad:
        raise ValueError(
            f"dense_layers {bad} out of range: the model has {n_layers} layers (0..{n_layers - 1})"
        )
    n_kv = text_config.num_key_value_heads
    sparse_layers = {
        m.layer_idx
        for m in layers
        if m.layer_idx not in config.dense_layers and _is_full_attention(text_config, m.layer_idx)
    }
    for layer, head in config.retrieval_heads:
        if layer not in sparse_layers or head >= n_kv:
            raise ValueError(
                f"retrieval_heads entry [{layer}, {head}] names no sparse layer / kv head of this model: layers "
                f"with an indexer are {sorted(sparse_layers)}, kv heads 0..{n_kv - 1}"
            )
    built: dict[nn.Module, Indexer | None] = {}
    for module in layers:
        idx = module.layer_idx
        if idx not in sparse_layers:
            built[module] = None
            continue
        weight = module.q_proj.weight
        indexer = Indexer(text_config.num_attention_heads, n_kv, module.head_dim, config, layer_idx=idx)
        built[module] = indexer.to(device=weight.device, dtype=weight.dtype)
    return built


def _install(model: nn.Module, built: dict[nn.Module, Indexer | None], config: SparseAttentionConfig) -> None:
    install_forward_hooks(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for module, indexer in built.items():
        module.indexer = indexer
        module.sparse_prefill_attention = sparse_prefill_attention
    model.config.sparse_attention = config.to_dict()
    model.set_attn_implementation(ATTENTION_NAME)


def attach_indexer(
    model: nn.Module, config: SparseAttentionConfig | None = None, replace: bool = False
) -> nn.Module:
    """Add an indexer to every full-attention layer, freeze the backbone, switch to ``sparse_prefill``.

    Layers in ``config.dense_layers`` and sliding-window layers get ``indexer = None`` (dense path);
    Qwen3.5's linear-attention layers are left alone. Returns ``model`` (modified in place; on an
    error it is left unchanged).
    """
    config = config or SparseAttentionConfig()
    if not isinstance(config, SparseAttentionConfig):
        raise TypeError(f"config must be a SparseAttentionConfig, got {type(config).__name__}")
    layers = attention_layers(model)
    if not replace and any(getattr(m, "indexer", None) is not None for m in layers):
        raise ValueError("model already has indexers; pass replace=True to discard them, or use load_indexer")
    _install(model, _build_indexers(model, config), config)
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


def _indexer_tensors(by_layer: Iterable[tuple[int, Indexer]]) -> dict[str, torch.Tensor]:
    """``layers.<i>.indexer.<param>`` -> tensor: the names of ``indexer.safetensors``."""
    return {
        f"layers.{idx}.indexer.{name}": t.detach().contiguous()
        for idx, indexer in by_layer
        for name, t in indexer.state_dict().items()
    }


def indexer_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return _indexer_tensors(indexers(model).items())


def save_indexer(model: nn.Module, directory: str | os.PathLike) -> str:
    """Write ``indexer.safetensors`` + ``sparse_config.json`` (indexer weights only, not the backbone).

    Both go through temp files renamed into place once both are written, so a failed save leaves the
    previous pair; the weights carry the config in their metadata, and ``load_indexer`` refuses a pair
    whose two copies differ.
    """
    os.makedirs(directory, exist_ok=True)
    config = sparse_config_of(model)
    path = os.path.join(directory, WEIGHTS_NAME)
    state = indexer_state_dict(model)
    meta = {"format": "pt", "sparse_config": json.dumps(config.to_dict(), sort_keys=True)}
    tmp_weights, tmp_config = (
        temp_path_beside(os.path.join(directory, n)) for n in (WEIGHTS_NAME, CONFIG_NAME)
    )
    try:
        with open(tmp_weights, "wb") as f:  # save_file would replace the temp file with an owner-only one
            f.write(save(state, metadata=meta))
        write_config(config, tmp_config)
        os.replace(tmp_weights, path)
        os.replace(tmp_config, os.path.join(directory, CONFIG_NAME))
    finally:
        for tmp in (tmp_weights, tmp_config):
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _resolve(path_or_repo: str | os.PathLike, revision: str | None) -> str:
    """A local directory, else a Hub repo id; an argument that is neither names both readings."""
    text = str(path_or_repo)
    if os.path.isdir(text):
        return text
    if os.path.exists(text):
        raise ValueError(f"{text} is a file; pass the directory holding {WEIGHTS_NAME} and {CONFIG_NAME}")
    local = f"no local directory {os.path.abspath(text)!r}"
    if not REPO_ID.match(text):
        raise FileNotFoundError(f"{local}, and {text!r} is not a Hub repo id (ORG/NAME) either")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(text, revision=revision, allow_patterns=[WEIGHTS_NAME, CONFIG_NAME])
    except Exception as err:
        raise FileNotFoundError(
            f"{local}, and the Hub repo {text!r} (revision {revision or 'main'}) could not be fetched "
            f"({type(err).__name__}: {err}); pass an existing directory or a reachable repo id"
        ) from None


def _read_weights(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(path, framework="pt") as f:
            names = f.keys()
            return {n: f.get_tensor(n) for n in names}, f.metadata() or {}
    except Exception as err:
        raise ValueError(
            f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); re-save it with "
            "save_indexer(model, dir)"
        ) from None


def _saved_config(meta: dict[str, str]) -> dict | None:
    raw = meta.get("sparse_config")
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return ast.literal_eval(raw)  # files written before the metadata was JSON


def load_indexer(model: nn.Module, path_or_repo: str | os.PathLike, revision: str | None = None) -> nn.Module:
    """Attach indexers with the saved config and load their weights strictly.

    Everything is checked before the model is touched (file format, config, names, shapes, finite
    values, the weights' own copy of the config); on any error the model keeps its indexers.
    """
    directory = _resolve(path_or_repo, revision)
    weights = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}: save one with save_indexer(model, dir)")
    config = SparseAttentionConfig.from_pretrained(directory)
    state, meta = _read_weights(weights)
    saved = _saved_config(meta)
    if saved is not None and SparseAttentionConfig.from_dict(saved) != config:
        raise ValueError(
            f"{os.path.join(directory, CONFIG_NAME)} differs from the config saved inside {weights}: the two files "
            "were not written by one save_indexer call (an interrupted save, or files copied from two saves)"
        )
    built = _build_indexers(model, config)
    expected = _indexer_tensors((m.layer_idx, ix) for m, ix in built.items() if ix is not None)
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
    bad = [n for n, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ValueError(
            f"{weights} holds non-finite values (NaN / inf) in {bad[:8]}: the indexer cannot be used"
        )
    for module, indexer in built.items():
        if indexer is not None:
            prefix = f"layers.{module.layer_idx}.indexer."
            indexer.load_state_dict({n[len(prefix) :]: t for n, t in state.items() if n.startswith(prefix)})
    _install(model, built, config)
    return model
