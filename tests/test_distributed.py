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


def _two_ranks(script: str, *args: str) -> list[str]:
    """torchrun command for 2 CPU ranks (--standalone: a free rendezvous port)."""
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return [*run, str(HERE / script), *args]


@pytest.mark.slow
def test_two_rank_ddp_matches_single_process_at_same_global_batch(tmp_path):
    single = _run([sys.executable, str(HERE / "ddp_worker.py"), str(tmp_path / "one"), "4"], tmp_path)
    ddp = _run(_two_ranks("ddp_worker.py", str(tmp_path / "two"), "2"), tmp_path)
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


@pytest.mark.slow
@pytest.mark.parametrize("selector", ["indexer", "oracle", "patterns"])
def test_tensor_parallel_heads_get_the_unsharded_block_list_and_output(tmp_path, selector):
    """2 ranks, each with half the q / kv heads (what tp_plan="auto" hands the attention)."""
    result = _run(_two_ranks("tp_worker.py", selector), tmp_path)
    assert result["same_lists_on_all_ranks"] and result["same_as_unsharded"], result
    assert result["max_diff"] < 1e-5, result


def test_sharded_heads_without_torch_distributed_raise():
    import torch
    from conftest import build, qwen3_config

    from hf_sparse_attn import SparseAttentionConfig, attach_indexer
    from hf_sparse_attn.runtime.attention import sparse_prefill_attention

    model = attach_indexer(
        build(qwen3_config(), attn="sparse_prefill"), SparseAttentionConfig(min_sparse_len=1)
    )
    q, k = torch.randn(1, 4, 64, 16), torch.randn(1, 1, 64, 16)
    with pytest.raises(ValueError, match="torch.distributed is not initialized"):
        sparse_prefill_attention(model.model.layers[0].self_attn, q, k, k, None)


@pytest.mark.slow
def test_tp_plan_auto_sparse_prefill_and_decode_match_one_process(tmp_path):
    """The real path: transformers shards the heads of a saved checkpoint over 2 gloo ranks."""
    from conftest import build, qwen3_config

    build(qwen3_config()).save_pretrained(tmp_path / "ckpt")
    single = _run([sys.executable, str(HERE / "tp_plan_worker.py"), str(tmp_path / "ckpt")], tmp_path)
    tp = _run(_two_ranks("tp_plan_worker.py", str(tmp_path / "ckpt")), tmp_path)
    assert tp["world"] == 2 and single["world"] == 1
    assert tp["prefill_blocks"] == single["prefill_blocks"]
    assert tp["decode_blocks"] == single["decode_blocks"]
    assert max(abs(a - b) for a, b in zip(tp["logits"], single["logits"], strict=True)) < 1e-4
