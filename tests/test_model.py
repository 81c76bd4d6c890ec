"""sparse_prefill inside real (tiny, random) Qwen3 / Qwen3.5 models."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, build, qwen3_config, twin
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig

import hf_sparse_attn as hsa
from hf_sparse_attn import SparseAttentionConfig, attach_indexer, load_indexer, save_indexer
from hf_sparse_attn.runtime.modeling import WEIGHTS_NAME, indexer_state_dict

FULL = {"block_size": 16, "density": 1.0, "min_sparse_len": 16}


def _ids(B, S, seed=0):
    return torch.randint(0, VOCAB, (B, S), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
@pytest.mark.parametrize("S", [63, 65, 100])
def test_full_density_equals_sdpa(tiny_config, S):
    dense = build(tiny_config)
    sparse = attach_indexer(twin(dense), SparseAttentionConfig(**FULL))
    ids = _ids(2, S)
    ref, out = dense(ids).logits, sparse(ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for layer_idx, indexer in hsa.indexers(sparse).items():
        assert indexer.last_selection is not None, f"layer {layer_idx} did not run sparse"
        assert torch.allclose(indexer.last_selection.density(), torch.ones(2, 1))


@torch.no_grad()
@pytest.mark.parametrize("num_kv_heads", [8, 2, 1])
def test_gqa_ratios(num_kv_heads):
    dense = build(qwen3_config(num_heads=8, num_kv_heads=num_kv_heads))
    sparse = attach_indexer(twin(dense), SparseAttentionConfig(**FULL))
    ids = _ids(1, 77)
    torch.testing.assert_close(sparse(ids).logits, dense(ids).logits, rtol=1e-4, atol=1e-5)
    per_group = attach_indexer(twin(dense), SparseAttentionConfig(**{**FULL, "indexer_heads": num_kv_heads}))
    torch.testing.assert_close(per_group(ids).logits, dense(ids).logits, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_sparse_density_changes_output_and_reports_density():
    dense = build(qwen3_config())
    sparse = attach_indexer(
        twin(dense), SparseAttentionConfig(block_size=16, density=0.25, min_sparse_len=16)
    )
    ids = _ids(1, 256)
    diff = (sparse(ids).logits - dense(ids).logits).abs().max()
    assert diff > 1e-4
    for indexer in hsa.indexers(sparse).values():
        d = float(indexer.last_selection.density())
        assert 0.25 <= d < 0.5


@pytest.mark.parametrize("block_size", [16, 32, 64])
@pytest.mark.parametrize("tail", [0, 1])
def test_forced_blocks_fill_budget_iff_the_selector_adds_no_block(block_size, tail):
    from dataclasses import replace

    from hf_sparse_attn.runtime.selection import budget_kept_fraction, forced_blocks_fill_budget

    verdicts = set()
    for seq_len in (1024, 2048, 4096, 8192):
        for budget in ({"density": d} for d in (0.02, 0.05, 0.1, 0.25)), ({"top_k": k} for k in (2, 3, 4, 8)):
            for b in budget:
                cfg = SparseAttentionConfig(block_size=block_size, dense_tail_blocks=tail, **b)
                forced_only = replace(cfg, density=None, top_k=1)  # keeps exactly the forced blocks
                adds_nothing = budget_kept_fraction(cfg, seq_len) == budget_kept_fraction(
                    forced_only, seq_len
                )
                assert forced_blocks_fill_budget(cfg, seq_len) == adds_nothing, (seq_len, b)
                verdicts.add(adds_nothing)
    assert verdicts == {True, False}
    assert not forced_blocks_fill_budget(SparseAttentionConfig(block_size=64, top_p=0.01), 4096)


@torch.no_grad()
def test_budget_the_forced_blocks_fill_is_warned_once(monkeypatch, caplog):
    import hf_sparse_attn.runtime.log as log

    monkeypatch.setattr(log, "_logged", set())
    dense = build(qwen3_config())
    ids = _ids(1, 256)
    for density, warned in ((0.6, False), (0.05, True)):
        cfg = SparseAttentionConfig(block_size=32, density=density, dense_tail_blocks=1, min_sparse_len=16)
        sparse = attach_indexer(twin(dense), cfg)
        with caplog.at_level("WARNING", logger="hf_sparse_attn"):
            sparse(ids)
            sparse(ids)
        lines = [r.getMessage() for r in caplog.records if "adds no block" in r.getMessage()]
        assert len(lines) == int(warned)
        caplog.clear()
    assert "at 256 tokens the 1 sink + 2 local blocks of 32 tokens already meet the density=0.05" in lines[0]


@torch.no_grad()
def test_generate_greedy_identical_at_full_density(tiny_config):
    dense = build(tiny_config)
    sparse = attach_indexer(twin(dense), SparseAttentionConfig(**FULL))
    ids = _ids(1, 40)
    kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(sparse.generate(ids, **kwargs), dense.generate(ids, **kwargs))


@torch.no_grad()
def test_short_prompts_and_decode_are_bitwise_sdpa(tiny_config):
    dense = build(tiny_config)
    sparse = attach_indexer(
        twin(dense), SparseAttentionConfig(block_size=16, density=0.2, min_sparse_len=4096)
    )
    ids = _ids(2, 90)
    assert torch.equal(sparse(ids).logits, dense(ids).logits)
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(sparse.generate(ids, **kwargs), dense.generate(ids, **kwargs))


@torch.no_grad()
@pytest.mark.parametrize("density", [1.0, 0.3])
def test_left_padding_matches_each_sequence_alone(tiny_config, density):
    sparse = attach_indexer(
        build(tiny_config), SparseAttentionConfig(block_size=16, density=density, min_sparse_len=16)
    )
    lengths = [100, 61, 37]
    S = max(lengths)
    seqs = [_ids(1, L, seed=L)[0] for L in lengths]
    ids = torch.zeros(len(lengths), S, dtype=torch.long)
    mask = torch.zeros(len(lengths), S, dtype=torch.long)
    for b, (seq, L) in enumerate(zip(seqs, lengths, strict=True)):
        ids[b, S - L :], mask[b, S - L :] = seq, 1
    batched = sparse(ids, attention_mask=mask).logits
    for b, (seq, L) in enumerate(zip(seqs, lengths, strict=True)):
        alone = sparse(seq[None]).logits[0]
        torch.testing.assert_close(batched[b, S - L :], alone, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_padded_generate_matches_sdpa_at_full_density():
    dense = build(qwen3_config())
    sparse = attach_indexer(twin(dense), SparseAttentionConfig(**FULL))
    ids = _ids(2, 50)
    mask = torch.ones_like(ids)
    mask[1, :13] = 0
    kwargs = {"attention_mask": mask, "max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(sparse.generate(ids, **kwargs), dense.generate(ids, **kwargs))


def test_mask_with_holes_is_rejected():
    sparse = attach_indexer(build(qwen3_config()), SparseAttentionConfig(**FULL))
    mask = torch.ones(1, 40, dtype=torch.long)
    mask[0, 20] = 0
    with pytest.raises(ValueError, match="left or right padding only"):
        sparse(_ids(1, 40), attention_mask=mask)


def test_backbone_frozen_only_indexer_trainable(tiny_config):
    model = attach_indexer(build(tiny_config), SparseAttentionConfig())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".indexer." in n for n in trainable)
    expected_layers = [i for i, t in enumerate(model.config.layer_types) if t == "full_attention"]
    assert sorted(hsa.indexers(model)) == expected_layers


def test_dense_layers_get_no_indexer():
    model = attach_indexer(build(qwen3_config(layers=3)), SparseAttentionConfig(dense_layers=[1]))
    assert sorted(hsa.indexers(model)) == [0, 2]


@torch.no_grad()
def test_save_load_round_trip(tmp_path, tiny_config):
    cfg = SparseAttentionConfig(block_size=16, top_k=3, min_sparse_len=16)
    model = attach_indexer(build(tiny_config), cfg)
    for indexer in hsa.indexers(model).values():
        indexer.q_proj.weight.add_(torch.randn_like(indexer.q_proj.weight))
    ids = _ids(1, 120)
    ref = model(ids).logits
    save_indexer(model, tmp_path)
    state = indexer_state_dict(model)
    assert all(n.startswith("layers.") and ".indexer." in n for n in state)
    fresh = load_indexer(build(tiny_config), tmp_path)
    assert hsa.runtime.modeling.sparse_config_of(fresh) == cfg
    assert torch.equal(fresh(ids).logits, ref)


def test_load_rejects_missing_unexpected_and_misshaped(tmp_path):
    from safetensors.torch import load_file, save_file

    model = attach_indexer(build(qwen3_config()), SparseAttentionConfig())
    save_indexer(model, tmp_path)
    path = tmp_path / WEIGHTS_NAME
    state = load_file(path)
    first = sorted(state)[0]
    for broken, pattern in (
        ({n: t for n, t in state.items() if n != first}, "missing"),
        ({**state, "layers.99.indexer.q_proj.weight": state[first].clone()}, "unexpected"),
        ({**state, first: torch.zeros(3, 3)}, "shape mismatches \\['layers"),
    ):
        save_file(broken, path)
        with pytest.raises(ValueError, match=pattern):
            load_indexer(build(qwen3_config()), tmp_path)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="indexer.safetensors"):
        load_indexer(build(qwen3_config()), tmp_path)


def test_unsupported_model_and_missing_indexer_raise():
    llama = build(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    with pytest.raises(NotImplementedError, match="Qwen3 and Qwen3.5"):
        attach_indexer(llama, SparseAttentionConfig())
    bare = build(qwen3_config(), attn="sparse_prefill")
    with pytest.raises(RuntimeError, match="has no indexer"):
        bare(_ids(1, 20))
    with pytest.raises(ValueError, match="indexer_heads \\(3\\) must divide"):
        attach_indexer(build(qwen3_config()), SparseAttentionConfig(indexer_heads=3))
    model = attach_indexer(build(qwen3_config()), SparseAttentionConfig())
    with pytest.raises(ValueError, match="already has indexers"):
        attach_indexer(model, SparseAttentionConfig())


def test_oracle_selector_runs_in_model():
    dense = build(qwen3_config())
    sparse = attach_indexer(
        twin(dense), SparseAttentionConfig(block_size=16, top_k=4, min_sparse_len=16, selector="oracle")
    )
    ids = _ids(1, 160)
    with torch.no_grad():
        err_oracle = (sparse(ids).logits - dense(ids).logits).abs().mean()
        random_sel = attach_indexer(
            twin(dense), SparseAttentionConfig(block_size=16, top_k=4, min_sparse_len=16)
        )
        err_random = (random_sel(ids).logits - dense(ids).logits).abs().mean()
    assert err_oracle < err_random


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@torch.no_grad()
def test_sparse_prefill_never_builds_an_s_by_s_tensor(monkeypatch):
    from hf_sparse_attn.ops.block_sparse_attn import cpu as attention_cpu
    from hf_sparse_attn.ops.pooled_mass import cpu as mass_cpu
    from hf_sparse_attn.ops.pooled_mass import naive

    monkeypatch.setattr(naive, "CHUNK_ELEMENTS", 1 << 16)
    monkeypatch.setattr(mass_cpu, "SOFTMAX_CHUNK_ROWS", 64)
    monkeypatch.setattr(attention_cpu, "GATHER_CHUNK_ELEMENTS", 1 << 16)
    S = 2048
    cfg = qwen3_config(num_heads=2, num_kv_heads=1, layers=1)
    model = attach_indexer(build(cfg), SparseAttentionConfig(block_size=64, top_k=4, min_sparse_len=16))
    from hf_sparse_attn.runtime.attention import sparse_prefill_attention

    attn = model.model.layers[0].self_attn
    q = torch.randn(1, 2, S, 16)
    k, v = torch.randn(1, 1, S, 16), torch.randn(1, 1, S, 16)
    with _LargestTensor() as probe:
        sparse_prefill_attention(attn, q, k, v, None, scaling=0.25)
    assert probe.largest < S * S // 8, f"largest tensor has {probe.largest} elements (S*S = {S * S})"


@pytest.mark.parametrize(
    "budget,dense",
    [
        ({"density": 1.0}, True),
        ({"top_k": 64}, True),
        ({"density": 0.6}, True),
        ({"density": 0.1}, False),
        ({"top_p": 1.0}, False),
    ],
)
def test_a_budget_above_the_break_even_runs_sdpa(monkeypatch, budget, dense):
    """Budgets keeping at least ops.dense_faster_above (0.5 on the CPU ops) of the causal blocks run
    sdpa, bit for bit (at 100% that is the sparse result too); sparser budgets and top-p (which the
    config alone cannot size, and no device sync may) run sparse."""
    from hf_sparse_attn import ops
    from hf_sparse_attn.runtime import attention

    monkeypatch.setattr(attention, "DENSE_WHEN_FASTER", True)
    calls = []
    real = ops.block_sparse_attention
    monkeypatch.setattr(ops, "block_sparse_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = qwen3_config(num_heads=2, num_kv_heads=1, layers=1)
    reference = build(cfg)
    model = attach_indexer(twin(reference), SparseAttentionConfig(block_size=16, min_sparse_len=16, **budget))
    ids = torch.randint(0, 100, (1, 512))
    with torch.no_grad():
        out, ref = model(ids).logits, reference(ids).logits
    assert bool(calls) != dense
    if dense:
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize(
    "changes",
    [
        {"density": 0.1},
        {"density": 0.37},
        {"top_k": 5},
        {"density": 0.2, "dense_tail_blocks": 2},
        {"top_k": 1},
    ],
)
def test_budget_kept_fraction_is_what_selection_keeps(changes):
    from hf_sparse_attn.runtime.selection import budget_kept_fraction, select_blocks

    cfg = SparseAttentionConfig(block_size=16, **changes)
    for S in (100, 1000, 4096):
        nb = -(-S // 16)
        blocks = select_blocks(torch.rand(1, 1, nb, nb), cfg, torch.tensor([S]))
        assert budget_kept_fraction(cfg, S) == pytest.approx(float(blocks.density()), abs=1e-6)
    from hf_sparse_attn.runtime import selection

    hits = selection._kept_fraction.cache_info().hits
    budget_kept_fraction(SparseAttentionConfig(block_size=16, **changes), 4096)  # the next layer's call
    assert selection._kept_fraction.cache_info().hits == hits + 1
