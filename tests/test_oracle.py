"""Attention-mass oracle at token and block granularity."""

from __future__ import annotations

import pytest
import torch
from conftest import dense_causal_attention

from hf_sparse_attn import oracle_block_scores, token_oracle_attention


def _qkv(S=70, Hq=8, Hkv=2, D=16):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, h, S, D, generator=g) for h in (Hq, Hkv, Hkv)]


def test_token_oracle_full_support_is_dense():
    q, k, v = _qkv()
    out, kept = token_oracle_attention(q, k, v, 0.25, top_k=70)
    ref, _ = dense_causal_attention(q, k, v, 0.25)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(kept, torch.ones_like(kept))


def test_token_oracle_top_k_support_size_and_error_shrinks_with_budget():
    q, k, v = _qkv()
    ref, _ = dense_causal_attention(q, k, v, 0.25)
    errs = []
    for top_k in (4, 16, 48):
        out, kept = token_oracle_attention(q, k, v, 0.25, top_k=top_k)
        causal = torch.arange(1, 71).float()
        torch.testing.assert_close(kept[0, 0], torch.clamp(causal, max=top_k) / causal)
        errs.append(float((out - ref).abs().max()))
    assert errs[0] > errs[1] > errs[2]


def test_token_oracle_top_p_per_group():
    q, k, v = _qkv()
    out, kept = token_oracle_attention(q, k, v, 0.25, top_p=0.9, groups=2)
    assert kept.shape == (2, 2, 70) and (kept > 0).all() and (kept <= 1).all()
    with pytest.raises(ValueError, match="exactly one"):
        token_oracle_attention(q, k, v, 0.25)


def test_block_oracle_scores_are_distributions():
    q, k, _ = _qkv()
    scores = oracle_block_scores(q, k, 16, 0.25, 1)
    assert scores.shape == (2, 1, 5, 5)
    torch.testing.assert_close(scores.sum(-1), torch.ones(2, 1, 5))
    assert (scores.triu(1) == 0).all()
