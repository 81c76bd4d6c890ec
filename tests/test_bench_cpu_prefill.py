"""`hf-sparse-attn bench cpu-prefill`: gated by the reference check, rows from interleaved runs."""

from __future__ import annotations

import json

import pytest

from hf_sparse_attn.demo import PROXY_DIR
from hf_sparse_attn_lab.bench import cpu_prefill


@pytest.mark.slow
def test_cpu_prefill_bench_checks_then_times_both_paths(tmp_path, capsys):
    from hf_sparse_attn_cli import main

    args = ["bench", "cpu-prefill", "--seq-lens", "2048", "--rounds", "2", "--out", str(tmp_path)]
    assert main(args) == 0
    (row,) = json.loads((tmp_path / "cpu_prefill.json").read_text())["rows"]
    assert (
        row["seq_len"] == 2048 and row["check_len"] == 2048 and row["rel_err"] < cpu_prefill.CHECK_TOLERANCE
    )
    assert len(row["sparse_runs"]) == len(row["dense_runs"]) == 2
    assert row["sparse_s"] == min(row["sparse_runs"]) and row["dense_s"] == min(row["dense_runs"])
    assert row["speedup"] == pytest.approx(row["dense_s"] / row["sparse_s"], rel=1e-2)
    assert 0 < row["kept_blocks"] < 1
    assert "relative error" in capsys.readouterr().out


def test_cpu_prefill_bench_refuses_lengths_that_would_run_dense():
    with pytest.raises(ValueError, match="min_sparse_len"):
        cpu_prefill.run(PROXY_DIR, [1024], rounds=1)
    with pytest.raises(ValueError, match="rounds"):
        cpu_prefill.run(PROXY_DIR, [4096], rounds=0)


def test_cpu_prefill_bench_does_not_time_a_wrong_path(monkeypatch):
    monkeypatch.setattr(cpu_prefill, "check", lambda model, ids: 0.5)
    with pytest.raises(RuntimeError, match="not timing"):
        cpu_prefill.run(PROXY_DIR, [2048], rounds=1, progress=lambda _: None)
