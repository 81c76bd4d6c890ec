"""Oracle-sparse attention with gradients (sparse-aware proxy training) against the references."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from hf_sparse_attn.ops.block_sparse_attn.naive import block_sparse_attention
from hf_sparse_attn.runtime.config import SparseAttentionConfig
from hf_sparse_attn.runtime.oracle import oracle_block_scores
from hf_sparse_attn.runtime.selection import select_blocks
from hf_sparse_attn_lab.proxy import ProxyTrainingConfig, train_proxy
from hf_sparse_attn_lab.sparse_training import oracle_selection, oracle_sparse_training_attention

B, HQ, HKV, S, D = 2, 4, 2, 100, 16  # S not a multiple of the block


def _qkv(seed: int = 0, requires_grad: bool = True):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, S, D, generator=g, dtype=torch.float32) for h in (HQ, HKV, HKV))
    k[:, :, ::7] *= 4  # some peaked keys, so the oracle ranks blocks clearly
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def _module(config: SparseAttentionConfig | None):
    return SimpleNamespace(training=True, num_key_value_groups=HQ // HKV, training_sparsity=config)


def _config(**kw) -> SparseAttentionConfig:
    base = dict(selector="oracle", block_size=16, density=0.3, min_sparse_len=32, dense_tail_blocks=1)
    return SparseAttentionConfig(**(base | kw))


def test_without_sparsity_it_is_causal_sdpa():
    q, k, v = _qkv()
    module = SimpleNamespace(training=True, num_key_value_groups=HQ // HKV, is_causal=True)
    out, _ = oracle_sparse_training_attention(module, q, k, v, None, scaling=0.25)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.25, enable_gqa=True)
    torch.testing.assert_close(out, ref.transpose(1, 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("padded", [False, True])
def test_forward_matches_the_block_sparse_reference_on_the_oracle_selection(groups, padded):
    q, k, v = _qkv(requires_grad=False)
    cfg = _config(indexer_heads=groups)
    lens = torch.tensor([S, 71]) if padded else torch.full((B,), S)
    module = _module(cfg)
    module.training_seq_lens = lens if padded else None
    out, _ = oracle_sparse_training_attention(module, q, k, v, None, scaling=0.25)
    blocks = select_blocks(oracle_block_scores(q, k, 16, 0.25, groups, lens), cfg, lens)
    assert 0.3 < float(blocks.density().mean()) < 0.9  # genuinely sparse, not every block
    ref, _ = block_sparse_attention(q, k, v, blocks.kv_num_blocks, blocks.kv_indices, 16, 0.25, lens)
    valid = (torch.arange(S)[None, :] < lens[:, None])[..., None, None]  # [B, S, 1, 1]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out * valid, ref.transpose(1, 2) * valid, rtol=1e-5, atol=1e-6)


def test_density_one_gives_dense_values_and_gradients():
    """Against float64 causal SDPA, in relative error (fp32: 2e-5, the kernels' tolerance): both fp32 paths
    round differently, which an elementwise tolerance on near-zero gradient entries would count."""
    q, k, v = _qkv()
    out, _ = oracle_sparse_training_attention(_module(_config(density=1.0)), q, k, v, None, scaling=0.25)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(q64, k64, v64, is_causal=True, scale=0.25, enable_gqa=True)
    ref = ref.transpose(1, 2)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q64, k64, v64))
    for got, want in zip((out, *grads), (ref, *ref_grads), strict=True):
        assert float((got.double() - want).norm() / want.norm()) < 2e-5


def test_gradients_reach_only_selected_keys():
    q, k, v = _qkv()
    cfg = _config()
    out, _ = oracle_sparse_training_attention(_module(cfg), q, k, v, None, scaling=0.25)
    rows = slice(64, 80)  # query block 4 of 7: neither sink, local-only, nor the dense tail
    dk, dv = torch.autograd.grad(out[:, rows].sum(), (k, v))
    kept = oracle_selection(q, k, cfg, 0.25).to_dense()[:, 0, 4]  # [B, nb] key blocks query block 4 reads
    read = kept.repeat_interleave(16, dim=-1)[:, :S] & (torch.arange(S) < rows.stop)  # [B, S] keys it reads
    assert (~read[:, :64]).any() and read[:, :64].any()
    assert dv.abs().sum((1, 3))[~read].max() == 0 and dk.abs().sum((1, 3))[~read].max() == 0
    assert dv.abs().sum((1, 3))[read].min() > 0


def test_short_inputs_run_dense_and_padding_masks_are_refused():
    q, k, v = _qkv(requires_grad=False)
    module = _module(_config(min_sparse_len=S + 1))
    module.is_causal = True
    out, _ = oracle_sparse_training_attention(module, q, k, v, None, scaling=0.25)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.25, enable_gqa=True)
    torch.testing.assert_close(out, ref.transpose(1, 2), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="without an attention mask"):
        oracle_sparse_training_attention(
            _module(_config()), q, k, v, torch.ones(B, 1, S, S, dtype=torch.bool), scaling=0.25
        )


def test_step_sparsity_is_seeded_and_follows_the_fraction():
    cfg = ProxyTrainingConfig(sparse_fraction=0.5, sparse_density=(0.03, 0.12))
    draws = [cfg.sparsity_at(step) for step in range(400)]
    assert draws[:50] == [cfg.sparsity_at(step) for step in range(50)]
    sparse = [d for d in draws if d is not None]
    assert 150 < len(sparse) < 250
    assert all(
        0.03 <= d.density <= 0.12 and d.selector == "oracle" and d.dense_tail_blocks == 1 for d in sparse
    )
    assert {d.block_size for d in sparse} == {64}
    small = ProxyTrainingConfig(sparse_fraction=1.0, sparse_block_size=32, sparse_dense_tail_blocks=0)
    assert {(small.sparsity_at(s).block_size, small.sparsity_at(s).dense_tail_blocks) for s in range(20)} == {
        (32, 0)
    }
    with pytest.raises(ValueError, match="dense_tail_blocks"):
        ProxyTrainingConfig(sparse_dense_tail_blocks=-1)
    with pytest.raises(ValueError, match="block_size must be a power of two"):
        ProxyTrainingConfig(sparse_block_size=48)
    assert ProxyTrainingConfig().sparsity_at(3) is None
    with pytest.raises(ValueError, match="share of the steps"):
        ProxyTrainingConfig(sparse_fraction=1.5)
    with pytest.raises(ValueError, match="low <= high"):
        ProxyTrainingConfig(sparse_density=(0.2, 0.1))


def test_random_share_draws_a_share_of_the_sparse_steps_at_random():
    cfg = ProxyTrainingConfig(sparse_fraction=1.0, sparse_random_share=0.25)
    selectors = [cfg.sparsity_at(step).selector for step in range(400)]
    assert set(selectors) == {"oracle", "random"} and 60 < selectors.count("random") < 140
    with pytest.raises(ValueError, match="share of the sparse steps"):
        ProxyTrainingConfig(sparse_random_share=-0.1)
    with pytest.raises(ValueError, match="unknown tasks \\['nope'\\]"):
        ProxyTrainingConfig(task_weights={"nope": 1.0})
    with pytest.raises(ValueError, match="finite and >= 0.*'vt': -1.0"):
        ProxyTrainingConfig(task_weights={"vt": -1.0})
    with pytest.raises(ValueError, match="positive sum"):
        ProxyTrainingConfig(task_weights={"vt": 0.0})


def test_random_selection_keeps_the_forced_blocks_and_the_budget_but_not_the_oracle_blocks():
    n = 250  # 16 blocks of 16, the last one partial
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(B, HQ, n, D, generator=g), torch.randn(B, HKV, n, D, generator=g)
    oracle = oracle_selection(q, k, _config(density=0.5), 0.25).to_dense()[:, 0]  # [B, nb, nb]
    torch.manual_seed(0)
    rand = oracle_selection(q, k, _config(density=0.5, selector="random"), 0.25).to_dense()[:, 0]
    assert rand.shape == oracle.shape == (B, 16, 16)
    assert not torch.equal(rand, oracle)
    for qb in range(rand.shape[1] - 1):  # the last query block is the dense tail
        picked = rand[:, qb, : qb + 1]
        assert picked[:, 0].all() and picked[:, max(0, qb - 1) :].all()  # sink + two local blocks
        assert torch.equal(picked.sum(-1), oracle[:, qb].sum(-1))  # the same budget
        assert not rand[:, qb, qb + 1 :].any()  # causal


def test_sparse_aware_continuation_trains_from_a_checkpoint(tmp_path, monkeypatch):
    import hf_sparse_attn_lab.sparse_training as st

    base = ProxyTrainingConfig(train_len=192, min_len=160, steps=2, tokens_per_step=384, warmup_steps=1)
    train_proxy(tmp_path / "v1", base, device="cpu", num_workers=0)
    calls = []
    real = st.oracle_selection
    monkeypatch.setattr(st, "oracle_selection", lambda *a: calls.append(1) or real(*a))
    cont = ProxyTrainingConfig(
        train_len=192,
        min_len=160,
        steps=2,
        tokens_per_step=384,
        warmup_steps=1,
        init_from=str(tmp_path / "v1"),
        sparse_fraction=1.0,
        sparse_min_len=128,
    )
    summary = train_proxy(tmp_path / "v2", cont, device="cpu", num_workers=0)
    assert summary["steps_done"] == 2 and summary["config"]["init_from"] == str(tmp_path / "v1")
    assert len(calls) == 2 * 6  # every layer of both steps ran on its oracle selection
    saved = json.loads((tmp_path / "v2" / "config.json").read_text())
    assert saved.get("_attn_implementation") in (None, "sdpa")
