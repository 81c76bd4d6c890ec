"""Model-level forward hooks that ``attach_indexer`` installs once per model.

- Positions for left padding: a padded prefill called without ``position_ids`` gets the positions
  ``generate`` would give, so a padded row selects the blocks it selects alone.
- With ``sparse_decode``, the per-layer indexer K-cache belongs to one KV cache at a time: it is
  reordered with the cache (beam search), dropped (and rebuilt from the keys by the next step) when a
  step comes with another cache than the one it follows, and two threads running the model at once are
  refused, since they would share it.
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import nn

CONCURRENT_USE = (
    "hf_sparse_attn: this model (sparse_decode=True) is already running a forward call in another thread; "
    "its indexer K-cache and last_selection are per model, so concurrent calls would read each other's. "
    "Use one model per thread, or serialize the calls (e.g. a threading.Lock around generate)"
)


class CallState:
    """What the hooks keep per model: the KV cache the K-caches follow, and the thread in a forward."""

    def __init__(self, model: nn.Module) -> None:
        self.model = weakref.ref(model)
        self.lock = threading.Lock()
        self.owner: int | None = None  # the thread inside a forward call
        self.followed: weakref.ref | None = None


def _kv_cache(kwargs: dict):
    cache = kwargs.get("past_key_values")
    return cache if cache is not None else kwargs.get("cache")


def _sparse_decode(model: nn.Module) -> bool:
    return bool((getattr(model.config, "sparse_attention", None) or {}).get("sparse_decode"))


def _kcache_layers(model: nn.Module) -> list[nn.Module]:
    """The model's indexers (on its attention modules)."""
    return [m.indexer for m in model.modules() if getattr(m, "indexer", None) is not None]


def positions_from_padding(module: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook: a left-padded prefill without ``position_ids`` gets each row counted from its
    first token. Dense attention is unchanged by it (RoPE is relative); the indexer projects rotated
    q/k, so without it a padded row would select other blocks than the same row alone."""
    mask = kwargs.get("attention_mask")
    if kwargs.get("position_ids") is not None or mask is None or mask.dim() != 2 or args:
        return None
    cache = _kv_cache(kwargs)
    if cache is not None and cache.get_seq_length() > 0:
        return None
    ids = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
    if ids is None or mask.shape[1] != ids.shape[1] or bool(mask[:, 0].all()):
        return None
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return args, {**kwargs, "position_ids": positions}


def _follow_reorders(state: CallState, cache) -> None:
    """Make ``cache.reorder_cache`` (what beam search calls) reorder the layers' K-caches too."""
    if getattr(cache, "_hf_sparse_attn_follows", False) or not hasattr(cache, "reorder_cache"):
        return
    reorder_kv = cache.reorder_cache
    model_ref = state.model

    def reorder_cache(beam_idx: torch.Tensor) -> None:
        reorder_kv(beam_idx)
        model = model_ref()
        for indexer in _kcache_layers(model) if model is not None else []:
            if indexer.kcache is not None:
                indexer.kcache.reorder(beam_idx)

    cache.reorder_cache = reorder_cache
    cache._hf_sparse_attn_follows = True


def enter_call(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook (sparse decode only): one call at a time; K-caches follow this call's cache."""
    if torch.compiler.is_compiling() or not _sparse_decode(module):
        return
    state: CallState = module._hf_sparse_attn_calls
    if not state.lock.acquire(blocking=False):
        raise RuntimeError(CONCURRENT_USE)
    state.owner = threading.get_ident()
    cache = _kv_cache(kwargs)
    if cache is None:
        return
    _follow_reorders(state, cache)
    followed = state.followed() if state.followed is not None else None
    if followed is not cache:
        for indexer in _kcache_layers(module):
            indexer.kcache = None  # built for another cache: the next step rebuilds it from the keys
        state.followed = weakref.ref(cache)


def leave_call(module: nn.Module, args: tuple, kwargs: dict, output) -> None:
    """Forward hook, run even when the forward raised: ends the call ``enter_call`` began."""
    if torch.compiler.is_compiling() or not _sparse_decode(module):
        return
    state: CallState = module._hf_sparse_attn_calls
    if state.owner == threading.get_ident():  # not a call refused by enter_call
        state.owner = None
        state.lock.release()


def install_forward_hooks(model: nn.Module) -> None:
    """Register the hooks once per model (re-attaching indexers keeps them)."""
    if getattr(model, "_hf_sparse_attn_calls", None) is not None:
        return
    model._hf_sparse_attn_calls = CallState(model)
    model.register_forward_pre_hook(positions_from_padding, with_kwargs=True)
    model.register_forward_pre_hook(enter_call, with_kwargs=True)
    model.register_forward_hook(leave_call, with_kwargs=True, always_call=True)
