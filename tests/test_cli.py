"""The README's main command on the bundled proxy (one short prompt, so the CPU suite stays fast)."""

from __future__ import annotations

import pytest

from hf_sparse_attn.demo import run_demo
from hf_sparse_attn_cli import main


def test_demo_answers_through_remote_code_pipeline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run_demo(seq_len=2048, tasks=("vt",), max_new_tokens=16)
    row = result["rows"][0]
    assert row["dense"]["correct"], row
    assert [a.replace(" ", "") for a in row["answers_as_generated"]] == row["answers"]  # shown as generated
    assert row["dense"]["kept_density"] == 1.0
    assert 0.1 < row["sparse"]["kept_density"] < 0.35
    assert result["sparse_config"]["selector"] == "indexer"
    assert result["model_class"].endswith("modeling_sparse_prefill.SparseQwen3ForCausalLM")


def test_demo_rejects_prompts_too_short_to_go_sparse(capsys):
    assert main(["demo", "--seq-len", "512"]) == 2
    assert "below the model's min_sparse_len (2048)" in capsys.readouterr().err


def test_demo_names_what_a_model_dir_lacks(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "missing config.json, indexer.safetensors, modeling_sparse_prefill.py" in err


def test_bench_decode_names_the_layer_range_it_can_keep():
    from hf_sparse_attn_lab.bench.decode import static_compiled_rows

    for bad in (0, 37):
        with pytest.raises(ValueError, match=r"--num-layers must be in 1\.\.36"):
            static_compiled_rows([(8, 131072)], 0.1, num_layers=bad)


def test_distill_help_names_the_cli_command(capsys):
    with pytest.raises(SystemExit):
        main(["distill", "qwen3", "--help"])
    assert capsys.readouterr().out.startswith("usage: hf-sparse-attn distill qwen3")


def test_missing_matplotlib_is_said_not_skipped_silently(monkeypatch, capsys):
    import sys

    from hf_sparse_attn_lab.bench.report import have_matplotlib

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert not have_matplotlib()
    assert "matplotlib is not installed: no PNG plot" in capsys.readouterr().out
