"""The README's main command, on a short sequence so the CPU suite stays fast."""

from __future__ import annotations

import json

from hf_sparse_attn.cli import main


def test_demo_prints_density_and_full_density_error(capsys):
    assert main(["demo", "--seq-len", "512", "--block-size", "32", "--density", "0.25", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["max_abs_diff_vs_dense_at_full_density"] < 1e-4
    assert 0.25 <= result["mean_kept_fraction"] < 0.5
    assert len(result["per_layer_kept_fraction"]) == 4


def test_demo_reports_bad_config_cleanly(capsys):
    assert main(["demo", "--seq-len", "64", "--block-size", "48"]) == 2
    assert "block_size must be a power of two" in capsys.readouterr().err
