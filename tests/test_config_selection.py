"""SparseAttentionConfig validation / serialization and the selection rules."""

from __future__ import annotations

import math

import pytest
import torch

from hf_sparse_attn import SparseAttentionConfig, select_blocks


def test_config_defaults_and_round_trip(tmp_path):
    cfg = SparseAttentionConfig()
    assert (cfg.indexer_heads, cfg.indexer_dim, cfg.block_size, cfg.budget) == (1, 16, 64, ("density", 0.1))
    custom = SparseAttentionConfig(block_size=128, top_p=0.9, dense_layers=[3, 1, 3], sink_blocks=2)
    assert custom.dense_layers == [1, 3]
    assert SparseAttentionConfig.from_dict(custom.to_dict()) == custom
    custom.save_pretrained(tmp_path)
    assert SparseAttentionConfig.from_pretrained(tmp_path) == custom


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"block_size": 48}, "block_size"),
        ({"block_size": 8}, "block_size"),
        ({"indexer_dim": 0}, "indexer_dim"),
        ({"top_p": 1.5}, "top_p"),
        ({"density": 0.0}, "density"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 4, "top_p": 0.9}, "exactly one budget"),
        ({"local_blocks": 0}, "local_blocks"),
        ({"min_sparse_len": -1}, "min_sparse_len"),
        ({"selector": "magic"}, "selector"),
        ({"dense_layers": [-1]}, "dense_layers"),
    ],
)
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SparseAttentionConfig(**kwargs)


def test_config_rejects_unknown_and_future_fields():
    with pytest.raises(ValueError, match="unknown sparse config fields"):
        SparseAttentionConfig.from_dict({"blocksize": 64})
    with pytest.raises(ValueError, match="upgrade hf-sparse-attn"):
        SparseAttentionConfig.from_dict({"format_version": 99})


def _scores(B, G, nb, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(B, G, nb, nb, generator=g)
    return s.tril() / s.tril().sum(-1, keepdim=True)


def test_selection_is_causal_keeps_sink_and_local_and_meets_top_k():
    nb, bs = 12, 16
    cfg = SparseAttentionConfig(block_size=bs, top_k=5, sink_blocks=1, local_blocks=2)
    blocks = select_blocks(_scores(2, 3, nb), cfg)
    dense = blocks.to_dense()
    assert not (dense & ~torch.ones(nb, nb, dtype=torch.bool).tril()).any()
    assert dense[..., 0].all()
    assert dense.diagonal(dim1=-2, dim2=-1).all() and dense[..., 1:, :].diagonal(dim1=-2, dim2=-1).all()
    expected = torch.clamp(torch.arange(1, nb + 1), max=5)
    assert (blocks.kv_num_blocks == expected).all()
    assert (
        (blocks.kv_indices[..., :-1] <= blocks.kv_indices[..., 1:])
        .logical_or(torch.arange(blocks.kv_indices.shape[-1] - 1) >= blocks.kv_num_blocks[..., None] - 1)
        .all()
    )


def test_selection_top_k_picks_highest_scores():
    nb = 10
    scores = _scores(1, 1, nb, seed=3)
    blocks = select_blocks(
        scores, SparseAttentionConfig(block_size=16, top_k=4, sink_blocks=0, local_blocks=1)
    )
    for i in range(nb):
        chosen = set(blocks.kv_indices[0, 0, i, : blocks.kv_num_blocks[0, 0, i]].tolist())
        rest = scores[0, 0, i, :i].clone()
        best = set(torch.topk(rest, min(3, i)).indices.tolist()) if i else set()
        assert chosen == best | {i}


def test_selection_density_counts():
    nb = 20
    blocks = select_blocks(
        _scores(1, 1, nb), SparseAttentionConfig(block_size=16, density=0.25, local_blocks=1)
    )
    for i in range(nb):
        assert int(blocks.kv_num_blocks[0, 0, i]) == max(min(i + 1, 2), math.ceil((i + 1) * 0.25))


def test_selection_top_p_is_smallest_candidate_set_reaching_p():
    nb, p = 16, 0.6
    scores = _scores(1, 1, nb, seed=5)
    blocks = select_blocks(
        scores, SparseAttentionConfig(block_size=16, top_p=p, sink_blocks=0, local_blocks=1)
    )
    for i in range(1, nb):
        chosen = set(blocks.kv_indices[0, 0, i, : blocks.kv_num_blocks[0, 0, i]].tolist())
        assert i in chosen  # the local block, forced
        row = scores[0, 0, i, :i] / scores[0, 0, i, :i].sum()  # candidates: the forced block left out
        picked = sorted(chosen - {i}, key=lambda j: float(row[j]))
        assert all(row[j] <= row[min(picked, key=lambda j: float(row[j]))] for j in set(range(i)) - chosen)
        assert row[picked].sum() >= p - 1e-6
        assert row[picked[1:]].sum() < p  # dropping the smallest pick falls short: smallest set


def test_selection_top_p_ignores_the_forced_blocks_mass():
    # Sink and local blocks hold 90% of the row; block 3 holds most of the rest. Counting the forced
    # mass first would stop at the forced blocks and drop the one long-range block that matters.
    row = torch.tensor([0.5, 0.01, 0.02, 0.06, 0.01, 0.4])
    scores = torch.zeros(1, 1, 6, 6)
    scores[0, 0, 5] = row
    cfg = SparseAttentionConfig(block_size=16, top_p=0.5, sink_blocks=1, local_blocks=1)
    blocks = select_blocks(scores, cfg)
    assert blocks.kv_indices[0, 0, 5, : blocks.kv_num_blocks[0, 0, 5]].tolist() == [0, 3, 5]
    assert blocks.kv_num_blocks[0, 0, 2].tolist() == 2  # no candidate mass: the forced blocks only


def test_selection_respects_padded_lengths():
    nb, bs = 8, 16
    lens = torch.tensor([nb * bs, 50])
    blocks = select_blocks(_scores(2, 1, nb), SparseAttentionConfig(block_size=bs, density=1.0), lens)
    assert blocks.kv_num_blocks[1, 0].tolist() == [1, 2, 3, 4, 0, 0, 0, 0]
    assert blocks.to_dense()[1, 0, :, 4:].sum() == 0
    assert torch.allclose(blocks.density(), torch.ones(2, 1))


def test_selection_rejects_bad_scores():
    with pytest.raises(ValueError, match="scores must be"):
        select_blocks(torch.rand(1, 4, 4), SparseAttentionConfig())
