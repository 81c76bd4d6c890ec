"""The distillation recipes' CPU smoke mode (what CI runs): loss falls, saved indexer reloads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "family, extra, heads",
    [
        ("qwen3", [], 2),  # the default: one selection per group of kv heads, two groups
        pytest.param("qwen3_5", [], 2, marks=pytest.mark.slow),
        pytest.param(
            "qwen3", ["--kl-blocks", "candidates", "--indexer-heads", "1"], 1, marks=pytest.mark.slow
        ),
    ],
)
def test_smoke_recipe(tmp_path, family, extra, heads):
    out = tmp_path / family
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / f"distill_{family}.py"),
            "--smoke",
            "--output-dir",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "distill_summary.json").read_text())
    assert summary["steps"] == 24 and summary["last_loss"] < summary["first_loss"]
    assert summary["reload"].endswith("identical")
    assert (out / "indexer.safetensors").stat().st_size < 100_000
    assert json.loads((out / "sparse_config.json").read_text())["indexer_heads"] == heads


def test_cli_distill_forwards_to_recipe(tmp_path):
    from hf_sparse_attn_cli import main

    assert main(["distill", "qwen3", "--smoke", "--output-dir", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "indexer.safetensors").exists()


def test_recipe_requires_training_data():
    from hf_sparse_attn.recipe import build_parser

    args = build_parser("qwen3").parse_args(["--model", "x"])
    from hf_sparse_attn.recipe import _dataset

    with pytest.raises(ValueError, match="choose training data"):
        _dataset(args, None, None)


@pytest.mark.slow
def test_train_proxy_recipe_passes_sparse_options_and_task_weights(tmp_path):
    script = str(ROOT / "recipes" / "train_proxy.py")
    out = tmp_path / "proxy"
    args = ["--smoke", "--output-dir", str(out), "--sparse-fraction", "1", "--sparse-random-share", "0.5"]
    args += ["--sparse-block-size", "32", "--sparse-dense-tail-blocks", "0"]
    proc = subprocess.run(
        [sys.executable, script, *args, "--task-weight", "niah_multivalue=2.5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((out / "training_summary.json").read_text())["config"]
    assert config["sparse_random_share"] == 0.5 and config["task_weights"]["niah_multivalue"] == 2.5
    assert config["sparse_block_size"] == 32 and config["sparse_dense_tail_blocks"] == 0
    assert config["task_weights"]["vt"] == 1.5  # the others keep their defaults
    bad = subprocess.run(
        [sys.executable, script, "--smoke", "--task-weight", "vt"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "TASK=W with W a number" in bad.stderr


def test_a_run_shorter_than_the_logging_interval_still_logs_a_loss():
    from hf_sparse_attn.recipe import build_parser, training_arguments

    args = build_parser("qwen3").parse_args(["--model", "x", "--max-steps", "2", "--logging-steps", "25"])
    assert training_arguments(args).logging_steps == 2  # was 25: the summary's losses[0] raised


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "/no/such/model", "--tasks"], "--model /no/such/model: no such directory"),
        (["--model", "./missing", "--tasks"], "--model ./missing: no such directory"),
        (["--tasks", "--max-steps", "0"], "--max-steps must be >= 1, got 0"),
        (["--tasks", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ],
)
def test_recipe_refuses_a_missing_model_dir_and_zero_counts_before_loading(argv, message, capsys):
    """A missing local --model used to reach the Hub client ("Repo id must use alphanumeric chars"),
    and a zero count reached the Trainer."""
    from hf_sparse_attn.recipe import main

    with pytest.raises(SystemExit) as exit:
        main("qwen3", argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err
