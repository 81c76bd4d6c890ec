"""The vectorized CPU ops (``ops/<op>/cpu.py``) against their references (``naive.py``), fp32 to 1e-5."""

from __future__ import annotations

import pytest
import torch
from test_reference_ops import _qkv, _random_block_list

from hf_sparse_attn import ops
from hf_sparse_attn.ops.block_sparse_attn import cpu as bsa_cpu
from hf_sparse_attn.ops.block_sparse_attn.naive import block_sparse_attention
from hf_sparse_attn.ops.pooled_mass import cpu as mass_cpu
from hf_sparse_attn.ops.pooled_mass.naive import pooled_attention_mass


def _assert_same_attention(got, want, out_tol=1e-5):
    (out, lse), (ref_out, ref_lse) = got, want
    torch.testing.assert_close(out, ref_out, rtol=out_tol, atol=out_tol)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[finite], ref_lse[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "B,Hq,Hkv,G,S,D,bs",
    [
        (2, 8, 2, 2, 200, 16, 16),
        (1, 8, 2, 1, 257, 32, 32),
        (2, 8, 2, 8, 127, 16, 16),
        (1, 4, 4, 2, 65, 64, 64),
    ],
)
def test_block_sparse_cpu_matches_reference(B, Hq, Hkv, G, S, D, bs):
    q, k, v = _qkv(B, Hq, Hkv, S, D, seed=S)
    counts, idx, _ = _random_block_list(B, G, S, bs, 0.3, seed=S)
    lens = torch.tensor([S, S - 21][:B])
    args = (q, k, v, counts, idx, bs, 0.2, lens)
    _assert_same_attention(bsa_cpu.block_sparse_attention_cpu(*args), block_sparse_attention(*args))


def test_block_sparse_cpu_chunks_and_empty_rows(monkeypatch):
    """Many small chunks (the memory bound) give the same result; a query block whose list is empty
    and an all-padding row are 0 with lse -inf, as in the reference."""
    S, bs = 160, 16
    q, k, v = _qkv(2, 4, 2, S, 16, seed=3)
    counts, idx, _ = _random_block_list(2, 2, S, bs, 0.5, seed=3)
    counts[0, :, 4] = 0
    lens = torch.tensor([S, 0])
    want = block_sparse_attention(q, k, v, counts, idx, bs, 0.3, lens)
    monkeypatch.setattr(bsa_cpu, "GATHER_CHUNK_ELEMENTS", 1)
    got = bsa_cpu.block_sparse_attention_cpu(q, k, v, counts, idx, bs, 0.3, lens)
    _assert_same_attention(got, want)
    assert (got[0][0, :, 4 * bs : 5 * bs] == 0).all() and (got[0][1] == 0).all()


def test_block_sparse_cpu_half_precision_inputs():
    q, k, v = _qkv(1, 4, 2, 96, 32, seed=5, dtype=torch.float16)
    counts, idx, _ = _random_block_list(1, 2, 96, 16, 0.4, seed=5)
    got = bsa_cpu.block_sparse_attention_cpu(q, k, v, counts, idx, 16, 0.2)
    want = block_sparse_attention(q, k, v, counts, idx, 16, 0.2)
    assert got[0].dtype == torch.float16
    # both compute in fp32 and round to fp16 at the end: at most one fp16 ulp apart (2**-10 relative)
    _assert_same_attention(got, want, out_tol=2**-10)


def test_block_sparse_cpu_rejects_groups_that_do_not_divide_kv_heads():
    q, k, v = _qkv(1, 12, 4, 32, 16)
    counts, idx, _ = _random_block_list(1, 6, 32, 16, 0.5)
    with pytest.raises(ValueError, match="selection groups \\(6\\) and kv heads \\(4\\)"):
        bsa_cpu.block_sparse_attention_cpu(q, k, v, counts, idx, 16, 0.2)


@pytest.mark.parametrize(
    "B,H,Hk,G,S,d,bs", [(2, 4, 2, 2, 300, 16, 32), (1, 8, 2, 1, 257, 16, 64), (2, 2, 2, 2, 65, 8, 16)]
)
def test_pooled_mass_cpu_matches_reference(B, H, Hk, G, S, d, bs):
    q, k, _ = _qkv(B, H, Hk, S, d, seed=S)
    lens = torch.tensor([S, S - 37][:B])
    want = pooled_attention_mass(q * 3, k, bs, 0.25, G, lens)
    torch.testing.assert_close(
        mass_cpu.pooled_attention_mass_cpu(q * 3, k, bs, 0.25, G, lens), want, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("key_tile", [16, 48, 1024])
def test_pooled_mass_cpu_small_chunks_key_tiles_and_all_padding_row(monkeypatch, key_tile):
    q, k, _ = _qkv(2, 2, 1, 100, 16, seed=7)
    lens = torch.tensor([100, 0])
    want = pooled_attention_mass(q, k, 16, 0.25, 2, lens)
    monkeypatch.setattr(mass_cpu, "SOFTMAX_CHUNK_ROWS", 16)
    monkeypatch.setattr(mass_cpu, "KEY_TILE", key_tile)
    got = mass_cpu.pooled_attention_mass_cpu(q, k, 16, 0.25, 2, lens)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(got).all() and (got[1] == 0).all()


def test_pooled_mass_cpu_tiles_with_far_apart_maxima(monkeypatch):
    """Tiles whose row maxima differ by far more than exp's range: the online rescale must not overflow
    or lose the small tiles (each tile is shifted by its own maximum first)."""
    q, k, _ = _qkv(1, 2, 2, 96, 16, seed=11)
    k[:, :, 40:48] *= 40.0  # one key block dominates every row that sees it
    lens = torch.tensor([90])
    want = pooled_attention_mass(q * 4, k, 16, 0.25, 1, lens)
    monkeypatch.setattr(mass_cpu, "KEY_TILE", 32)
    got = mass_cpu.pooled_attention_mass_cpu(q * 4, k, 16, 0.25, 1, lens)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(got).all()


def test_dispatch_takes_the_cpu_ops_without_autograd_and_the_reference_with_it(monkeypatch):
    calls = []
    monkeypatch.setattr(bsa_cpu, "block_sparse_attention_cpu", lambda *a: calls.append("bsa") or (a[0], None))
    monkeypatch.setattr(mass_cpu, "pooled_attention_mass_cpu", lambda *a: calls.append("mass") or a[0])
    monkeypatch.setenv("HF_SPARSE_ATTN_BACKEND", "auto")
    q, k, v = _qkv(1, 2, 1, 32, 16)
    counts, idx, _ = _random_block_list(1, 1, 32, 16, 1.0)
    ops.block_sparse_attention(q, k, v, counts, idx, 16, 0.2)
    ops.pooled_attention_mass(q, k, 16, 0.2, 1)
    assert calls == ["bsa", "mass"]
    q.requires_grad_(True)
    out, _ = ops.block_sparse_attention(q, k, v, counts, idx, 16, 0.2)
    out.sum().backward()
    ops.pooled_attention_mass(q, k, 16, 0.2, 1)
    assert calls == ["bsa", "mass"] and q.grad is not None
    monkeypatch.setenv("HF_SPARSE_ATTN_BACKEND", "reference")
    ops.block_sparse_attention(q.detach(), k, v, counts, idx, 16, 0.2)
    assert calls == ["bsa", "mass"]


@pytest.mark.parametrize("G,split", [(1, 1), (2, 1), (2, 2), (1, 4)])
def test_fa4_block_lists_partition_the_selection(G, split):
    """Full + masked lists hold exactly the selected key tiles; full ones lie left of the diagonal."""
    from hf_sparse_attn.ops.block_sparse_attn.fa4 import fa4_block_lists

    counts, idx, keep = _random_block_list(2, G, 300, 32, 0.4, seed=G + split)
    mask_cnt, mask_idx, full_cnt, full_idx = fa4_block_lists(counts, idx, 8, split)
    heads = 8 if G > 1 else 1
    assert mask_cnt.shape == full_cnt.shape == (2, heads, keep.shape[2]) and mask_idx.dtype == torch.int32
    nq = keep.shape[2]
    for b in range(2):
        for h in range(heads):
            g = h // (8 // G) if G > 1 else 0
            for qb in range(nq):
                full = full_idx[b, h, qb, : full_cnt[b, h, qb]].tolist()
                masked = mask_idx[b, h, qb, : mask_cnt[b, h, qb]].tolist()
                want = [
                    t
                    for kb in keep[b, g, qb].nonzero().flatten().tolist()
                    for t in range(kb * split, (kb + 1) * split)
                ]
                assert sorted(full + masked) == want
                assert all(t < qb * split for t in full) and all(t >= qb * split for t in masked)


def test_fa4_backend_names_what_it_needs(monkeypatch):
    from hf_sparse_attn.ops.block_sparse_attn.fa4 import fa4_key_block, fa4_unsupported_reason

    assert fa4_key_block(128, 128) == 128 and fa4_key_block(128, 256) == 64 and fa4_key_block(32, 128) is None
    assert fa4_unsupported_reason(torch.zeros(1, 1, 1, 128), 128) is not None  # not installed / not CUDA
    monkeypatch.setenv("HF_SPARSE_ATTN_BACKEND", "fa4")
    q, k, v = _qkv(1, 2, 1, 32, 16)
    counts, idx, _ = _random_block_list(1, 1, 32, 16, 1.0)
    with pytest.raises(ValueError, match="FlashAttention-4 runs on CUDA only"):
        ops.block_sparse_attention(q, k, v, counts, idx, 16, 0.2)
