"""Distillation under torch.distributed on the CPU (gloo): DDP over the indexer parameters only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _run(cmd: list[str], cwd: Path) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr[-8000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.slow
def test_two_rank_ddp_matches_single_process_at_same_global_batch(tmp_path):
    single = _run([sys.executable, str(HERE / "ddp_worker.py"), str(tmp_path / "one"), "4"], tmp_path)
    ddp = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(HERE / "ddp_worker.py"),
            str(tmp_path / "two"),
            "2",
        ],
        tmp_path,
    )
    assert single["world"] == 1 and ddp["world"] == 2
    for a, b in zip(single["losses"], ddp["losses"], strict=True):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (single["losses"], ddp["losses"])
    for layer, w in single["weights"].items():
        assert max(abs(x - y) for x, y in zip(w, ddp["weights"][layer], strict=True)) < 1e-5
    checkpoints = sorted(p.name for p in (tmp_path / "two").iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]
    assert {"indexer.safetensors", "sparse_config.json"} <= {
        p.name for p in (tmp_path / "two" / "checkpoint-4").iterdir()
    }
