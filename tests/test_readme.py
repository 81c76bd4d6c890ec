"""The README's code runs as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_distill_snippet_runs(tmp_path):
    block = README.read_text().split("## Distill an indexer")[1].split("```python")[1].split("```")[0]
    proc = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "checkpoint-4" / "checkpoint_complete").is_file()


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 200
