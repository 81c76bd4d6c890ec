"""`bench profile` attributes every phase of every sparse layer, and leaves the runtime as it was."""

from __future__ import annotations

import torch
from conftest import build, qwen3_config

from hf_sparse_attn import ops
from hf_sparse_attn.runtime import attention
from hf_sparse_attn.runtime.config import SparseAttentionConfig
from hf_sparse_attn.runtime.indexer import Indexer
from hf_sparse_attn.runtime.modeling import attach_indexer
from hf_sparse_attn_lab.bench.profile import PhaseTimer, timed_phases


class CountingTimer(PhaseTimer):
    """The phase routing without CUDA events: counts the calls per phase."""

    def wrap(self, name, fn):
        def counted(*args, **kwargs):
            self.events[name].append(None)
            return fn(*args, **kwargs)

        return counted


def test_timed_phases_cover_each_sparse_layer_and_restore_the_runtime():
    model = build(qwen3_config(layers=3))
    attach_indexer(model, SparseAttentionConfig(block_size=16, top_k=2, min_sparse_len=32))
    model.set_attn_implementation("sparse_prefill")
    originals = (
        Indexer.forward,
        Indexer.block_scores_from,
        attention.select_blocks,
        ops.block_sparse_attention,
    )
    ids = torch.randint(0, 128, (1, 96))
    with torch.no_grad():
        want = model(ids).logits
        timer = CountingTimer()
        with timed_phases(timer):
            got = model(ids).logits
    assert timer.counts() == {"projection": 3, "scoring": 3, "selection": 3, "kernel": 3}
    assert (
        Indexer.forward,
        Indexer.block_scores_from,
        attention.select_blocks,
        ops.block_sparse_attention,
    ) == originals
    torch.testing.assert_close(got, want, rtol=0, atol=0)
