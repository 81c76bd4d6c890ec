"""Bad and edge inputs: each gets a clear error naming what to change, or the correct result.

One test per defect found by the trust review, named after it.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build, dense_causal_attention, qwen3_config

import hf_sparse_attn as hsa
from hf_sparse_attn import SparseAttentionConfig, attach_indexer, indexers, load_indexer, save_indexer
from hf_sparse_attn.ops.block_sparse_attn.naive import block_sparse_attention
from hf_sparse_attn.runtime.selection import select_blocks

CFG = SparseAttentionConfig(block_size=16, top_k=5, local_blocks=1, min_sparse_len=16)


def trained(seed: int = 0):
    model = attach_indexer(build(qwen3_config()), CFG)
    torch.manual_seed(seed)
    for ix in indexers(model).values():
        ix.q_proj.weight.data.normal_()
        ix.k_proj.weight.data.normal_()
    return model


def test_left_padding_without_position_ids_selects_what_the_row_selects_alone():
    model = trained()
    ids = torch.randint(2, 100, (1, 100))
    with torch.no_grad():
        alone = model(ids).logits[0, -1]
        padded = torch.cat([torch.zeros(1, 20, dtype=torch.long), ids], 1)
        mask = torch.cat([torch.zeros(1, 20, dtype=torch.long), torch.ones(1, 100, dtype=torch.long)], 1)
        other = torch.randint(2, 100, (1, 120))
        batch = model(
            input_ids=torch.cat([padded, other]), attention_mask=torch.cat([mask, torch.ones_like(mask)])
        )
    torch.testing.assert_close(batch.logits[0, -1], alone, rtol=1e-4, atol=1e-4)


def test_non_finite_indexer_weights_are_refused_at_load(tmp_path):
    model = trained()
    next(iter(indexers(model).values())).q_proj.weight.data[0, 0] = float("nan")
    save_indexer(model, tmp_path)
    with pytest.raises(ValueError, match="non-finite"):
        load_indexer(build(qwen3_config()), tmp_path)


def test_nan_scores_never_drop_the_forced_blocks():
    config = SparseAttentionConfig(block_size=16, top_k=3, sink_blocks=1, local_blocks=1)
    scores = torch.full((1, 1, 8, 8), float("nan"))
    blocks = select_blocks(scores, config)
    for qb in range(8):
        kept = set(blocks.kv_indices[0, 0, qb, : blocks.kv_num_blocks[0, 0, qb]].tolist())
        assert {0, qb} <= kept and max(kept) <= qb


def test_failed_load_indexer_leaves_the_trained_indexer(tmp_path):
    model = trained()
    before = {k: v.clone() for k, v in hsa.runtime.modeling.indexer_state_dict(model).items()}
    other = attach_indexer(build(qwen3_config()), SparseAttentionConfig(block_size=16, indexer_dim=8))
    save_indexer(other, tmp_path)
    (tmp_path / "indexer.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="indexer.safetensors"):
        load_indexer(model, tmp_path)
    after = hsa.runtime.modeling.indexer_state_dict(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert next(iter(indexers(model).values())).config == CFG


def test_integer_layer_lists_are_checked_not_cast():
    for bad in ([1.7], ["a"], [True]):
        with pytest.raises(ValueError, match="dense_layers must be a list of layer indices"):
            SparseAttentionConfig(dense_layers=bad)
    with pytest.raises(ValueError, match="retrieval_heads must be"):
        SparseAttentionConfig(retrieval_heads=[[1.5, 0]])


def test_retrieval_heads_on_a_missing_layer_raise():
    with pytest.raises(ValueError, match=r"retrieval_heads entry \[9, 0\]"):
        attach_indexer(build(qwen3_config()), SparseAttentionConfig(retrieval_heads=[[9, 0]]))


@pytest.mark.parametrize("data", [{"format_version": "1"}, {"format_version": None}, [1, 2]])
def test_config_from_dict_with_bad_format_version_or_a_list(data):
    with pytest.raises(ValueError, match="format_version|JSON object"):
        SparseAttentionConfig.from_dict(data)


def test_backward_through_the_reference_block_sparse_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, h, 40, 16, requires_grad=True) for h in (4, 2, 2))
    num = torch.tensor([[[1, 2, 3]]], dtype=torch.int32)  # every causal block: equals dense causal attention
    idx = torch.tensor([[[[0, 0, 0], [0, 1, 0], [0, 1, 2]]]], dtype=torch.int32)
    out = block_sparse_attention(q, k, v, num, idx, 16, 0.25)[0]
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref = dense_causal_attention(q, k, v, 0.25)[0]
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_load_indexer_from_a_missing_path_names_both_readings(tmp_path):
    with pytest.raises(FileNotFoundError, match="no local directory.*not a Hub repo id"):
        load_indexer(build(qwen3_config()), str(tmp_path / "no" / "such" / "dir"))


def test_corrupt_sparse_config_names_the_file(tmp_path):
    save_indexer(trained(), tmp_path)
    (tmp_path / "sparse_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="sparse_config.json"):
        load_indexer(build(qwen3_config()), tmp_path)


def test_save_that_fails_midway_keeps_the_previous_pair(tmp_path, monkeypatch):
    model = trained(seed=0)
    save_indexer(model, tmp_path)
    first = (tmp_path / "indexer.safetensors").read_bytes(), (tmp_path / "sparse_config.json").read_text()
    hsa.update_sparse_config(model, top_k=7)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hsa.runtime.modeling, "write_config", crash)
    with pytest.raises(OSError, match="disk full"):
        save_indexer(model, tmp_path)
    assert (tmp_path / "indexer.safetensors").read_bytes() == first[0]
    assert (tmp_path / "sparse_config.json").read_text() == first[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["indexer.safetensors", "sparse_config.json"]
    load_indexer(build(qwen3_config()), tmp_path)


def test_a_config_and_weights_from_two_saves_are_refused(tmp_path):
    model = trained()
    save_indexer(model, tmp_path / "a")
    hsa.update_sparse_config(model, top_k=7)
    save_indexer(model, tmp_path / "b")
    (tmp_path / "a" / "sparse_config.json").write_text((tmp_path / "b" / "sparse_config.json").read_text())
    with pytest.raises(ValueError, match="not written by one save_indexer call"):
        load_indexer(build(qwen3_config()), tmp_path / "a")


def test_resume_skips_a_half_written_checkpoint(tmp_path):
    from hf_sparse_attn.distill import CHECKPOINT_COMPLETE, last_complete_checkpoint

    for step, complete in ((2, True), (4, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / CHECKPOINT_COMPLETE).write_text(str(step))
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["demo", "--device", "cuda"], "no CUDA device"),
        (["build-kernels", "--out", "FILE"], "is a file"),
        (
            ["publish", "--indexer", "IDX", "--base-model", "a/b", "--base-revision", "main", "--out", "OUT"],
            "40-hex",
        ),
    ],
)
def test_cli_errors_are_one_line(argv, needle, tmp_path, capsys, monkeypatch):
    from hf_sparse_attn_cli import main

    if torch.cuda.is_available() and "cuda" in argv:
        pytest.skip("needs a machine without CUDA")
    (tmp_path / "FILE").write_text("x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_turns_an_os_error_into_one_line_naming_the_path(tmp_path, capsys):
    from hf_sparse_attn_cli import main

    assert (
        main(
            [
                "publish",
                "--indexer",
                str(tmp_path / "nope"),
                "--base-model",
                "a/b",
                "--full",
                str(tmp_path),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "nope" in err and len(err.strip().splitlines()) == 1


def test_eval_lengths_that_are_not_numbers(capsys):
    from hf_sparse_attn_cli import _ints

    with pytest.raises(ValueError, match="comma list of whole numbers.*'abc'"):
        _ints("abc")


def test_all_padding_batch_gives_a_clear_distillation_error():
    from hf_sparse_attn.distill import distillation_loss

    model = trained()
    ids = torch.zeros(2, 64, dtype=torch.long)
    with pytest.raises(ValueError, match="attention_mask"):
        distillation_loss(model, ids, torch.zeros_like(ids))


def test_sparse_config_json_written_by_save_is_valid_json(tmp_path):
    save_indexer(trained(), tmp_path)
    assert json.loads((tmp_path / "sparse_config.json").read_text())["top_k"] == 5
