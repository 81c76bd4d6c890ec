"""`selection-recall`: dense attention mass inside the indexer's and the block oracle's selections."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, build, qwen3_config

from hf_sparse_attn import SparseAttentionConfig, attach_indexer, indexers
from hf_sparse_attn_lab.eval.selection_recall import RECALLS, selection_recall


def _model(**config):
    model = attach_indexer(build(qwen3_config(layers=2)), SparseAttentionConfig(**config))
    torch.manual_seed(1)
    for indexer in indexers(model).values():
        indexer.q_proj.weight.data.normal_()  # an untrained indexer that ranks blocks its own way
    return model


def _prompts(n: int = 3, length: int = 301):  # not a multiple of the block
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, VOCAB, (1, length), generator=g) for _ in range(n)]


def test_the_oracle_keeps_at_least_the_indexers_mass_and_both_are_shares():
    model = _model(block_size=16, density=0.2, min_sparse_len=32)
    recall = selection_recall(model, _prompts())
    assert sorted(recall) == [0, 1] and all(sorted(r) == sorted(RECALLS) for r in recall.values())
    for r in recall.values():
        assert 0 < r["indexer"] <= r["oracle"] + 1e-6 < 1 + 1e-6
        assert 0 < r["indexer_question"] <= r["oracle_question"] + 1e-6 < 1 + 1e-6
    assert all(r["oracle_question"] - r["indexer_question"] > 1e-3 for r in recall.values())  # it differs
    assert all(ix.observer is None for ix in indexers(model).values())  # the model runs sparse again


def test_every_block_kept_recalls_all_the_mass():
    recall = selection_recall(_model(block_size=16, density=1.0, min_sparse_len=32), _prompts(1))
    for r in recall.values():
        for value in r.values():
            assert value == pytest.approx(1.0, abs=1e-5)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"\[1, S\] token-id tensors"):
        selection_recall(_model(block_size=16, min_sparse_len=32), [torch.zeros(2, 64, dtype=torch.long)])
    with pytest.raises(ValueError, match="no indexers"):
        selection_recall(build(qwen3_config(layers=2)), _prompts(1))
