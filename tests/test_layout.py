"""The tree's boundaries: the library never imports the lab; what ships to the Hub imports only itself
and the ops; ops import nothing above them; no generated file is committed."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved against its package)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def files(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def test_library_never_imports_the_lab():
    offenders = [
        str(p.relative_to(ROOT))
        for p in files("hf_sparse_attn") + [ROOT / "hf_sparse_attn_cli.py"]
        if any(m.startswith("hf_sparse_attn_lab") for m in imported_modules(p))
    ]
    assert not offenders


def test_lab_uses_the_library_and_its_own_modules_only():
    for p in files("hf_sparse_attn_lab"):
        ours = {m for m in imported_modules(p) if m.startswith("hf_sparse_attn")}
        assert all(
            m.startswith(("hf_sparse_attn.", "hf_sparse_attn_lab", "hf_sparse_attn_cli")) for m in ours
        ), p


def test_hub_runtime_imports_only_itself_and_ops():
    for p in files("hf_sparse_attn/runtime"):
        ours = {m for m in imported_modules(p) if m.startswith("hf_sparse_attn")}
        allowed = ("hf_sparse_attn.runtime", "hf_sparse_attn.ops")
        assert all(
            m.startswith(allowed) or m == "hf_sparse_attn" or m == "hf_sparse_attn.ops" for m in ours
        ), (
            p,
            sorted(ours),
        )


def test_ops_import_nothing_above_them():
    for p in files("hf_sparse_attn/ops"):
        ours = {m for m in imported_modules(p) if m.startswith("hf_sparse_attn")}
        assert all(m.startswith("hf_sparse_attn.ops") for m in ours), (p, sorted(ours))


def test_no_generated_file_is_committed():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:  # not a git checkout (an sdist)
        return
    assert not [
        f for f in tracked if f.endswith("modeling_sparse_prefill.py") or f.startswith("hub_kernels/build/")
    ]


def test_every_results_folder_says_what_it_holds():
    results = Path(__file__).resolve().parent.parent / "results"
    folders = [p for p in results.iterdir() if p.is_dir()]
    assert folders and [p.name for p in folders if not (p / "README.md").is_file()] == []
    index = (results / "README.md").read_text()
    assert [p.name for p in folders if f"[`{p.name}/`]" not in index] == []
