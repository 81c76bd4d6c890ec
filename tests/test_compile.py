"""The attention path traces into one graph: ``torch.compile(model, fullgraph=True)`` on the kernel path.

On CPU the kernels run under the Triton interpreter (``HF_SPARSE_ATTN_BACKEND=triton``); dynamo sees
only the ``torch.library`` ops and the selection's tensor ops, so a graph break anywhere in the glue
(host syncs, data-dependent Python branches, logging) fails these tests. The GPU tier compiles with
inductor (``tests/test_gpu.py``).
"""

from __future__ import annotations

import pytest
import torch
from conftest import build, qwen3_config
from transformers import DynamicCache, StaticCache

from hf_sparse_attn import SparseAttentionConfig, attach_indexer
from hf_sparse_attn.runtime.attention import register


@pytest.fixture
def kernel_backend(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip(
            "CPU tensors need the Triton interpreter, set only without CUDA; test_gpu.py compiles there"
        )
    monkeypatch.setenv("HF_SPARSE_ATTN_BACKEND", "triton")
    register()  # a remote-code model loaded earlier in the session registers its generated copy under the same name
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(**cfg):
    model = build(qwen3_config(), attn="sparse_prefill")
    return attach_indexer(model, SparseAttentionConfig(block_size=16, density=0.3, min_sparse_len=32, **cfg))


@torch.no_grad()
@pytest.mark.slow
def test_sparse_prefill_compiles_without_graph_breaks(kernel_backend):
    model = _model()
    ids = torch.randint(0, 128, (2, 100), generator=torch.Generator().manual_seed(0))
    ref = model(ids, logits_to_keep=1).logits
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(ids, logits_to_keep=1).logits, ref, rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.slow
def test_sparse_decode_step_compiles_without_graph_breaks(kernel_backend):
    model = _model(sparse_decode=True)
    ids = torch.randint(0, 128, (1, 100), generator=torch.Generator().manual_seed(1))
    nxt = torch.tensor([[7]])
    cache = DynamicCache(config=model.config)
    model(ids, past_key_values=cache)
    ref = model(nxt, past_key_values=cache).logits
    cache = DynamicCache(config=model.config)
    model(ids, past_key_values=cache)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(nxt, past_key_values=cache).logits, ref, rtol=1e-5, atol=1e-5)
    assert model.model.layers[0].self_attn.indexer.kcache.length == 101


@torch.no_grad()
@pytest.mark.slow
def test_static_cache_sparse_decode_step_compiles_without_graph_breaks(kernel_backend):
    """A static cache's decode step (key mask, K-cache written in place at a device-side slot) traces
    into one graph: what CUDA graphs (``mode="reduce-overhead"``) need."""
    model = _model(sparse_decode=True)
    ids = torch.randint(0, 128, (1, 100), generator=torch.Generator().manual_seed(1))
    steps = torch.tensor([[7], [9]])

    def decode(forward):
        cache = StaticCache(config=model.config, max_cache_len=128)
        model(ids, past_key_values=cache)
        model(steps[:1], past_key_values=cache)  # the first step builds the indexer K-cache
        return forward(steps[1:], past_key_values=cache).logits

    ref = decode(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(decode(compiled), ref, rtol=1e-5, atol=1e-5)
    cache = model.model.layers[0].self_attn.indexer.kcache
    assert cache.length == 128 and model.model.layers[0].self_attn.indexer.last_decode_selection is not None
