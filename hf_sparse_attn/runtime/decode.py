"""Sparse decode: each new token attends to the cache blocks its indexer query picks.

The indexer keys of every cached token live in an ``IndexerKCache`` on the layer's indexer (filled
at prefill, one entry appended per decode step, in the model dtype or 4 bits). A decode step scores
the key blocks with the indexer's softmax mass pooled per block (the prefill score, for one query
row; ``ops.decode_block_mass``), keeps the budget's blocks plus sink and local blocks
(``selection.select_decode_blocks``) and runs the split-KV decode kernel on them: per layer one
projection, two scoring launches, a few small selection ops and two attention launches, all sized
from shapes, so nothing waits on the host.

The K-cache follows the sequence by length: one entry appended per step while it is one shorter than
the KV cache. A static cache hands every step the whole preallocated cache plus a key mask: the
K-cache then spans the same slots and each step writes its new key at the row's last valid slot
(device-side, so the step can be captured in a CUDA graph). The key mask (static caches, left-padded
batches) also masks the scores and the kernel, and places the sink blocks at each row's first valid
key and the local blocks before its last. Any other mismatch (a cache built by chunked prefill, a
cache from another call, a changed batch, the first step over a static cache) rebuilds it from the
keys the layer receives (correct, one projection of the whole cache), logged once at debug level.
Beam search reorders the KV cache through ``Cache.reorder_cache``, which ``forward_hooks`` extends to
reorder the K-caches too.
"""

from __future__ import annotations

import math

import torch

from .. import ops
from .log import debug_once
from .selection import select_decode_blocks


class IndexerKCache:
    """Indexer keys [B, G, L, d] of one layer's cached tokens, grown in place (capacity doubles).

    ``fmt`` "native" keeps the indexer's dtype; "int4" / "fp4" keep 4-bit codes with an FP8 scale
    per 16 values (``ops.kcache_quant``: Triton kernels on CUDA), dequantized when a step reads them.
    """

    def __init__(self, k_idx: torch.Tensor, fmt: str = "native") -> None:
        self.fmt = fmt
        self.dtype = k_idx.dtype
        self.length = 0
        self._store: list[torch.Tensor] = []
        self.append(k_idx)

    @property
    def batch(self) -> int:
        return self._store[0].shape[0]

    def _encode(self, k_idx: torch.Tensor) -> list[torch.Tensor]:
        if self.fmt == "native":
            return [k_idx]
        return list(ops.quantize_kcache(k_idx, self.fmt))

    def append(self, k_idx: torch.Tensor) -> None:
        parts = self._encode(k_idx)
        new = self.length + k_idx.shape[2]
        if not self._store or new > self._store[0].shape[2]:
            capacity = max(new, 2 * self.length, 256)
            grown = [p.new_empty(*p.shape[:2], capacity, p.shape[3]) for p in parts]
            if not torch.compiler.is_compiling():  # a fixed address: CUDA graphs replay writes into it
                for g in grown:
                    torch._dynamo.mark_static_address(g)
            for old, g in zip(self._store, grown, strict=False):  # no old store on the first append
                g[:, :, : self.length] = old[:, :, : self.length]
            self._store = grown
        for store, p in zip(self._store, parts, strict=True):
            store[:, :, self.length : new] = p
        self.length = new

    def write(self, slot: torch.Tensor, k_idx: torch.Tensor) -> None:
        """Store one key per row, k_idx [B, G, 1, d], at cache slot ``slot`` [B] (a device tensor)."""
        for store, p in zip(self._store, self._encode(k_idx), strict=True):
            store[:, :, : self.length].scatter_(2, _slot_index(slot, p), p)

    def reorder(self, beam_idx: torch.Tensor) -> None:
        """Reorder the rows as the KV cache is reordered (beam search: ``Cache.reorder_cache``)."""
        self._store = [s.index_select(0, beam_idx.to(s.device)) for s in self._store]

    def keys(self) -> torch.Tensor:
        """The cached indexer keys [B, G, L, d] in the indexer's dtype."""
        parts = [s[:, :, : self.length] for s in self._store]
        if self.fmt == "native":
            return parts[0]
        return ops.dequantize_kcache(*parts, self.fmt, dtype=self.dtype)

    def nbytes(self) -> int:
        """Bytes held by the cached entries (not the spare capacity)."""
        return sum(s[:, :, : self.length].nbytes for s in self._store)


def store_prefill_keys(indexer: torch.nn.Module, k_idx: torch.Tensor | None, key: torch.Tensor) -> None:
    """Start the layer's K-cache at a prefill (from ``k_idx`` when the sparse path already has it)."""
    if k_idx is None:
        k_idx = indexer.keys(key)
    indexer.kcache = IndexerKCache(k_idx, indexer.config.indexer_cache_format)


def _slot_index(slot: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``slot`` [B] as a gather / scatter index along dim 2 of ``like`` [B, H, *, d]: [B, H, 1, d]."""
    return slot.view(-1, 1, 1, 1).expand(like.shape[0], like.shape[1], 1, like.shape[3])


def _kcache_for_step(indexer: torch.nn.Module, key: torch.Tensor, last: torch.Tensor | None) -> IndexerKCache:
    cache, L = indexer.kcache, key.shape[2]
    same_batch = cache is not None and cache.batch == key.shape[0]
    if same_batch and cache.length == L - 1:
        cache.append(indexer.keys(key[:, :, L - 1 :]))
    elif same_batch and cache.length == L and last is not None:
        cache.write(last, indexer.keys(key.gather(2, _slot_index(last, key))))
    else:
        debug_once("sparse_decode: indexer K-cache rebuilt from the KV cache (it did not follow this cache)")
        store_prefill_keys(indexer, None, key)
    return indexer.kcache


def sparse_decode_step(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decode step of a layer: query [B, Hq, 1, D] over the cache key/value [B, Hkv, L, D] ->
    attention output [B, 1, Hq, D] (the layout attention functions return). ``key_valid`` [B, L]
    bool: the keys each row may attend to (a static or left-padded cache's mask; None = all)."""
    indexer = module.indexer
    cfg = indexer.config
    bounds = last = lens = None
    if key_valid is not None:
        slots = torch.arange(key.shape[2], device=key.device)
        last = torch.where(key_valid, slots, -1).amax(-1)
        first = torch.where(key_valid, slots, key.shape[2]).amin(-1)
        bounds, lens = (first // cfg.block_size, last // cfg.block_size), last + 1
    cache = _kcache_for_step(indexer, key, last)
    scores = ops.decode_block_mass(
        indexer.queries(query), cache.keys(), cfg.block_size, 1.0 / math.sqrt(cfg.indexer_dim), key_valid
    )
    num, idx = select_decode_blocks(scores, cfg, bounds)
    indexer.last_decode_selection = (num, idx)
    out, _ = ops.sparse_decode_attention(
        query, key, value, num, idx, cfg.block_size, scaling, lens, key_valid
    )
    return out.transpose(1, 2).contiguous()
