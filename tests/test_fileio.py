"""Crash-safe writes: old or new content, never half; no temp files left; ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from hf_sparse_attn.runtime.fileio import atomic_write, atomic_write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_new_file_gets_the_permissions_of_a_plain_write(tmp_path, umask_022):
    atomic_write_text(tmp_path / "new.json", "{}")
    (tmp_path / "plain.json").write_text("{}")
    mode = stat.S_IMODE((tmp_path / "new.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == 0o644  # was 0o600


def test_a_replaced_file_keeps_its_own_permissions(tmp_path, umask_022):
    path = tmp_path / "kept.md"
    path.write_text("old")
    path.chmod(0o640)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")

    def half_then_fail(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_saved_indexer_gets_the_permissions_of_a_plain_write(tmp_path, umask_022):
    """save_indexer renames temp files too: its pair was owner-only (0o600) after the atomic_write fix."""
    from conftest import build, qwen3_config

    from hf_sparse_attn import SparseAttentionConfig, attach_indexer, save_indexer

    model = attach_indexer(build(qwen3_config()), SparseAttentionConfig(block_size=16, top_k=3))
    save_indexer(model, tmp_path)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"indexer.safetensors": 0o644, "sparse_config.json": 0o644}
