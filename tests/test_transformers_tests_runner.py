"""The transformers-tests runner lays out transformers' common tests (from its sdist) beside our harness."""

from __future__ import annotations

import io
import subprocess
import tarfile

import transformers

from hf_sparse_attn_lab.transformers_tests import runner


def test_prepare_extracts_the_common_tests_and_stubs(tmp_path, monkeypatch):
    version = transformers.__version__

    def fake_pip(cmd, check):  # stands in for `pip download`: an sdist holding the two common files
        assert f"transformers=={version}" in cmd and "--no-binary" in cmd
        folder = cmd[cmd.index("-d") + 1]
        with tarfile.open(f"{folder}/transformers-{version}.tar.gz", "w:gz") as tar:
            for rel in runner.COMMON:
                data = f"# {rel}\n".encode()
                info = tarfile.TarInfo(f"transformers-{version}/{rel}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(runner.subprocess, "run", fake_pip)
    harness = runner.prepare(tmp_path)
    assert (
        harness == tmp_path / "tests" / "test_qwen3_sparse.py"
        and harness.read_text() == runner.HARNESS.read_text()
    )
    assert (tmp_path / "tests" / "test_modeling_common.py").read_text() == "# tests/test_modeling_common.py\n"
    assert "GenerationTesterMixin" in (tmp_path / "tests" / "generation" / "test_utils.py").read_text()
    assert (tmp_path / "tests" / "exporters" / "__init__.py").is_file()
