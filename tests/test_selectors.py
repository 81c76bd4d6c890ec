"""The training-free pattern selector (vertical + slash) and the dual top-p budget."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, build, qwen3_config

from hf_sparse_attn import SparseAttentionConfig, attach_indexer, indexers, select_blocks
from hf_sparse_attn.runtime.patterns import pattern_block_scores


def _chosen(blocks, b, g, i):
    return set(blocks.kv_indices[b, g, i, : blocks.kv_num_blocks[b, g, i]].tolist())


def test_patterns_find_a_vertical_block():
    S, D, bs = 256, 32, 16
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, S, D, generator=g) * 0.1
    k = torch.randn(1, 1, S, D, generator=g) * 0.1
    q[..., 0] += 4.0
    k[:, :, 3 * bs : 4 * bs, 0] += 4.0
    scores = pattern_block_scores(q, k, bs, D**-0.5, 1, probe_queries=32)
    assert int(scores[0, 0, -1].argmax()) == 3
    blocks = select_blocks(
        scores, SparseAttentionConfig(block_size=bs, top_k=2, sink_blocks=0, local_blocks=1)
    )
    assert all(3 in _chosen(blocks, 0, 0, i) for i in range(4, S // bs))


def test_patterns_find_a_slash_band():
    S, D, bs, offset = 250, 256, 16, 40
    q = torch.zeros(1, 1, S, D)
    k = torch.zeros(1, 1, S, D)
    pos = torch.arange(S)
    k[0, 0, pos, pos % D] = 1.0
    q[0, 0, pos, (pos - offset) % D] = 12.0
    scores = pattern_block_scores(q, k, bs, 1.0, 1, probe_queries=48)
    blocks = select_blocks(
        scores, SparseAttentionConfig(block_size=bs, top_k=3, sink_blocks=0, local_blocks=1)
    )
    for i in range(4, (S + bs - 1) // bs):
        assert _chosen(blocks, 0, 0, i) & {i - 2, i - 3}, (i, _chosen(blocks, 0, 0, i))


@torch.no_grad()
def test_patterns_selector_in_model_needs_no_training_and_handles_padding():
    model = attach_indexer(
        build(qwen3_config()),
        SparseAttentionConfig(
            block_size=16, density=0.3, min_sparse_len=16, selector="patterns", probe_queries=16
        ),
    )
    lengths = [90, 57]
    S = max(lengths)
    seqs = [torch.randint(0, VOCAB, (L,), generator=torch.Generator().manual_seed(L)) for L in lengths]
    ids, mask = torch.zeros(2, S, dtype=torch.long), torch.zeros(2, S, dtype=torch.long)
    for b, (seq, L) in enumerate(zip(seqs, lengths, strict=True)):
        ids[b, S - L :], mask[b, S - L :] = seq, 1
    batched = model(ids, attention_mask=mask).logits
    for ix in indexers(model).values():  # sink + 2 local blocks dominate the density rule at these lengths
        assert ix.last_selection.kv_num_blocks[:, 0].tolist() == [[1, 2, 3, 3, 3, 3], [1, 2, 3, 3, 0, 0]]
    for b, (seq, L) in enumerate(zip(seqs, lengths, strict=True)):
        torch.testing.assert_close(batched[b, S - L :], model(seq[None]).logits[0], rtol=1e-4, atol=1e-4)


def _rows(flat_rows: int, peaked_rows: int, nb: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    s = torch.rand(1, 1, nb, nb, generator=g) * 0.05 + 1.0
    for i in range(flat_rows, flat_rows + peaked_rows):
        s[0, 0, i, 0] = 100.0
    return s.tril()


def test_dual_top_p_caps_flat_rows_and_reduces_to_top_p():
    scores = _rows(flat_rows=8, peaked_rows=4)
    base = dict(block_size=16, sink_blocks=0, local_blocks=1, top_p=0.9)
    single = select_blocks(scores, SparseAttentionConfig(**base))
    same = select_blocks(scores, SparseAttentionConfig(**base, layer_top_p=1.0))
    assert torch.equal(single.kv_num_blocks, same.kv_num_blocks)
    dual = select_blocks(scores, SparseAttentionConfig(**base, layer_top_p=0.5))
    assert (dual.kv_num_blocks <= single.kv_num_blocks).all()
    assert dual.kv_num_blocks[0, 0, 4:8].sum() < single.kv_num_blocks[0, 0, 4:8].sum()
    assert torch.equal(dual.kv_num_blocks[0, 0, 8:], single.kv_num_blocks[0, 0, 8:])
    assert (dual.kv_num_blocks >= 1).all()


def test_config_validates_new_fields():
    with pytest.raises(ValueError, match="layer_top_p \\(dual top-p\\) needs"):
        SparseAttentionConfig(density=0.1, layer_top_p=0.9)
    with pytest.raises(ValueError, match="probe_queries"):
        SparseAttentionConfig(probe_queries=0)
    cfg = SparseAttentionConfig(top_p=0.9, layer_top_p=0.8, selector="patterns")
    assert SparseAttentionConfig.from_dict(cfg.to_dict()) == cfg


def test_with_dense_groups_keeps_retrieval_heads_full_and_others_unchanged():
    from hf_sparse_attn.ops.block_sparse_attn.naive import block_sparse_attention
    from hf_sparse_attn.runtime.selection import with_dense_groups

    torch.manual_seed(0)
    cfg = SparseAttentionConfig(block_size=16, top_k=2, local_blocks=1, min_sparse_len=1)
    lens = torch.tensor([100, 70])
    blocks = select_blocks(torch.rand(2, 1, 7, 7), cfg, lens)
    mixed = with_dense_groups(blocks, [1], num_groups=2)
    dense = mixed.to_dense()
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    valid = [7, 5]
    for b, n in enumerate(valid):
        assert torch.equal(dense[b, 1, :n, :n], causal[:n, :n])
        assert torch.equal(dense[b, 0], blocks.to_dense()[b, 0])
    q, k, v = torch.randn(2, 4, 100, 8), torch.randn(2, 2, 100, 8), torch.randn(2, 2, 100, 8)
    out, _ = block_sparse_attention(q, k, v, mixed.kv_num_blocks, mixed.kv_indices, 16, 0.3, lens)
    sparse, _ = block_sparse_attention(q, k, v, blocks.kv_num_blocks, blocks.kv_indices, 16, 0.3, lens)
    full = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True, scale=0.3, enable_gqa=True
    )
    torch.testing.assert_close(out[:, :2], sparse[:, :2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0, 2:], full[0, 2:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1, 2:, :70], full[1, 2:, :70], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of indexer_heads"):
        with_dense_groups(select_blocks(torch.rand(1, 2, 7, 7), cfg), [0], num_groups=3)
    with pytest.raises(ValueError, match="has 2 kv heads"):
        with_dense_groups(blocks, [2], num_groups=2)


def test_all_retrieval_heads_make_the_sparse_model_dense():
    config = qwen3_config()
    dense = build(config)
    ids = torch.randint(0, VOCAB, (2, 96), generator=torch.Generator().manual_seed(0))
    every = [
        [layer, h] for layer in range(config.num_hidden_layers) for h in range(config.num_key_value_heads)
    ]
    sparse = attach_indexer(
        build(config, attn="sparse_prefill"),
        SparseAttentionConfig(
            block_size=16, top_k=1, local_blocks=1, min_sparse_len=1, retrieval_heads=every
        ),
    )
    with torch.no_grad():
        torch.testing.assert_close(sparse(ids).logits, dense(ids).logits, rtol=1e-4, atol=1e-4)
        assert all(float(ix.last_selection.density().min()) == 1.0 for ix in indexers(sparse).values())


def test_find_retrieval_heads_scores_long_range_mass():
    from hf_sparse_attn import update_sparse_config
    from hf_sparse_attn_lab.retrieval_heads import find_retrieval_heads, long_range_mass

    config = qwen3_config()
    model = attach_indexer(
        build(config, attn="sparse_prefill"), SparseAttentionConfig(block_size=16, min_sparse_len=1)
    )
    prompts = [
        torch.randint(0, VOCAB, (1, 128), generator=torch.Generator().manual_seed(i)) for i in range(2)
    ]
    heads, mass = find_retrieval_heads(model, prompts, count=3)
    assert mass.shape == (2, 2) and bool(((mass > 0) & (mass < 1)).all())
    ranked = sorted(((float(mass[i, h]), [i, h]) for i in range(2) for h in range(2)), reverse=True)
    assert heads == sorted(pair for _, pair in ranked[:3])
    update_sparse_config(model, local_blocks=8)
    assert float(long_range_mass(model, prompts).abs().max()) == 0.0
    with pytest.raises(ValueError, match="count must be in"):
        find_retrieval_heads(model, prompts, count=5)
    model.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match="sparse_prefill path"):
        long_range_mass(model, prompts)


def test_row_probe_mass_is_the_dense_attention_of_each_blocks_last_query():
    from hf_sparse_attn.ops.probe_mass.naive import row_probe_mass

    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 70, 8), torch.randn(2, 2, 70, 8)
    lens = torch.tensor([70, 45])
    mass = row_probe_mass(q, k, 16, 0.4, groups=1, seq_lens=lens, rows_per_chunk=2)
    for b, L in enumerate([70, 45]):
        logits = (q[b, :, :L] @ k[b, :, :L].repeat_interleave(2, 0).transpose(-1, -2)) * 0.4
        logits = logits.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
        probs = torch.softmax(logits, -1).mean(0)
        for i in range(-(-L // 16)):
            row = probs[min(L, (i + 1) * 16) - 1]
            pooled = torch.nn.functional.pad(row, (0, 80 - L)).view(5, 16).sum(-1)
            torch.testing.assert_close(mass[b, 0, i], pooled, rtol=1e-5, atol=1e-6)
        assert not mass[b, 0, -(-L // 16) :].any()


def test_horizontal_threshold_extremes_reduce_to_dense_and_to_plain_selection():
    config = qwen3_config()
    dense = build(config)
    ids = torch.randint(0, VOCAB, (1, 160), generator=torch.Generator().manual_seed(0))
    base = dict(block_size=16, top_k=2, local_blocks=1, min_sparse_len=1)
    outs = {}
    for name, extra in {
        "plain": {},
        "zero": {"horizontal_threshold": 1e-9},
        "one": {"horizontal_threshold": 1.0},
    }.items():
        model = attach_indexer(build(config, attn="sparse_prefill"), SparseAttentionConfig(**base, **extra))
        with torch.no_grad():
            outs[name] = model(ids).logits
        outs[name + "_density"] = float(next(iter(indexers(model).values())).last_selection.density().mean())
    with torch.no_grad():
        ref = dense(ids).logits
    torch.testing.assert_close(outs["zero"], outs["plain"], rtol=0, atol=0)
    torch.testing.assert_close(outs["one"], ref, rtol=1e-4, atol=1e-4)
    assert outs["plain_density"] < 0.5 and outs["one_density"] == 1.0


def test_horizontal_rows_on_an_unpadded_prompt_that_ends_mid_block():
    """Regression: the block list must carry the true length (203), not the block-rounded 208."""
    model = attach_indexer(
        build(qwen3_config(), attn="sparse_prefill"),
        SparseAttentionConfig(
            block_size=16, density=0.2, min_sparse_len=16, selector="patterns", horizontal_threshold=0.5
        ),
    )
    with torch.no_grad():
        model(torch.randint(0, 128, (1, 203), generator=torch.Generator().manual_seed(0)))
    blocks = model.model.layers[0].self_attn.indexer.last_selection
    assert blocks.seq_lens.tolist() == [203]
