"""How often 4-bit indexer keys pick the same blocks as full-precision ones (issue: quantized K-cache).

For each prompt and indexed layer, the layer's q/k (captured through the indexer observer, dense
forward) are projected by the indexer; block scores are computed once from the full-precision
indexer keys and once from ``dequantize(quantize(keys))``; both go through ``select_blocks`` with
the model's config. Agreement = |chosen_quant & chosen_full| / |chosen_full| over the blocks the
budget chose (sink / local / tail blocks, kept either way, are left out). Mass recall = the
full-precision indexer mass of the quantized choice over that of the full-precision choice: near 1
when the blocks that flip are near-ties, which matter little to attention.

The same measurement for keys merely rounded to bf16 and to FP8 E4M3 (``REFERENCE_ROUNDINGS``, not
cache formats) shows how many flips any loss of precision causes on these scores: a 4-bit format
cannot agree more than a finer rounding does.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from hf_sparse_attn.ops import pooled_attention_mass
from hf_sparse_attn.ops.kcache_quant.naive import FORMATS, bytes_per_vector, dequantize, quantize
from hf_sparse_attn.runtime.config import SparseAttentionConfig
from hf_sparse_attn.runtime.modeling import sparse_config_of
from hf_sparse_attn.runtime.selection import select_blocks

from ..observed import observe_dense_forwards

REFERENCE_ROUNDINGS = {"bf16": (torch.bfloat16, 2), "fp8_e4m3": (torch.float8_e4m3fn, 1)}


def _degraded(k: torch.Tensor, fmt: str, group: int) -> torch.Tensor:
    """Indexer keys after a round trip through a 4-bit cache format or a reference rounding."""
    if fmt in REFERENCE_ROUNDINGS:
        return k.to(REFERENCE_ROUNDINGS[fmt][0]).to(k.dtype)
    return dequantize(*quantize(k, fmt, group), fmt, group, dtype=k.dtype)


@torch.no_grad()
def kcache_selection_agreement(
    model: torch.nn.Module,
    prompts: list[torch.Tensor],
    formats: tuple[str, ...] = (*FORMATS, *REFERENCE_ROUNDINGS),
    group: int = 16,
) -> dict[str, dict[str, float]]:
    """{format: {"agreement", "mass_recall", "bytes_per_key", "bf16_bytes_per_key", "compression"}} over all
    layers and prompts, for each of ``formats``: cache formats (quantized in groups of ``group``) and
    ``REFERENCE_ROUNDINGS`` (which do not depend on the group)."""
    return selection_agreement(capture_indexer_qk(model, prompts), sparse_config_of(model), formats, group)


@torch.no_grad()
def capture_indexer_qk(
    model: torch.nn.Module, prompts: list[torch.Tensor]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(indexer queries, indexer keys) of every indexed layer and prompt, from one dense forward each."""
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def observe(module, query, key, attention_mask):
        captured.append(module.indexer(query, key))

    observe_dense_forwards(model, prompts, observe, "kcache-agreement: capture")
    return captured


@torch.no_grad()
def selection_agreement(
    captured: list[tuple[torch.Tensor, torch.Tensor]],
    cfg: SparseAttentionConfig,
    formats: tuple[str, ...] = (*FORMATS, *REFERENCE_ROUNDINGS),
    group: int = 16,
) -> dict[str, dict[str, float]]:
    """``kcache_selection_agreement`` on captured indexer q/k: one capture serves every group size."""
    scale = 1.0 / math.sqrt(cfg.indexer_dim)
    forced_only = replace(cfg, top_k=1, density=None, top_p=None, layer_top_p=None)
    hits = {f: 0.0 for f in formats}
    mass = {f: 0.0 for f in formats}
    total = total_mass = 0.0
    for q_idx, k_idx in captured:
        scores = pooled_attention_mass(q_idx, k_idx, cfg.block_size, scale, cfg.indexer_heads)
        forced = select_blocks(torch.zeros_like(scores), forced_only).to_dense()
        chosen = select_blocks(scores, cfg).to_dense() & ~forced
        total += float(chosen.sum())
        total_mass += float((scores * chosen).sum())
        for f in formats:
            k_q = _degraded(k_idx, f, group)
            quant = select_blocks(
                pooled_attention_mass(q_idx, k_q, cfg.block_size, scale, cfg.indexer_heads), cfg
            )
            picked = quant.to_dense() & ~forced
            hits[f] += float((picked & chosen).sum())
            mass[f] += float((scores * picked).sum())
    if total == 0:
        raise ValueError(
            "the budget chose no block beyond the forced sink / local / tail ones on these prompts: "
            "use longer prompts (more key blocks than the forced ones) to measure agreement"
        )
    dim = cfg.indexer_dim * cfg.indexer_heads
    out = {}
    for f in formats:
        size = dim * REFERENCE_ROUNDINGS[f][1] if f in REFERENCE_ROUNDINGS else bytes_per_vector(dim, group)
        out[f] = {
            "agreement": hits[f] / total,
            "mass_recall": mass[f] / max(total_mass, 1e-30),
            "bytes_per_key": size,
            "bf16_bytes_per_key": 2 * dim,
            "compression": 2 * dim / size,
        }
    return out
