"""Sparse decode: the decode kernel against its reference and a materialized softmax, decode-time block
selection against the prefill rule, the indexer K-cache, and generation through the public path."""

from __future__ import annotations

import copy
import math
import threading

import pytest
import torch
from conftest import build, qwen3_config, rel_err

from hf_sparse_attn import SparseAttentionConfig, attach_indexer, indexers, select_blocks
from hf_sparse_attn.ops.decode_mass.naive import decode_block_mass
from hf_sparse_attn.ops.kcache_quant.naive import bytes_per_vector, dequantize, quantize
from hf_sparse_attn.ops.sparse_decode.naive import sparse_decode_attention
from hf_sparse_attn.runtime.decode import IndexerKCache
from hf_sparse_attn.runtime.selection import select_decode_blocks

TOL = {torch.float32: 2e-5, torch.float16: 2e-3}


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # Triton runs interpreted on the CPU


def _on_device(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(DEVICE) for t in tensors]


def _case(B, Hq, Hkv, L, D, bs, G, width, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, 1, D, generator=g).to(dtype)
    k, v = (torch.randn(B, Hkv, L, D, generator=g).to(dtype) for _ in range(2))
    nk = -(-L // bs)
    idx = torch.stack([torch.randperm(nk, generator=g)[:width] for _ in range(B * G)]).view(B, G, width)
    num = torch.randint(1, width + 1, (B, G), generator=g)
    return q, k, v, num.int(), idx.int()


def _materialized(q, k, v, num, idx, bs, scale, lens, key_mask=None):
    """Softmax over a token mask built from the block list: the definition, S x L materialized."""
    B, Hq, _, D = q.shape
    Hkv, L, G = k.shape[1], k.shape[2], num.shape[1]
    keep = torch.zeros(B, G, L, dtype=torch.bool)
    for b in range(B):
        for g in range(G):
            for kb in idx[b, g, : num[b, g]].tolist():
                keep[b, g, kb * bs : (kb + 1) * bs] = True
    keep &= torch.arange(L)[None, None] < lens[:, None, None]
    if key_mask is not None:
        keep &= key_mask[:, None]
    keep = keep.repeat_interleave(Hq // G, 1)
    kk, vv = k.float().repeat_interleave(Hq // Hkv, 1), v.float().repeat_interleave(Hq // Hkv, 1)
    s = (q.float() @ kk.transpose(-1, -2))[:, :, 0] * scale
    s = s.masked_fill(~keep, float("-inf"))
    return (torch.softmax(s, -1).nan_to_num(0.0)[:, :, None] @ vv), torch.logsumexp(s, -1)


CASES = [  # (B, Hq, Hkv, L, D, block, groups, width)
    (2, 8, 2, 300, 32, 16, 1, 7),
    (1, 6, 2, 333, 16, 32, 2, 4),
    (3, 4, 4, 129, 64, 64, 4, 3),
    (1, 32, 8, 1000, 64, 64, 1, 16),
]


@pytest.mark.parametrize("B,Hq,Hkv,L,D,bs,G,W", CASES)
def test_reference_matches_materialized_softmax(B, Hq, Hkv, L, D, bs, G, W):
    q, k, v, num, idx = _case(B, Hq, Hkv, L, D, bs, G, W)
    lens = torch.tensor([L - 5 * b for b in range(B)])
    out, lse = sparse_decode_attention(q, k, v, num, idx, bs, 0.3, lens)
    ref, ref_lse = _materialized(q, k, v, num, idx, bs, 0.3, lens)
    assert rel_err(out, ref) < 1e-5
    finite = torch.isfinite(ref_lse)
    assert torch.allclose(lse[:, :, 0][finite], ref_lse[finite], atol=1e-5)


def _holes(B, L, seed=1):
    """A key mask with left padding and scattered holes (a static or padded cache's mask)."""
    mask = torch.rand(B, L, generator=torch.Generator().manual_seed(seed)) > 0.3
    mask[:, :5] = False
    return mask


@pytest.mark.parametrize("B,Hq,Hkv,L,D,bs,G,W", CASES)
def test_reference_key_mask_matches_materialized_softmax(B, Hq, Hkv, L, D, bs, G, W):
    q, k, v, num, idx = _case(B, Hq, Hkv, L, D, bs, G, W)
    lens = torch.tensor([L - 5 * b for b in range(B)])
    mask = _holes(B, L)
    out, _ = sparse_decode_attention(q, k, v, num, idx, bs, 0.3, lens, mask)
    ref, _ = _materialized(q, k, v, num, idx, bs, 0.3, lens, mask)
    assert rel_err(out, ref) < 1e-5
    with pytest.raises(ValueError, match="key_mask must be bool"):
        sparse_decode_attention(q, k, v, num, idx, bs, 0.3, lens, mask.float())


def test_full_block_list_is_dense_attention():
    q, k, v, _, _ = _case(2, 8, 2, 200, 32, 16, 1, 1)
    nk = 13
    idx = torch.arange(nk).expand(2, 1, nk).flip(-1).contiguous().int()
    out, _ = sparse_decode_attention(q, k, v, torch.full((2, 1), nk).int(), idx, 16, 0.2)
    kk, vv = k.repeat_interleave(4, 1), v.repeat_interleave(4, 1)
    dense = torch.nn.functional.scaled_dot_product_attention(q, kk, vv, scale=0.2)
    assert rel_err(out, dense) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("splits", [None, 1, 3])
@pytest.mark.parametrize("B,Hq,Hkv,L,D,bs,G,W", CASES)
def test_triton_decode_kernel(B, Hq, Hkv, L, D, bs, G, W, splits, dtype):
    pytest.importorskip("triton")
    from hf_sparse_attn.ops.sparse_decode.triton import sparse_decode_attention_triton

    q, k, v, num, idx = _case(B, Hq, Hkv, L, D, bs, G, W, dtype=dtype)
    lens = torch.tensor([L - 3 * b for b in range(B)])
    num[0, 0] = 0
    q, k, v, num, idx, lens = _on_device(q, k, v, num, idx, lens)
    out, lse = sparse_decode_attention_triton(q, k, v, num, idx, bs, 0.25, lens, splits=splits)
    ref, ref_lse = sparse_decode_attention(q, k, v, num, idx, bs, 0.25, lens)
    assert rel_err(out, ref) < TOL[dtype]
    assert torch.equal(torch.isfinite(lse), torch.isfinite(ref_lse))
    finite = torch.isfinite(ref_lse)
    assert torch.allclose(lse[finite], ref_lse[finite], atol=1e-3)
    assert float(out[0, : Hq // G].abs().max()) == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,Hq,Hkv,L,D,bs,G,W", CASES)
def test_triton_decode_kernel_key_mask(B, Hq, Hkv, L, D, bs, G, W, dtype):
    pytest.importorskip("triton")
    from hf_sparse_attn.ops.sparse_decode.triton import sparse_decode_attention_triton

    q, k, v, num, idx = _case(B, Hq, Hkv, L, D, bs, G, W, dtype=dtype)
    lens = torch.tensor([L - 3 * b for b in range(B)])
    mask = _holes(B, L, seed=B + L)
    q, k, v, num, idx, lens, mask = _on_device(q, k, v, num, idx, lens, mask)
    out, lse = sparse_decode_attention_triton(q, k, v, num, idx, bs, 0.25, lens, mask, splits=2)
    ref, ref_lse = sparse_decode_attention(q, k, v, num, idx, bs, 0.25, lens, mask)
    assert rel_err(out, ref) < TOL[dtype]
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert torch.allclose(lse[finite], ref_lse[finite], atol=1e-3)


@pytest.mark.parametrize(
    "budget", [{"top_k": 5}, {"density": 0.3}, {"top_p": 0.6}, {"top_p": 0.9, "layer_top_p": 0.5}]
)
def test_decode_selection_is_the_prefill_rule_on_the_last_row(budget):
    g = torch.Generator().manual_seed(1)
    nk = 21
    cfg = SparseAttentionConfig(block_size=16, sink_blocks=1, local_blocks=2, **budget)
    scores = torch.rand(2, 3, nk, nk, generator=g).tril()
    scores = scores / scores.sum(-1, keepdim=True)
    prefill = select_blocks(scores, cfg)
    num, idx = select_decode_blocks(scores[:, :, -1], cfg)
    for b in range(2):
        for gi in range(3):
            n = int(prefill.kv_num_blocks[b, gi, -1])
            if "layer_top_p" not in budget:
                assert int(num[b, gi]) == n
                assert sorted(idx[b, gi, :n].tolist()) == prefill.kv_indices[b, gi, -1, :n].tolist()
            kept = set(idx[b, gi, : int(num[b, gi])].tolist())
            assert {0, nk - 2, nk - 1} <= kept


def test_decode_selection_width_depends_on_config_and_shape_only():
    cfg = SparseAttentionConfig(block_size=64, density=0.1)
    for seed in range(3):
        scores = torch.rand(1, 1, 2048, generator=torch.Generator().manual_seed(seed))
        num, idx = select_decode_blocks(scores, cfg)
        assert idx.shape == (1, 1, 205) and int(num) == 205
        top = set(torch.topk(scores[0, 0, 1 : 2048 - 2], 205 - 3).indices.add(1).tolist())
        assert set(idx[0, 0].tolist()) == top | {0, 2046, 2047}


def test_decode_block_mass_pools_the_last_query_row():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 1, 1, 16, generator=g), torch.randn(2, 1, 70, 16, generator=g)
    scores = decode_block_mass(q, k, 16, 0.25)
    probs = torch.softmax((q @ k.transpose(-1, -2))[:, :, 0] * 0.25, -1)
    expected = torch.stack([probs[..., i : i + 16].sum(-1) for i in range(0, 70, 16)], -1)
    assert scores.shape == (2, 1, 5)
    assert torch.allclose(scores, expected, atol=1e-6)


@pytest.mark.parametrize("fmt", ["native", "int4", "fp4"])
def test_indexer_kcache_appends_and_grows(fmt):
    g = torch.Generator().manual_seed(3)
    keys = torch.randn(2, 1, 700, 16, generator=g)
    cache = IndexerKCache(keys[:, :, :300], fmt)
    for t in range(300, 700):
        cache.append(keys[:, :, t : t + 1])
    expected = keys if fmt == "native" else dequantize(*quantize(keys, fmt), fmt)
    assert cache.length == 700
    assert torch.equal(cache.keys(), expected)
    if fmt != "native":
        assert cache.nbytes() == 2 * 700 * bytes_per_vector(16)
        assert 2 * 700 * 16 * 2 / cache.nbytes() >= 3.5


def _decode_model(density: float, fmt: str = "native", min_len: int = 64, **extra):
    cfg = SparseAttentionConfig(
        block_size=16,
        density=density,
        min_sparse_len=min_len,
        sparse_decode=True,
        indexer_cache_format=fmt,
        **extra,
    )
    return attach_indexer(build(qwen3_config()), cfg)


def _generate(model, ids, **kw):
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True, **kw
        )
    return out.sequences, torch.stack(out.logits)


def test_generate_full_density_sparse_decode_matches_dense(tiny_config):
    ids = torch.randint(0, 128, (2, 150), generator=torch.Generator().manual_seed(0))
    seq_d, logits_d = _generate(build(tiny_config), ids)
    cfg = SparseAttentionConfig(block_size=16, density=1.0, min_sparse_len=64, sparse_decode=True)
    model = attach_indexer(build(tiny_config), cfg)
    seq_s, logits_s = _generate(model, ids)
    assert torch.equal(seq_d, seq_s)
    assert rel_err(logits_s, logits_d) < 1e-5
    indexer = next(iter(indexers(model).values()))
    assert indexer.kcache.length == 150 + 5
    assert int(indexer.last_decode_selection[0].min()) == math.ceil((150 + 5) / 16)


def test_generate_sparse_decode_reads_only_the_selected_blocks():
    ids = torch.randint(0, 128, (1, 300), generator=torch.Generator().manual_seed(1))
    dense_decode = _decode_model(0.25)
    for m in dense_decode.model.layers:
        m.self_attn.indexer.config = SparseAttentionConfig(block_size=16, density=0.25, min_sparse_len=64)
    _, logits_d = _generate(dense_decode, ids)
    model = _decode_model(0.25)
    _, logits_s = _generate(model, ids)
    assert rel_err(logits_s[0], logits_d[0]) < 1e-6  # the same sparse prefill
    assert rel_err(logits_s[1:], logits_d[1:]) > 1e-3
    layer = model.model.layers[1].self_attn
    num, idx = layer.indexer.last_decode_selection
    assert int(num) == math.ceil(math.ceil(305 / 16) * 0.25)
    assert {0, 18, 19} <= set(idx[0, 0].tolist())


def test_indexer_kcache_matches_the_kv_cache_and_is_rebuilt_when_it_does_not():
    ids = torch.randint(0, 128, (1, 120), generator=torch.Generator().manual_seed(2))
    model = _decode_model(0.3)
    with torch.no_grad():
        out = model(ids, use_cache=True)
        cache = out.past_key_values
        step = out.logits[:, -1:].argmax(-1)
        first = model(step, past_key_values=cache, use_cache=True).logits
        layer = model.model.layers[0].self_attn
        expected = layer.indexer.keys(cache.layers[0].keys)
        assert torch.allclose(layer.indexer.kcache.keys(), expected, atol=1e-6)
        for m in model.model.layers:
            m.self_attn.indexer.kcache = None
        out2 = model(ids, use_cache=True)
        for m in model.model.layers:
            m.self_attn.indexer.kcache = None
        again = model(step, past_key_values=out2.past_key_values, use_cache=True).logits
    assert torch.allclose(first, again, atol=1e-6)


def test_padded_batch_decodes_sparse_without_reading_the_padding():
    """A left-padded batch hands each decode step a key mask: at density 1.0 the sparse steps equal
    dense decoding (the padding is masked), and below it the padded row's blocks start at its first
    valid block (its sink) and stay inside its valid keys."""
    ids = torch.randint(1, 128, (2, 100), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :40] = 0
    seq_d, logits_d = _generate(build(qwen3_config()), ids, attention_mask=mask)
    model = _decode_model(1.0, min_len=101)
    seq_s, logits_s = _generate(model, ids, attention_mask=mask)
    assert torch.equal(seq_s, seq_d)
    assert rel_err(logits_s, logits_d) < 1e-5
    assert model.model.layers[0].self_attn.indexer.last_decode_selection is not None
    model = _decode_model(0.2, min_len=101)
    _generate(model, ids, attention_mask=mask)
    num, idx = model.model.layers[0].self_attn.indexer.last_decode_selection
    padded = idx[1, :, : int(num[1].min())]
    assert int(padded.min()) == 40 // 16 and int(padded.max()) == (100 + 5 - 1) // 16
    assert 0 in idx[0, 0, : int(num[0, 0])].tolist()


def test_short_decode_is_dense():
    ids = torch.randint(1, 128, (1, 40), generator=torch.Generator().manual_seed(3))
    _, short_d = _generate(build(qwen3_config()), ids)
    _, short_s = _generate(_decode_model(0.2), ids)
    assert rel_err(short_s, short_d) < 1e-5


def test_static_cache_sparse_decode_matches_the_dynamic_cache():
    """With cache_implementation="static" every step sees the whole preallocated cache and a key
    mask; the indexer K-cache spans the same slots and is written in place, and the steps pick the
    same blocks as over a growing dynamic cache. (A static-cache prefill runs dense, so the prompt
    is kept below min_sparse_len for both.)"""
    ids = torch.randint(0, 128, (1, 300), generator=torch.Generator().manual_seed(6))
    dynamic = _decode_model(0.25, min_len=301)
    _, logits_dynamic = _generate(dynamic, ids)
    model = _decode_model(0.25, min_len=301)
    _, logits_static = _generate(model, ids, cache_implementation="static")
    assert rel_err(logits_static, logits_dynamic) < 1e-5
    for layer, twin_layer in zip(model.model.layers, dynamic.model.layers, strict=True):
        cache, grown = layer.self_attn.indexer.kcache, twin_layer.self_attn.indexer.kcache
        assert cache.length == grown.length == 300 + 6 - 1  # the static cache's capacity
        torch.testing.assert_close(cache.keys(), grown.keys(), rtol=1e-5, atol=1e-6)  # written in place
    _, dense = _generate(build(qwen3_config()), ids, cache_implementation="static")
    assert rel_err(logits_static[1:], dense[1:]) > 1e-3  # the decode steps did go sparse
    _, full = _generate(_decode_model(1.0, min_len=301), ids, cache_implementation="static")
    assert rel_err(full, dense) < 1e-5


@pytest.mark.parametrize("fmt", ["int4", "fp4"])
def test_quantized_kcache_generation_runs_and_stays_close_to_native(fmt):
    ids = torch.randint(0, 128, (1, 260), generator=torch.Generator().manual_seed(4))
    seq_n, _ = _generate(_decode_model(0.5), ids)
    model = _decode_model(0.5, fmt)
    seq_q, _ = _generate(model, ids)
    cache = model.model.layers[0].self_attn.indexer.kcache
    assert cache.fmt == fmt and cache.length == 265
    assert seq_q.shape == seq_n.shape


def test_sparse_decode_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="selector='indexer'"):
        SparseAttentionConfig(sparse_decode=True, selector="patterns")
    with pytest.raises(NotImplementedError, match="sparse_decode=False"):
        SparseAttentionConfig(sparse_decode=True, retrieval_heads=[[0, 0]])
    with pytest.raises(ValueError, match="power of two >= 16"):
        SparseAttentionConfig(indexer_dim=8, indexer_cache_format="int4")
    with pytest.raises(ValueError, match="power of two >= 16"):
        SparseAttentionConfig(indexer_dim=48, indexer_cache_format="fp4")
    with pytest.raises(ValueError, match="indexer_cache_format"):
        SparseAttentionConfig(indexer_cache_format="fp8")


def test_decode_selection_stays_inside_each_rows_valid_blocks():
    """``bounds`` (first, last valid block per row): sink at the first, local blocks before the last,
    nothing outside, the density counted over the row's own blocks."""
    scores = torch.rand(2, 2, 20, generator=torch.Generator().manual_seed(0))
    cfg = SparseAttentionConfig(block_size=16, density=0.25, sink_blocks=1, local_blocks=2)
    first, last = torch.tensor([0, 5]), torch.tensor([19, 12])
    num, idx = select_decode_blocks(scores, cfg, (first, last))
    for b in range(2):
        lo, hi = int(first[b]), int(last[b])
        for g in range(2):
            kept = idx[b, g, : int(num[b, g])].tolist()
            assert len(set(kept)) == len(kept) == max(3, math.ceil((hi - lo + 1) * 0.25))
            assert set(kept) <= set(range(lo, hi + 1)) and {lo, hi - 1, hi} <= set(kept)
    whole = select_decode_blocks(scores, cfg, (torch.zeros(2, dtype=torch.long), torch.full((2,), 19)))
    for a, b in zip(whole, select_decode_blocks(scores, cfg), strict=True):
        assert torch.equal(a, b)


def test_beam_search_reorders_the_indexer_kcache_with_the_kv_cache():
    ids = torch.randint(0, 128, (1, 120), generator=torch.Generator().manual_seed(4))
    model = _decode_model(0.3, local_blocks=1)
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=24, num_beams=3, do_sample=False, return_dict_in_generate=True
        )
    cache = out.past_key_values
    for layer, m in enumerate(model.model.layers):
        indexer = m.self_attn.indexer
        n = indexer.kcache.length
        expected = indexer.keys(cache.layers[layer].keys[:, :, :n])
        torch.testing.assert_close(indexer.kcache.keys(), expected, rtol=0, atol=1e-6)


def test_a_step_with_another_cache_rebuilds_the_kcache_instead_of_reading_the_other_call():
    ids_a, ids_b = torch.randint(0, 128, (2, 1, 120), generator=torch.Generator().manual_seed(5))
    model = _decode_model(0.3, local_blocks=1)
    with torch.no_grad():
        out_a = model(ids_a, use_cache=True)
        step = out_a.logits[:, -1:].argmax(-1)
        alone = model(step, past_key_values=copy.deepcopy(out_a.past_key_values), use_cache=True).logits
        model(ids_b, use_cache=True)  # another call in between: the K-caches now hold ids_b's keys
        interleaved = model(step, past_key_values=out_a.past_key_values, use_cache=True).logits
    torch.testing.assert_close(interleaved, alone, rtol=0, atol=1e-6)


def test_concurrent_calls_with_sparse_decode_are_refused():
    model = _decode_model(0.3)
    inside, release, errors = threading.Event(), threading.Event(), []

    def hold(*_):
        inside.set()
        release.wait(10)

    handle = model.model.layers[0].register_forward_pre_hook(hold)
    ids = torch.randint(0, 128, (1, 80))

    def run_first():
        try:
            model(ids)
        except Exception as err:  # surfaced below
            errors.append(err)

    first = threading.Thread(target=run_first)
    first.start()
    inside.wait(10)
    handle.remove()
    try:
        with pytest.raises(RuntimeError, match="another thread"):
            model(ids)
    finally:
        release.set()
        first.join()
    model(ids)  # the lock is free again once the first call has returned
    assert not errors
