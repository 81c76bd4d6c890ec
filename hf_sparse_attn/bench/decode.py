"""`hf-sparse-attn bench decode`: per-token decode latency, dense vs sparse, full-size model.

Two levels, both on random bf16 weights and a random KV cache of the stated length (speed does not
depend on the values; the indexers are untrained, so the kept blocks follow the budget rule):

- attention only, one Qwen3-8B layer: SDPA (default backend, GQA) over the whole cache vs one
  ``sparse_decode_step`` (indexer projection, K-cache append, block scores, selection, split-KV
  kernel). Before timing, the decode kernel with every block listed must match SDPA.
- end to end, the path ``generate`` takes: ``model(next_token, past_key_values=cache)`` with
  transformers' default ``DynamicCache`` (its update concatenates the whole layer cache each step,
  which is timed separately as ``cache_cat_ms``); the sparse model is the same model with
  ``sparse_decode=True``. No ``torch.compile``: a static cache hands attention the padded cache and a
  mask, which the sparse path decodes densely.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, DynamicCache

from ..config import SparseAttentionConfig
from ..decode import IndexerKCache, sparse_decode_step
from ..modeling import attach_indexer, indexers
from ..ops import sparse_decode_attention
from ..ops.kcache_quant.naive import bytes_per_vector
from .kernels import LayerStub
from .shapes import CONFIGS

GATE_REL_ERR = 2e-2


def _ms(fn, repeats: int = 50) -> float:
    """Median of CUDA-event timings after warm-up."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def attention_rows(
    seq_lens: list[int], batches: list[int], densities: list[float], block: int = 64
) -> list[dict]:
    """One layer of Qwen3-8B (32 q / 8 kv heads, D 128), one decode step, per (batch, cache length)."""
    rows = []
    for B in batches:
        for L in seq_lens:
            rows += _attention_case(B, L, densities, block)
            torch.cuda.empty_cache()
    return rows


def _attention_case(B: int, L: int, densities: list[float], block: int) -> list[dict]:
    hq, hkv, d = 32, 8, 128
    scale = d**-0.5
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, hq, 1, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(B, hkv, L, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    dense = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)
    nk = math.ceil(L / block)
    full_idx = torch.arange(nk, device="cuda", dtype=torch.int32).expand(B, 1, nk).contiguous()
    full_num = torch.full((B, 1), nk, device="cuda", dtype=torch.int32)
    full, _ = sparse_decode_attention(q, k, v, full_num, full_idx, block, scale)
    err = float((full.float() - dense.float()).norm() / dense.float().norm())
    if err >= GATE_REL_ERR:
        raise RuntimeError(f"decode kernel with every block listed differs from SDPA: rel err {err:.3g}")
    sdpa_ms = _ms(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True))
    base = {
        "batch": B,
        "seq_len": L,
        "sdpa_ms": sdpa_ms,
        "kernel_all_blocks_ms": _ms(
            lambda: sparse_decode_attention(q, k, v, full_num, full_idx, block, scale)
        ),
        "gate_rel_err": err,
    }
    rows = []
    for density in densities:
        cfg = SparseAttentionConfig(block_size=block, density=density, sparse_decode=True)
        layer = LayerStub(hq, hkv, d, cfg)
        layer.indexer.kcache = IndexerKCache(layer.indexer.keys(k[:, :, : L - 1]), "native")

        def step(layer=layer):
            layer.indexer.kcache.length = L - 1  # every timed step appends the same new token
            return sparse_decode_step(layer, q, k, v, scale)

        step_ms = _ms(step)
        num, idx = layer.indexer.last_decode_selection
        layer.indexer.kcache = IndexerKCache(layer.indexer.keys(k[:, :, : L - 1]), "int4")
        step_int4_ms = _ms(step)
        kernel_ms = _ms(lambda num=num, idx=idx: sparse_decode_attention(q, k, v, num, idx, block, scale))
        rows.append(
            {
                **base,
                "density": float(num.float().mean()) / nk,
                "step_ms": step_ms,
                "step_int4_kcache_ms": step_int4_ms,
                "kernel_ms": kernel_ms,
                "speedup_step_vs_sdpa": sdpa_ms / step_ms,
                "speedup_kernel_vs_sdpa": sdpa_ms / kernel_ms,
            }
        )
        print(rows[-1], flush=True)
    return rows


def _random_cache(model, config, B: int, L: int) -> DynamicCache:
    cache = DynamicCache(config=config)
    hkv, d = config.num_key_value_heads, config.head_dim
    g = torch.Generator(device="cuda").manual_seed(1)
    for i in range(config.num_hidden_layers):
        k, v = (torch.randn(B, hkv, L, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
        cache.update(k, v, i)
    return cache


def _per_token_ms(model, cache, B: int, steps: int) -> float:
    ids = torch.zeros(B, 1, dtype=torch.long, device="cuda")
    with torch.no_grad():
        for _ in range(3):
            model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3


def _cat_ms(keys: torch.Tensor) -> float:
    """What ``DynamicCache.update`` does to one tensor of one layer per step."""
    return _ms(lambda: torch.cat([keys, keys[:, :, :1]], dim=2), repeats=10)


def end_to_end_rows(
    cases: list[tuple[int, int]], density: float, block: int = 64, steps: int = 20
) -> list[dict]:
    """Qwen3-8B per-token decode time over a random cache: (batch, cache length) cases."""
    config = CONFIGS["qwen3-8b"]()
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.bfloat16, attn_implementation="sdpa"
        ).eval()
    sparse_cfg = SparseAttentionConfig(
        block_size=block, density=density, min_sparse_len=1024, sparse_decode=True
    )
    attach_indexer(model, sparse_cfg)
    rows = []
    for B, L in cases:
        cache = _random_cache(model, config, B, L)
        cat_ms = _cat_ms(cache.layers[0].keys) * 2 * config.num_hidden_layers
        model.set_attn_implementation("sdpa")
        dense_ms = _per_token_ms(model, cache, B, steps)
        model.set_attn_implementation("sparse_prefill")
        sparse_ms = _per_token_ms(model, cache, B, steps)
        kcache_native = sum(ix.kcache.nbytes() for ix in indexers(model).values())
        per_key = sparse_cfg.indexer_dim
        rows.append(
            {
                "batch": B,
                "seq_len": L,
                "density": density,
                "dense_ms": dense_ms,
                "sparse_ms": sparse_ms,
                "speedup": dense_ms / sparse_ms,
                "cache_cat_ms": cat_ms,
                "kv_cache_gib": sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
                / 2**30,
                "indexer_kcache_bf16_mib": kcache_native / 2**20,
                "indexer_kcache_4bit_mib": kcache_native / 2**20 * bytes_per_vector(per_key) / (2 * per_key),
            }
        )
        print(rows[-1], flush=True)
        del cache
        for ix in indexers(model).values():
            ix.kcache = None
        torch.cuda.empty_cache()
    return rows
