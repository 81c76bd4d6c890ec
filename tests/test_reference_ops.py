"""The plain-PyTorch references (the kernel specs) against materialized S x S attention."""

from __future__ import annotations

import pytest
import torch
from conftest import dense_causal_attention

from hf_sparse_attn.ops.block_sparse_attn.naive import block_sparse_attention
from hf_sparse_attn.ops.pooled_mass.naive import pooled_attention_mass


def _qkv(B, Hq, Hkv, S, D, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, S, D, generator=g).to(dtype) for h in (Hq, Hkv, Hkv)]


def _random_block_list(B, G, S, bs, density, seed=0):
    nb = (S + bs - 1) // bs
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(B, G, nb, nb, generator=g) < density
    keep |= torch.eye(nb, dtype=torch.bool)
    keep &= torch.ones(nb, nb, dtype=torch.bool).tril()
    counts = keep.sum(-1).to(torch.int32)
    order = torch.sort(torch.where(keep, torch.arange(nb), nb), -1).values
    return counts, torch.where(order < nb, order, 0).to(torch.int32), keep


def _token_mask(keep_blocks, S, bs, Hq):
    """Expand a block mask [B, G, nb, nb] to tokens [B, Hq, S, S]."""
    t = keep_blocks.repeat_interleave(bs, -1).repeat_interleave(bs, -2)[..., :S, :S]
    return t.repeat_interleave(Hq // keep_blocks.shape[1], 1)


@pytest.mark.parametrize("S", [63, 65, 200])
@pytest.mark.parametrize("Hq,Hkv", [(4, 4), (8, 2), (8, 1)])
def test_block_sparse_full_density_is_dense(S, Hq, Hkv):
    q, k, v = _qkv(2, Hq, Hkv, S, 32)
    bs = 16
    nb = (S + bs - 1) // bs
    counts = torch.arange(1, nb + 1, dtype=torch.int32).expand(2, 1, nb).contiguous()
    idx = torch.arange(nb, dtype=torch.int32).expand(2, 1, nb, nb).contiguous()
    out, lse = block_sparse_attention(q, k, v, counts, idx, bs, 0.2)
    ref, _ = dense_causal_attention(q, k, v, 0.2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(lse).all()


@pytest.mark.parametrize("S,G", [(65, 1), (200, 2), (127, 8)])
def test_block_sparse_matches_masked_dense(S, G):
    Hq, Hkv, bs = 8, 2 if G <= 2 else 8, 16
    q, k, v = _qkv(2, Hq, Hkv, S, 16, seed=S)
    counts, idx, keep = _random_block_list(2, G, S, bs, 0.3, seed=S)
    out, _ = block_sparse_attention(q, k, v, counts, idx, bs, 0.25)
    ref, _ = dense_causal_attention(q, k, v, 0.25, _token_mask(keep, S, bs, Hq))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_block_sparse_right_padding_rows():
    S, bs = 90, 16
    q, k, v = _qkv(2, 4, 2, S, 16)
    nb = (S + bs - 1) // bs
    counts = torch.arange(1, nb + 1, dtype=torch.int32).expand(2, 1, nb).contiguous()
    idx = torch.arange(nb, dtype=torch.int32).expand(2, 1, nb, nb).contiguous()
    lens = torch.tensor([90, 50])
    out, lse = block_sparse_attention(q, k, v, counts, idx, bs, 0.25, seq_lens=lens)
    alone, _ = dense_causal_attention(q[1:, :, :50], k[1:, :, :50], v[1:, :, :50], 0.25)
    torch.testing.assert_close(out[1:, :, :50], alone, rtol=1e-5, atol=1e-5)
    assert torch.isneginf(lse[1, :, 50:]).all() and (out[1, :, 50:] == 0).all()


@pytest.mark.parametrize("S", [63, 65, 200])
@pytest.mark.parametrize("Hq,Hkv,G", [(4, 4, 1), (8, 2, 2), (8, 1, 1), (8, 2, 8)])
def test_pooled_mass_matches_materialized(S, Hq, Hkv, G):
    bs = 16
    q, k, _ = _qkv(2, Hq, Hkv, S, 32, seed=1)
    lens = torch.tensor([S, S - 20])
    mass = pooled_attention_mass(q, k, bs, 0.2, G, lens)
    nb = (S + bs - 1) // bs
    ref = torch.zeros(2, G, nb, nb)
    for b in range(2):
        L = int(lens[b])
        _, probs = dense_causal_attention(q[b : b + 1, :, :L], k[b : b + 1, :, :L], k[b : b + 1, :, :L], 0.2)
        per_q = torch.nn.functional.pad(probs[0], (0, nb * bs - L)).view(Hq, L, nb, bs).sum(-1)
        per_q = per_q.view(G, Hq // G, L, nb).mean(1)
        for qb in range((L + bs - 1) // bs):
            ref[b, :, qb] = per_q[:, qb * bs : min(L, (qb + 1) * bs)].mean(1)
    torch.testing.assert_close(mass, ref, rtol=1e-5, atol=1e-6)
    row_sums = mass.sum(-1)
    valid_rows = torch.arange(nb)[None, :] < ((lens + bs - 1) // bs)[:, None]
    torch.testing.assert_close(
        row_sums[valid_rows[:, None].expand_as(row_sums)], torch.ones(int(valid_rows.sum()) * G)
    )


def test_reference_ops_reject_bad_inputs():
    q, k, v = _qkv(1, 4, 2, 32, 16)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        pooled_attention_mass(q.long(), k, 16, 1.0, 1)
    with pytest.raises(ValueError, match="multiple of key heads"):
        pooled_attention_mass(q[:, :3], k, 16, 1.0, 1)
    with pytest.raises(ValueError, match="kv_num_blocks must be"):
        block_sparse_attention(q, k, v, torch.ones(1, 2, dtype=torch.int32), torch.zeros(1, 1, 2, 2), 16, 1.0)


def test_backend_choice_names_bad_values_and_the_missing_interpreter(monkeypatch):
    from hf_sparse_attn.ops import backend_for

    cpu = torch.zeros(1)
    monkeypatch.setenv("HF_SPARSE_ATTN_BACKEND", "auto")
    assert backend_for(cpu) == "cpu"
    monkeypatch.setenv("HF_SPARSE_ATTN_BACKEND", "reference")
    assert backend_for(cpu) == "reference"
    monkeypatch.setenv("HF_SPARSE_ATTN_BACKEND", "cuda")
    with pytest.raises(ValueError, match="must be one of"):
        backend_for(cpu)
    monkeypatch.setenv("HF_SPARSE_ATTN_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend_for(cpu) == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="set TRITON_INTERPRET=1 before importing triton"):
        backend_for(cpu)
