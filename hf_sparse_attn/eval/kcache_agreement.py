"""How often 4-bit indexer keys pick the same blocks as full-precision ones (issue: quantized K-cache).

For each prompt and indexed layer, the layer's q/k (captured through the indexer observer, dense
forward) are projected by the indexer; block scores are computed once from the full-precision
indexer keys and once from ``dequantize(quantize(keys))``; both go through ``select_blocks`` with
the model's config. Agreement = |chosen_quant & chosen_full| / |chosen_full| over the blocks the
budget chose (sink / local / tail blocks, kept either way, are left out).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ..modeling import indexers, sparse_config_of
from ..ops import pooled_attention_mass
from ..ops.kcache_quant.naive import FORMATS, bytes_per_vector, dequantize, quantize
from ..selection import select_blocks


@torch.no_grad()
def kcache_selection_agreement(
    model: torch.nn.Module, prompts: list[torch.Tensor], formats: tuple[str, ...] = FORMATS, group: int = 16
) -> dict[str, dict[str, float]]:
    """{format: {"agreement", "bytes_per_key", "bf16_bytes_per_key", "compression"}} over all layers and prompts."""
    cfg = sparse_config_of(model)
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def observe(module, query, key, attention_mask):
        captured.append(module.indexer(query, key))

    found = indexers(model)
    for ix in found.values():
        ix.observer = observe
    try:
        for ids in prompts:
            model(input_ids=ids.to(next(model.parameters()).device), logits_to_keep=1)
    finally:
        for ix in found.values():
            ix.observer = None
    scale = 1.0 / math.sqrt(cfg.indexer_dim)
    forced_only = replace(cfg, top_k=1, density=None, top_p=None, layer_top_p=None)
    hits = {f: 0.0 for f in formats}
    total = 0.0
    for q_idx, k_idx in captured:
        scores = pooled_attention_mass(q_idx, k_idx, cfg.block_size, scale, cfg.indexer_heads)
        forced = select_blocks(torch.zeros_like(scores), forced_only).to_dense()
        chosen = select_blocks(scores, cfg).to_dense() & ~forced
        total += float(chosen.sum())
        for f in formats:
            k_q = dequantize(*quantize(k_idx, f, group), f, group, dtype=k_idx.dtype)
            quant = select_blocks(
                pooled_attention_mass(q_idx, k_q, cfg.block_size, scale, cfg.indexer_heads), cfg
            )
            hits[f] += float((quant.to_dense() & chosen).sum())
    dim = cfg.indexer_dim * cfg.indexer_heads
    return {
        f: {
            "agreement": hits[f] / max(total, 1.0),
            "bytes_per_key": bytes_per_vector(dim, group),
            "bf16_bytes_per_key": 2 * dim,
            "compression": 2 * dim / bytes_per_vector(dim, group),
        }
        for f in formats
    }
