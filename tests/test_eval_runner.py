"""`hf-sparse-attn eval` pieces on a tiny random model with the task tokenizer: methods, runner, report."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from functools import partial

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3Config

from hf_sparse_attn import (
    SparseAttentionConfig,
    attach_indexer,
    indexers,
    select_blocks,
    update_sparse_config,
)
from hf_sparse_attn.runtime.oracle import token_oracle_attention
from hf_sparse_attn.runtime.selection import budget_kept_fraction
from hf_sparse_attn.vocab import build_tokenizer
from hf_sparse_attn_lab.eval.methods import Method, build_methods, streaming_changes
from hf_sparse_attn_lab.eval.runner import evaluate, macro, write_report


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def tiny(tok):
    config = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    attach_indexer(model, SparseAttentionConfig(block_size=16, density=0.25, min_sparse_len=64))
    return model


def test_build_methods_expands_budgets_and_rejects_unknown_names():
    methods = build_methods(
        ["dense", "indexer", "indexer_topp", "streaming"], [0.1, 0.2], [0.9], None, [32, 64]
    )
    labels = [m.label for m in methods]
    assert labels.count("dense") == 1
    assert "indexer density=0.1 block_size=32" in labels and "indexer_topp top_p=0.9 block_size=64" in labels
    assert "streaming density=0.2 block_size=64" in labels
    with pytest.raises(ValueError, match="unknown eval methods"):
        build_methods(["bogus"], [0.1], [0.9])
    with pytest.raises(ValueError, match="--layer-top-p"):
        build_methods(["indexer_dual_topp"], [0.1], [0.9])


@pytest.mark.parametrize(
    "seq_len, block_size, tail, expected_top_k",
    [(4096, 32, 1, 7), (8192, 32, 1, 14), (4096, 64, 0, 4), (131072, 64, 1, 106)],
)
def test_streaming_window_keeps_what_top_k_keeps(seq_len, block_size, tail, expected_top_k):
    config = SparseAttentionConfig(block_size=block_size, dense_tail_blocks=tail, density=0.1)
    changes = streaming_changes(Method("streaming", {"density": 0.1}, 0.1), seq_len, config)
    assert changes == {"top_k": expected_top_k, "local_blocks": expected_top_k - 1, "selector": "indexer"}
    target = budget_kept_fraction(config, seq_len)

    def kept(window: int) -> float:
        return budget_kept_fraction(
            replace(config, density=None, top_k=1 + window, local_blocks=window), seq_len
        )

    window = changes["local_blocks"]  # no other window comes closer to top-k's kept density
    gap = abs(kept(window) - target)
    assert gap <= abs(kept(window - 1) - target) and gap <= abs(kept(window + 1) - target)
    assert gap < 0.01


def test_update_sparse_config_switches_budget_in_place(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    config = update_sparse_config(tiny, top_p=0.8, selector="oracle")
    assert config.budget == ("top_p", 0.8) and config.density is None
    assert all(ix.config is config for ix in indexers(tiny).values())
    assert tiny.config.sparse_attention["top_p"] == 0.8
    with pytest.raises(ValueError, match="attach_indexer"):
        update_sparse_config(tiny, indexer_dim=32)
    update_sparse_config(tiny, density=0.25, selector="indexer")
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())


def test_random_selector_is_seeded_per_layer_and_meets_the_density(tiny, tok):
    update_sparse_config(tiny, selector="random", density=0.25)
    ids = torch.randint(5, len(tok), (1, 256), generator=torch.Generator().manual_seed(1))
    picks = []
    for _ in range(2):
        with torch.no_grad():
            tiny(ids)
        picks.append([ix.last_selection.kv_indices.clone() for ix in indexers(tiny).values()])
    assert all(torch.equal(a, b) for a, b in zip(*picks, strict=True))
    assert not torch.equal(picks[0][0], picks[0][1])
    dens = [float(ix.last_selection.density().mean()) for ix in indexers(tiny).values()]
    assert all(0.25 <= d < 0.45 for d in dens), dens
    update_sparse_config(tiny, selector="indexer")


def test_token_oracle_density_keeps_ceil_share_and_is_exact_at_full_density():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 50, 8), torch.randn(1, 2, 50, 8), torch.randn(1, 2, 50, 8)
    _, kept = token_oracle_attention(q, k, v, 8**-0.5, density=0.3, groups=2)
    causal = torch.arange(1, 51).float()
    expected = torch.ceil(0.3 * causal) / causal
    torch.testing.assert_close(kept, expected.expand_as(kept), rtol=0, atol=1e-6)
    full, _ = token_oracle_attention(q, k, v, 8**-0.5, density=1.0)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(full, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="exactly one"):
        token_oracle_attention(q, k, v, 1.0, density=0.3, top_k=4)


def test_dense_tail_blocks_keep_every_causal_block_of_the_last_query_rows():
    scores = torch.rand(2, 1, 10, 10)
    lens = torch.tensor([160, 100])  # 10 and 7 valid blocks of 16
    cfg = SparseAttentionConfig(block_size=16, top_k=3, dense_tail_blocks=2, min_sparse_len=1)
    dense = select_blocks(scores, cfg, lens).to_dense()[:, 0]
    for b, n in enumerate([10, 7]):
        for i in range(n):
            kept = int(dense[b, i].sum())
            assert kept == (i + 1 if i >= n - 2 else min(i + 1, 3)), (b, i, kept)
    assert not dense[1, 7:].any()


def test_block_size_sweep_runs_block_independent_methods_once():
    methods = build_methods(
        ["dense", "token_oracle", "block_oracle"], [0.1, 0.2], [0.9], block_sizes=[32, 64]
    )
    labels = [m.label for m in methods]
    assert labels.count("dense") == 1 and sum(lab.startswith("token_oracle") for lab in labels) == 2
    assert sorted(m.changes["block_size"] for m in methods if m.name == "block_oracle") == [32, 32, 64, 64]


def test_streaming_rows_do_not_warn_that_the_forced_blocks_fill_the_budget(tiny, tok, monkeypatch, caplog):
    """Streaming is sink + local blocks by design; a top-k row whose budget they fill still warns."""
    import hf_sparse_attn.runtime.log as log

    monkeypatch.setattr(log, "_logged", set())
    run = partial(evaluate, tiny, tok, lengths=[256], tasks=["vt"], samples=1, batch_size=1, progress=False)
    with caplog.at_level("WARNING", logger="hf_sparse_attn"):
        run(build_methods(["streaming"], [0.25], [0.9]))
        assert not [r for r in caplog.records if "adds no block" in r.getMessage()]
        run([Method("indexer", {"top_k": 1}, None)])
    assert len([r for r in caplog.records if "adds no block" in r.getMessage()]) == 1


def test_evaluate_rows_densities_and_report(tiny, tok, tmp_path):
    methods = build_methods(
        ["dense", "token_oracle", "block_oracle", "indexer", "streaming", "random"], [0.25, 1.0], [0.9]
    )
    rows = evaluate(
        tiny, tok, methods, [256], ["niah_single_1", "vt"], samples=2, batch_size=2, progress=False
    )
    assert len(rows) == 2 * len(methods)
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["samples"] == 2 for r in rows)
    by = {(r["label"], r["task"]): r for r in rows}
    assert by[("dense", "vt")]["density"] == 1.0
    for task in ("niah_single_1", "vt"):
        full = by[("block_oracle density=1", task)]
        assert full["density"] == pytest.approx(1.0)
        assert full["example_output"] == by[("dense", task)]["example_output"]
        assert full["outputs"] == by[("dense", task)]["outputs"] and len(full["outputs"]) == 2
        assert len(full["answers"]) == 2 and full["answers"][0] == full["example_answers"]
        assert 0.25 <= by[("random density=0.25", task)]["density"] < 0.6
        streaming, top_k = (by[(f"{m} density=0.25", task)]["density"] for m in ("streaming", "block_oracle"))
        assert abs(streaming - top_k) < 0.05  # a window step is ~0.06 here; density x blocks missed by 0.066
    summary = macro(rows)
    assert math.isclose(
        summary[("dense", 256)]["accuracy"],
        (by[("dense", "vt")]["accuracy"] + by[("dense", "niah_single_1")]["accuracy"]) / 2,
    )
    assert update_sparse_config(tiny).to_dict()["density"] == 0.25  # restored after the run
    files = write_report(rows, tmp_path, {"model": "tiny", "device": "cpu"})
    data = json.loads((tmp_path / "eval.json").read_text())
    assert len(data["rows"]) == len(rows)
    md = (tmp_path / "eval.md").read_text()
    assert "## 256 tokens" in md and "| block_oracle density=0.25 |" in md
    assert set(files) >= {"json", "markdown"}


def test_report_has_a_per_layer_density_table(tiny, tok, tmp_path):
    methods = build_methods(["indexer_topp"], [0.25], [0.5])
    rows = evaluate(tiny, tok, methods, [256], ["qa"], samples=1, batch_size=1, progress=False)
    assert set(rows[0]["layer_density"]) == {0, 1}
    assert rows[0]["density"] == pytest.approx(sum(rows[0]["layer_density"].values()) / 2)
    write_report(rows, tmp_path, {"model": "tiny"})
    md = (tmp_path / "eval.md").read_text()
    assert "| method | length | layer 0 | layer 1 |" in md and "| indexer_topp top_p=0.5 | 256 |" in md


def test_density_for_kept_inverts_the_kept_density_of_a_budget():
    from dataclasses import replace

    from hf_sparse_attn_lab.eval.methods import density_for_kept

    cfg = SparseAttentionConfig(block_size=64, density=0.125, dense_tail_blocks=1, local_blocks=2)
    for density in (0.05, 0.2, 0.37, 0.9):
        kept = budget_kept_fraction(replace(cfg, density=density), 4096)
        assert kept > density  # the forced sink / local / tail blocks come on top
        found = density_for_kept(cfg, kept, 4096)
        assert budget_kept_fraction(replace(cfg, density=found), 4096) == pytest.approx(kept, abs=1e-3)
    forced_only = budget_kept_fraction(replace(cfg, density=1e-4), 4096)
    assert density_for_kept(cfg, forced_only / 2, 4096) == 1e-4  # below the forced share: the smallest target


def test_matched_topk_rows_keep_what_the_adaptive_method_kept(tiny, tok):
    from hf_sparse_attn_lab.eval.methods import matched_topk_methods
    from hf_sparse_attn_lab.eval.runner import evaluate_matched_topk

    methods = build_methods(["indexer_topp", "indexer"], [0.25], [0.6])
    rows = evaluate(tiny, tok, methods, [256], ["niah_single_1"], samples=2, batch_size=2, progress=False)
    matched = evaluate_matched_topk(
        tiny, tok, rows, ["niah_single_1"], samples=2, batch_size=2, progress=False
    )
    assert [r["label"] for r in matched] == [
        f"indexer density={matched[0]['target_density']:g} (kept of indexer_topp top_p=0.6)"
    ]
    top_p = next(r for r in rows if r["method"] == "indexer_topp")
    assert matched[0]["density"] == pytest.approx(top_p["density"], abs=0.02)
    with pytest.raises(ValueError, match="at least one adaptive method"):
        matched_topk_methods(macro([r for r in rows if r["method"] == "indexer"]), update_sparse_config(tiny))


def test_eval_cli_refuses_matched_topk_without_an_adaptive_method(capsys):
    from hf_sparse_attn_cli import main

    assert main(["eval", "--methods", "dense,indexer", "--matched-topk"]) == 2
    assert "--matched-topk needs at least one adaptive method" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_cli_set_changes_the_config_of_every_method(tmp_path):
    from transformers import AutoTokenizer

    from hf_sparse_attn.tasks import generate
    from hf_sparse_attn_cli import main
    from hf_sparse_attn_lab.eval.runner import EVAL_SEED
    from hf_sparse_attn_lab.proxy import PROXY_DIR

    base = SparseAttentionConfig.from_pretrained(PROXY_DIR)
    args = ["eval", "--methods", "block_oracle", "--densities", "0.1", "--lengths", "512"]
    args += ["--tasks", "niah_single_1", "--samples", "1", "--device", "cpu"]
    for name, extra in (
        ("shipped", []),
        ("set", ["--set", "dense_tail_blocks=0", "--set", "local_blocks=1"]),
    ):
        assert main(args + ["--out", str(tmp_path / name)] + extra) == 0
    shipped, changed = (json.loads((tmp_path / n / "eval.json").read_text()) for n in ("shipped", "set"))
    assert "config_overrides" not in shipped["meta"]
    assert changed["meta"]["config_overrides"] == {"dense_tail_blocks": 0, "local_blocks": 1}
    tok = AutoTokenizer.from_pretrained(PROXY_DIR)
    prompt = tok.bos_token + generate("niah_single_1", tok, 512, seed=EVAL_SEED).prompt
    n = len(tok(prompt, add_special_tokens=False)["input_ids"])  # what the prefill saw
    for report, cfg in ((shipped, base), (changed, replace(base, dense_tail_blocks=0, local_blocks=1))):
        expected = budget_kept_fraction(replace(cfg, density=0.1, top_k=None, top_p=None), n)
        assert report["rows"][0]["density"] == pytest.approx(expected)
    assert changed["rows"][0]["density"] < shipped["rows"][0]["density"]


@pytest.mark.parametrize(
    "setting, message",
    [
        ("bogus=1", "FIELD one of"),
        ("dense_tail_blocks", "FIELD one of"),
        ("density=0.2", "density cannot be set here"),
        ("min_sparse_len=64", "min_sparse_len cannot be set here"),
    ],
)
def test_eval_cli_set_rejects_unknown_and_per_method_fields(setting, message, capsys):
    from hf_sparse_attn_cli import main

    with pytest.raises(SystemExit):
        main(["eval", "--set", setting])
    assert message in capsys.readouterr().err


def test_eval_cli_set_rejects_architecture_fields(capsys, tmp_path):
    from hf_sparse_attn_cli import main

    args = ["eval", "--methods", "dense", "--lengths", "512", "--samples", "1", "--tasks", "niah_single_1"]
    assert main(args + ["--device", "cpu", "--set", "indexer_dim=32", "--out", str(tmp_path)]) == 2
    assert "change the indexer architecture" in capsys.readouterr().err


def test_macro_reports_intervals_and_the_paired_difference_to_dense(tmp_path):
    """Every (method, length) cell carries a 95% interval, and a method run on the same prompts as
    dense its per-prompt paired difference; the JSON summary and the markdown show both."""
    from hf_sparse_attn_lab.eval.runner import macro_interval, paired_difference

    def row(method, task, correct):
        return {
            "method": method,
            "label": method,
            "length": 512,
            "task": task,
            "density": None,
            "accuracy": sum(correct) / len(correct),
            "samples": len(correct),
            "correct": correct,
        }

    dense = [row("dense", "a", [1, 1, 1, 0] * 25), row("dense", "b", [1, 0] * 50)]
    sparse = [row("indexer", "a", [1, 1, 0, 0] * 25), row("indexer", "b", [1, 0] * 50)]
    summary = macro(dense + sparse)
    diff, half = summary[("indexer", 512)]["vs_dense"]
    assert diff == pytest.approx(-0.125) and 0 < half < 0.1
    assert summary[("dense", 512)]["vs_dense"] is None
    assert summary[("dense", 512)]["ci95"] == pytest.approx(macro_interval([(0.75, 100), (0.5, 100)]))
    assert paired_difference(sparse, [row("dense", "a", [1, 0])]) is None  # other prompts: no pairing
    write_report(dense + sparse, tmp_path, {"model": "tiny"})
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert {s["label"] for s in saved["summary"]} == {"dense", "indexer"}
    assert "-12.5 ± " in (tmp_path / "eval.md").read_text()


def test_sparse_decode_method_turns_it_on_for_its_rows_only():
    from hf_sparse_attn_lab.eval.methods import build_methods

    methods = build_methods(["indexer", "indexer_sparse_decode"], [0.1], [])
    assert [m.label for m in methods] == ["indexer density=0.1", "indexer_sparse_decode density=0.1"]
    assert "sparse_decode" not in methods[0].changes and methods[1].changes["sparse_decode"] is True


def test_eval_runs_the_sparse_path_even_where_dense_would_be_faster(monkeypatch, tiny, tok):
    """eval measures the selection: a budget above ops.dense_faster_above still runs sparse there, and
    the user's setting is restored afterwards."""
    from hf_sparse_attn.runtime import attention

    monkeypatch.setattr(attention, "DENSE_WHEN_FASTER", True)
    rows = evaluate(tiny, tok, build_methods(["indexer"], [0.9], []), [256], ["niah_single_1"], 1, 1, False)
    assert rows[0]["density"] is not None and rows[0]["density"] > 0.9
    assert attention.DENSE_WHEN_FASTER is True


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--samples", "0"], "argument --samples: must be a whole number >= 1, got '0'"),
        (["--batch-size", "0"], "argument --batch-size: must be a whole number >= 1"),
        (["--densities", "0.1,1.5"], "--densities takes shares of the blocks in (0, 1], got [1.5]"),
        (["--top-ps", "0"], "--top-ps takes shares of the blocks in (0, 1], got [0.0]"),
    ],
)
def test_eval_cli_refuses_bad_counts_and_budgets_before_loading_a_model(flags, message, monkeypatch, capsys):
    """--samples 0 raised ZeroDivisionError, --batch-size 0 a bare range() error, --densities 1.5 only
    after the dense rows had run: each now fails at once, naming the flag."""
    import hf_sparse_attn_lab.proxy as proxy
    from hf_sparse_attn_cli import main

    monkeypatch.setattr(proxy, "load_proxy", lambda *a, **k: pytest.fail("loaded a model"))
    try:
        code = main(["eval", *flags])
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    assert code == 2 and message in capsys.readouterr().err


def test_other_indexers_run_in_the_models_place_and_the_own_one_comes_back(tiny, tok, tmp_path, monkeypatch):
    import hf_sparse_attn_lab.eval.runner as runner
    from hf_sparse_attn import save_indexer
    from hf_sparse_attn.runtime.modeling import indexer_state_dict

    own = {n: t.clone() for n, t in indexer_state_dict(tiny).items()}
    with torch.no_grad():
        for ix in indexers(tiny).values():
            for p in ix.parameters():
                p.add_(1.0)
    save_indexer(tiny, tmp_path / "shifted")
    for ix in indexers(tiny).values():
        ix.load_state_dict(
            {n.split(".indexer.")[1]: t for n, t in own.items() if n.startswith(f"layers.{ix.layer_idx}.")}
        )
    seen: dict[str, float] = {}
    real_run = runner._run

    def recording_run(model, tokenizer, method, *args):
        seen[method.label] = float(next(iter(indexers(model).values())).q_proj.weight.detach().sum())
        return real_run(model, tokenizer, method, *args)

    monkeypatch.setattr(runner, "_run", recording_run)
    methods = build_methods(
        ["dense", "indexer"], [0.25], [0.9], other_indexers={"shifted": str(tmp_path / "shifted")}
    )
    assert [m.label for m in methods] == ["dense", "indexer density=0.25", "indexer density=0.25 [shifted]"]
    rows = evaluate(tiny, tok, methods, [256], ["niah_single_1"], samples=1, batch_size=1, progress=False)
    first = next(iter(indexers(tiny).values())).q_proj.weight
    assert seen["indexer density=0.25 [shifted]"] == pytest.approx(
        seen["indexer density=0.25"] + first.numel()
    )
    assert all(torch.equal(t, own[n]) for n, t in indexer_state_dict(tiny).items())  # own indexer back
    assert {("indexer density=0.25 [shifted]", 256)} <= set(macro(rows))
    assert macro(rows)[("indexer density=0.25 [shifted]", 256)]["vs_dense"] is not None  # paired with dense


def test_an_other_indexer_that_does_not_fit_fails_before_any_prompt_runs(tiny, tok, tmp_path, monkeypatch):
    import hf_sparse_attn_lab.eval.runner as runner
    from hf_sparse_attn import save_indexer
    from hf_sparse_attn.runtime.modeling import indexer_state_dict

    fields = {k: v for k, v in tiny.config.to_dict().items() if k != "layer_types"}
    deeper = Qwen3Config(**{**fields, "num_hidden_layers": 3})  # another base model: a layer more
    other = AutoModelForCausalLM.from_config(deeper, attn_implementation="sdpa")
    attach_indexer(other, SparseAttentionConfig(block_size=16, density=0.25))
    save_indexer(other, tmp_path / "deeper")
    own = {n: t.clone() for n, t in indexer_state_dict(tiny).items()}
    monkeypatch.setattr(runner, "_run", lambda *a: pytest.fail("ran a prompt"))
    methods = build_methods(["dense"], [0.25], [0.9], other_indexers={"deeper": str(tmp_path / "deeper")})
    with pytest.raises(ValueError, match="does not fit this model"):
        evaluate(tiny, tok, methods, [256], ["niah_single_1"], samples=1, batch_size=1, progress=False)
    assert all(torch.equal(t, own[n]) for n, t in indexer_state_dict(tiny).items())


@pytest.mark.parametrize(
    "value, message",
    [
        ("nodir", "expected NAME=DIR"),
        ("=somewhere", "expected NAME=DIR"),
        ("a b=somewhere", "expected NAME=DIR"),
        ("x=/no/such/dir", "holds no indexer.safetensors"),
    ],
)
def test_eval_cli_refuses_a_bad_indexer_flag_before_loading_a_model(value, message, monkeypatch, capsys):
    import hf_sparse_attn_lab.proxy as proxy
    from hf_sparse_attn_cli import main

    monkeypatch.setattr(proxy, "load_proxy", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(SystemExit):
        main(["eval", "--indexer", value])
    assert message in capsys.readouterr().err


def test_eval_cli_refuses_one_indexer_name_twice(tmp_path, monkeypatch, capsys):
    import hf_sparse_attn_lab.proxy as proxy
    from hf_sparse_attn_cli import main
    from hf_sparse_attn_lab.proxy import PROXY_DIR

    monkeypatch.setattr(proxy, "load_proxy", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(["eval", "--indexer", f"a={PROXY_DIR}", "--indexer", f"a={PROXY_DIR}"]) == 2
    assert "each NAME once" in capsys.readouterr().err
