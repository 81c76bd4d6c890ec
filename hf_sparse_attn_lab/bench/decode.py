"""`hf-sparse-attn bench decode`: per-token decode latency, dense vs sparse, full-size model.

Three levels, all on random bf16 weights and a random KV cache of the stated length (speed does not
depend on the values; the indexers are untrained, so the kept blocks follow the budget rule):

- attention only, one Qwen3-8B layer: SDPA (default backend, GQA) over the whole cache vs one
  ``sparse_decode_step`` (indexer projection, K-cache append, block scores, selection, split-KV
  kernel). Before timing, the decode kernel with every block listed must match SDPA.
- end to end with transformers' default ``DynamicCache``: ``model(next_token, past_key_values=cache)``,
  eager (its update concatenates the whole layer cache each step, timed separately as
  ``cache_cat_ms``); the sparse model is the same model with ``sparse_decode=True``.
- end to end with a ``StaticCache`` under ``torch.compile(mode="reduce-overhead", fullgraph=True)``
  (CUDA graphs), what ``generate(cache_implementation="static")`` compiles: dense ``sdpa`` vs
  ``sparse_prefill`` at the density asked and at density 1.0 (the decode kernel reading every block:
  a dense baseline without transformers' ``repeat_kv`` of a masked SDPA decode). Before timing, each
  compiled step must match its eager step (both at the same cache position) within the dense
  compiled-vs-eager difference of the same run (2x, at least 2e-2) for sdpa and the 1.0 density.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, DynamicCache, StaticCache

from hf_sparse_attn.ops import decode_block_mass, sparse_decode_attention
from hf_sparse_attn.ops.decode_mass.naive import decode_block_mass as reference_decode_block_mass
from hf_sparse_attn.ops.kcache_quant.naive import bytes_per_vector
from hf_sparse_attn.runtime.config import SparseAttentionConfig
from hf_sparse_attn.runtime.decode import IndexerKCache, sparse_decode_step
from hf_sparse_attn.runtime.modeling import attach_indexer, indexers

from .kernels import LayerStub
from .shapes import CONFIGS
from .ttft import set_budget

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
    base |= _scoring_ms(LayerStub(hq, hkv, d, SparseAttentionConfig(block_size=block)), q, k)
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


def _scoring_ms(layer: LayerStub, q: torch.Tensor, k: torch.Tensor) -> dict:
    """The step's block scoring alone: ``ops.decode_block_mass`` (Triton) vs its PyTorch reference,
    over a K-cache's live part (a strided view, as a step reads it), after checking they agree."""
    cfg = layer.indexer.config
    q_idx = layer.indexer.queries(q)
    k_idx = IndexerKCache(layer.indexer.keys(k), "native").keys()
    scale = cfg.indexer_dim**-0.5
    ref = reference_decode_block_mass(q_idx, k_idx, cfg.block_size, scale)
    err = float((decode_block_mass(q_idx, k_idx, cfg.block_size, scale) - ref).norm() / ref.norm())
    if err >= 1e-5:
        raise RuntimeError(f"decode_block_mass kernel differs from its reference: rel err {err:.3g}")
    return {
        "scoring_ms": _ms(lambda: decode_block_mass(q_idx, k_idx, cfg.block_size, scale)),
        "scoring_reference_ms": _ms(lambda: reference_decode_block_mass(q_idx, k_idx, cfg.block_size, scale)),
    }


def _random_cache(cache: DynamicCache | StaticCache, config, B: int, L: int) -> DynamicCache | StaticCache:
    """``cache`` with random keys / values for L tokens in every layer (its first L slots)."""
    hkv, d = config.num_key_value_heads, config.head_dim
    g = torch.Generator(device="cuda").manual_seed(1)
    for i in range(config.num_hidden_layers):
        k, v = (torch.randn(B, hkv, L, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
        cache.update(k, v, i)
    return cache


def _per_token_ms(model, cache, B: int, steps: int) -> float:
    ids = torch.zeros(B, 1, dtype=torch.long, device="cuda")
    return _per_token(lambda: model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1), steps)


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
        cache = _random_cache(DynamicCache(config=config), config, B, L)
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


def _at_position(cache: StaticCache, L: int, step) -> torch.Tensor:
    """Logits of ``step`` with the cache rewound to L filled slots (static layers count their length)."""
    for layer in cache.layers:
        layer.cumulative_length.fill_(L)
    with torch.no_grad():
        return step().float()


def static_compiled_rows(
    cases: list[tuple[int, int]],
    density: float,
    block: int = 64,
    steps: int = 20,
    num_layers: int | None = None,
) -> list[dict]:
    """Qwen3-8B per-token decode over a random ``StaticCache``, eager and compiled with CUDA graphs.

    ``num_layers`` keeps only the first layers, so that a KV cache larger than the card (8 x 128K
    needs 151 GB over 36 layers) fits. Every layer costs the same, and the embedding / lm_head time
    stays whole, so the sparse-vs-dense ratio of a truncated model is a lower bound on the full one.
    """
    config = CONFIGS["qwen3-8b"]()
    if num_layers is not None:
        if not 1 <= num_layers <= config.num_hidden_layers:
            raise ValueError(f"--num-layers must be in 1..{config.num_hidden_layers}, got {num_layers}")
        config.num_hidden_layers = num_layers
        config.layer_types = config.layer_types[:num_layers]
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.bfloat16, attn_implementation="sdpa"
        ).eval()
    attach_indexer(
        model,
        SparseAttentionConfig(block_size=block, density=density, min_sparse_len=1024, sparse_decode=True),
    )
    rows = []
    for B, L in cases:
        rows.append(
            {"num_layers": config.num_hidden_layers, **_static_case(model, config, B, L, density, steps)}
        )
        print(rows[-1], flush=True)
        for ix in indexers(model).values():
            ix.kcache = None
        torch.cuda.empty_cache()
    return rows


def _static_case(model, config, B: int, L: int, density: float, steps: int) -> dict:
    # 256 free slots: every timed step writes the next one
    cache = _random_cache(StaticCache(config=config, max_cache_len=L + 256), config, B, L)
    ids = torch.zeros(B, 1, dtype=torch.long, device="cuda")
    row: dict = {"batch": B, "seq_len": L, "density": density}
    variants = (
        ("dense", "sdpa", density),
        ("all_blocks", "sparse_prefill", 1.0),
        ("sparse", "sparse_prefill", density),
    )
    for name, impl, dens in variants:
        model.set_attn_implementation(impl)
        set_budget(model, density=dens)
        for ix in indexers(model).values():
            ix.kcache = None

        def eager():
            return model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits

        ref = _at_position(cache, L, eager)
        row[f"{name}_eager_ms"] = _per_token(eager, steps)
        torch._dynamo.reset()
        step = _compiled_step(model, ids, cache)
        for _ in range(3):  # CUDA graph warm-up and capture
            got = _at_position(cache, L, step)
        row[f"{name}_compiled_vs_eager_rel_err"] = float((got - ref).norm() / ref.norm())
        row[f"{name}_compiled_ms"] = _per_token(step, steps)
    bound = max(2e-2, 2 * row["dense_compiled_vs_eager_rel_err"])
    if row["all_blocks_compiled_vs_eager_rel_err"] >= bound:
        raise RuntimeError(f"compiled sparse decode (all blocks) differs from eager: {row}")
    row["speedup_vs_dense_compiled"] = row["dense_compiled_ms"] / row["sparse_compiled_ms"]
    row["speedup_vs_all_blocks_compiled"] = row["all_blocks_compiled_ms"] / row["sparse_compiled_ms"]
    return row


def _compiled_step(model, ids: torch.Tensor, cache: StaticCache):
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    return lambda: compiled(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits


def _per_token(step, steps: int) -> float:
    with torch.no_grad():
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3
