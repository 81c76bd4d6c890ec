"""`hf-sparse-attn transformers-tests`: transformers' common model tests on Qwen3 through sparse_prefill.

transformers does not install its tests, so the installed version's source distribution is fetched
from the package index (``pip download``), its ``tests/test_modeling_common.py`` and
``test_configuration_common.py`` are extracted into a work folder with empty stand-ins for the two
mixins the sdist leaves out (generation, export), our harness is copied beside them, and pytest runs
it. Nothing of transformers is kept in this repository.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HARNESS = Path(__file__).with_name("qwen3_sparse_harness.py")
COMMON = ("tests/test_modeling_common.py", "tests/test_configuration_common.py")
STUBS = {
    "tests/__init__.py": "",
    "tests/exporters/__init__.py": "",
    "tests/exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "tests/generation/__init__.py": "",
    "tests/generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
}


def prepare(work: Path) -> Path:
    """Fetch the installed transformers' sdist and lay out the tests folder; returns the harness path."""
    import transformers

    version = transformers.__version__
    download = work / "sdist"
    download.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "-q",
        "-d",
        str(download),
    ]
    subprocess.run([*cmd, f"transformers=={version}"], check=True)
    archive = next(download.glob(f"transformers-{version}.tar.gz"))
    with tarfile.open(archive) as tar:
        for rel in COMMON:
            member = tar.getmember(f"transformers-{version}/{rel}")
            target = work / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    for rel, text in STUBS.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    harness = work / "tests" / "test_qwen3_sparse.py"
    shutil.copyfile(HARNESS, harness)
    return harness


def run(work: str | None = None, pytest_args: list[str] | None = None) -> int:
    """Prepare (in ``work`` or a temporary folder) and run the harness; returns pytest's exit code."""
    folder = Path(work) if work else Path(tempfile.mkdtemp(prefix="hf-sparse-attn-transformers-tests-"))
    harness = prepare(folder)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-s",
        "-p",
        "no:cacheprovider",
        str(harness.relative_to(folder)),
    ]
    return subprocess.run([*cmd, *(pytest_args or [])], cwd=folder).returncode
