"""Each Triton kernel against its reference: under TRITON_INTERPRET=1 on the CPU (fp32 / fp16; the
interpreter's bf16 dot is wrong), natively on CUDA. Relative-error bounds are explicit per dtype."""

from __future__ import annotations

import pytest
import torch
from conftest import rel_err

pytest.importorskip("triton")

from hf_sparse_attn import SparseAttentionConfig, select_blocks  # noqa: E402
from hf_sparse_attn.ops.block_sparse_attn.naive import block_sparse_attention  # noqa: E402
from hf_sparse_attn.ops.block_sparse_attn.triton import block_sparse_attention_triton  # noqa: E402
from hf_sparse_attn.ops.decode_mass import triton as decode_mass_triton  # noqa: E402
from hf_sparse_attn.ops.decode_mass.naive import decode_block_mass  # noqa: E402
from hf_sparse_attn.ops.pooled_mass.naive import pooled_attention_mass  # noqa: E402
from hf_sparse_attn.ops.pooled_mass.triton import pooled_attention_mass_triton  # noqa: E402
from hf_sparse_attn.ops.probe_mass import triton as probe_triton  # noqa: E402
from hf_sparse_attn.ops.probe_mass.naive import row_probe_mass  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _inputs(B, Hq, Hkv, S, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, S, D, generator=g).to(device=DEVICE, dtype=dtype) for h in (Hq, Hkv, Hkv)]


def _blocks(q, k, bs, lens, density, groups, seed=0):
    g = torch.Generator().manual_seed(seed)
    nb = (q.shape[2] + bs - 1) // bs
    scores = torch.rand(q.shape[0], groups, nb, nb, generator=g).to(DEVICE)
    cfg = SparseAttentionConfig(block_size=bs, density=density, sink_blocks=1, local_blocks=1)
    return select_blocks(scores, cfg, lens)


CASES = [  # (S, D, Hq, Hkv, groups, block)
    (63, 64, 4, 4, 1, 16),
    (65, 64, 8, 2, 2, 16),
    (200, 128, 8, 1, 1, 32),
    (200, 64, 8, 8, 8, 64),
    pytest.param(1000, 64, 4, 1, 1, 64, marks=pytest.mark.slow),  # the README run: slow; CI's second call
    (300, 32, 4, 2, 1, 128),
    (260, 128, 4, 2, 1, 128),  # block 128 at D 128: one head per program over whole 128-key tiles
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("density", [1.0, 0.3])
@pytest.mark.parametrize("S,D,Hq,Hkv,G,bs", CASES)
def test_block_sparse_attention_kernel(S, D, Hq, Hkv, G, bs, density, dtype):
    q, k, v = _inputs(2, Hq, Hkv, S, D, dtype, seed=S + D)
    lens = torch.tensor([S, max(1, S - 37)], device=DEVICE)
    blocks = _blocks(q, k, bs, lens, density, G, seed=S)
    ref, ref_lse = block_sparse_attention(q, k, v, blocks.kv_num_blocks, blocks.kv_indices, bs, D**-0.5, lens)
    out, lse = block_sparse_attention_triton(
        q, k, v, blocks.kv_num_blocks, blocks.kv_indices, bs, D**-0.5, lens
    )
    assert out.dtype == dtype
    assert out.transpose(1, 2).is_contiguous()  # token-major: the attention function's layout
    assert rel_err(out, ref) < TOL[dtype], rel_err(out, ref)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(finite, torch.isfinite(lse))
    torch.testing.assert_close(lse[finite], ref_lse[finite], rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("S,D,Hq,Hkv,G,bs", CASES)
def test_pooled_mass_kernel(S, D, Hq, Hkv, G, bs, dtype):
    q, k, _ = _inputs(2, Hq, Hkv, S, D, dtype, seed=S)
    q = q * 0.5
    lens = torch.tensor([S, max(1, S - 37)], device=DEVICE)
    ref = pooled_attention_mass(q, k, bs, D**-0.5, G, lens)
    out = pooled_attention_mass_triton(q, k, bs, D**-0.5, G, lens)
    assert rel_err(out, ref) < TOL[dtype], rel_err(out, ref)
    assert float((out - ref).abs().max()) < 10 * TOL[dtype]


def test_pooled_mass_kernel_indexer_shape():
    """The indexer's use: G heads of dim 16, one per selection group."""
    q, k, _ = _inputs(2, 2, 2, 130, 16, torch.float32, seed=3)
    ref = pooled_attention_mass(q, k, 32, 0.25, 2)
    torch.testing.assert_close(pooled_attention_mass_triton(q, k, 32, 0.25, 2), ref, rtol=2e-5, atol=2e-6)


def test_pooled_mass_kernel_split_launches(monkeypatch):
    """A scratch budget below the causal triangle splits the query blocks over several launches, and
    key chunks shorter than a query block's row split its row over several programs."""
    import hf_sparse_attn.ops.pooled_mass.triton as mass_triton

    monkeypatch.setattr(mass_triton, "SCRATCH_ELEMENTS", 2 * 16 * 24)
    monkeypatch.setattr(mass_triton, "CHUNK", 3)
    assert len(mass_triton._launch_ranges(10, 4 * 16)) == 5  # 2 batches x 2 heads, block 16
    q, k, _ = _inputs(2, 2, 2, 150, 16, torch.float32, seed=5)
    lens = torch.tensor([150, 101], device=DEVICE)
    ref = pooled_attention_mass(q, k, 16, 0.25, 1, lens)
    torch.testing.assert_close(
        mass_triton.pooled_attention_mass_triton(q, k, 16, 0.25, 1, lens), ref, rtol=2e-5, atol=2e-6
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "S,D,Hq,Hkv,G,bs", [*CASES, pytest.param(700, 32, 4, 2, 2, 16, marks=pytest.mark.slow)]
)
def test_row_probe_kernel(S, D, Hq, Hkv, G, bs, dtype, monkeypatch):
    """16 probe rows per program, so the longer cases span several row tiles (and padded rows)."""
    monkeypatch.setattr(probe_triton, "ROWS", 16)
    q, k, _ = _inputs(2, Hq, Hkv, S, D, dtype, seed=S + 1)
    lens = torch.tensor([S, max(1, S - 37)], device=DEVICE)
    ref = row_probe_mass(q, k, bs, D**-0.5, G, lens)
    out = probe_triton.row_probe_mass_triton(q, k, bs, D**-0.5, G, lens)
    assert rel_err(out, ref) < TOL[dtype], rel_err(out, ref)
    assert float((out - ref).abs().max()) < 10 * TOL[dtype]
    assert not out[1, :, -(-int(lens[1]) // bs) :].any()


def test_kernels_reject_unsupported_inputs():
    q, k, v = _inputs(1, 4, 2, 64, 48, torch.float32)
    blocks = _blocks(q, k, 16, None, 1.0, 1)
    with pytest.raises(ValueError, match="head_dim 48 is not supported"):
        block_sparse_attention_triton(q, k, v, blocks.kv_num_blocks, blocks.kv_indices, 16, 0.1)
    with pytest.raises(ValueError, match="power of two"):
        pooled_attention_mass_triton(q, k, 16, 0.1, 1)
    with pytest.raises(ValueError, match="scale must be positive"):
        pooled_attention_mass_triton(q[..., :32], k[..., :32], 16, -0.1, 1)
    with pytest.raises(ValueError, match="scale must be positive"):
        block_sparse_attention_triton(q, k, v, blocks.kv_num_blocks, blocks.kv_indices, 16, 0.0)
    with pytest.raises(ValueError, match="block size 24"):
        probe_triton.row_probe_mass_triton(q[..., :32], k[..., :32], 24, 0.1, 1)
    with pytest.raises(ValueError, match="selection groups"):
        probe_triton.row_probe_mass_triton(q[..., :32], k[..., :32], 16, 0.1, 3)
    q, k, v = _inputs(1, 4, 2, 64, 64, torch.float32)
    with pytest.raises(ValueError, match="dtypes"):
        block_sparse_attention_triton(q, k, v.half(), blocks.kv_num_blocks, blocks.kv_indices, 16, 0.1)


def test_block_sparse_kernel_copies_views_tma_cannot_address():
    """K / V load through TMA descriptors (16-byte aligned base and strides): an unaligned view is
    copied first, with the same result."""
    q, k, v = _inputs(1, 4, 2, 150, 32, torch.float16, seed=9)
    wide = torch.cat([torch.zeros_like(k[..., :1]), k], -1)[..., 1:]  # rows of 33 halves: 66-byte stride
    assert wide.stride(2) * 2 % 16 and torch.equal(wide, k)
    blocks = _blocks(q, k, 32, None, 0.5, 1)
    ref, _ = block_sparse_attention_triton(q, k, v, blocks.kv_num_blocks, blocks.kv_indices, 32, 0.2)
    out, _ = block_sparse_attention_triton(q, wide, v, blocks.kv_num_blocks, blocks.kv_indices, 32, 0.2)
    assert torch.equal(out, ref)


DECODE_MASS_CASES = [  # (B, G, L, d, block)
    (1, 1, 64, 16, 64),
    (2, 2, 1000, 16, 64),
    (3, 1, 77, 24, 16),  # d not a power of two, a partial last block
    (1, 2, 5000, 32, 128),  # several fold chunks' worth of blocks at block 16 below
    (2, 1, 4100, 16, 16),
]


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
)  # no tl.dot here, but the interpreter's bf16 is not trusted
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("B,G,L,d,bs", DECODE_MASS_CASES)
def test_decode_block_mass_kernel(B, G, L, d, bs, masked, dtype):
    g = torch.Generator().manual_seed(L + d)
    q = torch.randn(B, G, 1, d, generator=g).to(device=DEVICE, dtype=dtype)
    store = torch.randn(B, G, L + 40, d, generator=g).to(device=DEVICE, dtype=dtype)
    k = store[:, :, :L]  # a K-cache's live part: a strided view of its storage
    valid = None
    if masked:  # left padding, then holes (a static cache's unwritten slots)
        valid = torch.rand(B, L, generator=g) > 0.3
        valid[:, : min(L - 1, 50)] = False
        valid[:, -1] = True
        valid = valid.to(DEVICE)
    ref = decode_block_mass(q, k, bs, d**-0.5, valid)
    out = decode_mass_triton.decode_block_mass_triton(q, k, bs, d**-0.5, valid)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert rel_err(out, ref) < 2e-5
    torch.testing.assert_close(out.sum(-1), torch.ones(B, G, device=DEVICE), rtol=0, atol=2e-5)
    if masked:
        dead = ~valid.view(B, 1, -1)
        dead = torch.nn.functional.pad(dead, (0, -L % bs), value=True).view(B, 1, -1, bs).all(-1)
        assert (out.masked_select(dead.expand_as(out)) == 0).all()


def test_decode_block_mass_kernel_rejects_bad_inputs():
    q, k = torch.randn(1, 1, 1, 16, device=DEVICE), torch.randn(1, 1, 64, 16, device=DEVICE)
    with pytest.raises(ValueError, match="key_valid must be bool"):
        decode_mass_triton.decode_block_mass_triton(q, k, 16, 0.25, torch.ones(1, 64, device=DEVICE))
    with pytest.raises(ValueError, match="q_idx must be"):
        decode_mass_triton.decode_block_mass_triton(k, k, 16, 0.25)
    with pytest.raises(ValueError, match="scale must be positive"):
        decode_mass_triton.decode_block_mass_triton(q, k, 16, 0.0)


@pytest.mark.parametrize(
    "S,D,Hq,Hkv,G,bs",
    [
        pytest.param(200, 32, 4, 2, 1, 32, marks=pytest.mark.slow),
        pytest.param(130, 16, 4, 1, 2, 16, marks=pytest.mark.slow),
        (96, 32, 8, 2, 8, 32),
        (257, 64, 2, 2, 2, 64),
    ],
)
def test_block_sparse_attention_backward(S, D, Hq, Hkv, G, bs):
    """The Triton backward (through the torch.library op's autograd) against autograd through the
    reference: dq, dk, dv with right padding, GQA, per-group lists and a loss on the lse too."""
    from hf_sparse_attn.ops.block_sparse_attn.triton import block_sparse_attn_fwd

    torch.manual_seed(S)
    q, k, v = _inputs(2, Hq, Hkv, S, D, torch.float32, seed=S)
    lens = torch.tensor([S, S - 29], device=DEVICE)
    blocks = _blocks(q, k, bs, lens, 0.4, G, seed=S)
    grad_out = torch.randn(2, Hq, S, D, device=DEVICE)
    grad_lse = torch.randn(2, Hq, S, device=DEVICE)

    def grads(fn):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out, lse = fn(*leaves)
        valid = torch.isfinite(lse)
        loss = (out * grad_out).sum() + torch.where(valid, lse * grad_lse, 0.0).sum()
        return torch.autograd.grad(loss, leaves)

    want = grads(
        lambda a, b, c: block_sparse_attention(
            a, b, c, blocks.kv_num_blocks, blocks.kv_indices, bs, 0.3, lens
        )
    )
    got = grads(
        lambda a, b, c: block_sparse_attn_fwd(a, b, c, blocks.kv_num_blocks, blocks.kv_indices, lens, bs, 0.3)
    )
    for name, g, w in zip("qkv", got, want, strict=True):
        assert rel_err(g, w) < 1e-4, name
