"""Prefill time of a checkpoint under transformers' tensor parallelism, dense vs sparse.

``torchrun --nproc_per_node N -m hf_sparse_attn_lab.bench.tensor_parallel CKPT --out DIR``: with N > 1
the model loads with ``tp_plan="auto"`` (each rank holds 1/N of the q / kv heads; the replicated
indexer all-reduces its partial projections so every rank selects the same blocks), with N = 1 on
one device. Each timing is ``model(ids, logits_to_keep=1)``, the same ids on every rank; before any
sparse timing the sparse path at density 1.0 must match the dense logits. Rank 0 writes
``tp<N>.json`` / ``tp<N>.md``. ``save_random_checkpoint`` writes a full-size random checkpoint to load.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from hf_sparse_attn.runtime.attention import kept_density
from hf_sparse_attn.runtime.config import SparseAttentionConfig
from hf_sparse_attn.runtime.modeling import attach_indexer

from . import report
from .shapes import CONFIGS
from .ttft import full_density_error, gate_reference, set_budget


def save_random_checkpoint(out_dir: str, shape: str = "qwen3-8b") -> str:
    """A random bf16 checkpoint with the published shape (what ``from_pretrained`` + TP needs)."""
    config = CONFIGS[shape]()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out_dir)
    return out_dir


def _time(model, ids, repeats: int, device: torch.device) -> float:
    """Best of ``repeats`` (the reference / gate forward before it is the warm-up)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        times = []
        for _ in range(repeats):
            if dist.is_initialized():
                dist.barrier()
            sync()
            t0 = time.perf_counter()
            model(ids, logits_to_keep=1)
            sync()
            times.append(time.perf_counter() - t0)
    return min(times)


def run(
    checkpoint: str,
    seq_lens: list[int],
    densities: list[float],
    block: int,
    repeats: int,
    device_map: str | None = None,
) -> list[dict]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        kwargs = {"tp_plan": "auto"}
    else:
        kwargs = {"device_map": device_map or ("cuda" if torch.cuda.is_available() else "cpu")}
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.bfloat16, attn_implementation="sdpa", **kwargs
    ).eval()
    device = model.model.embed_tokens.weight.device
    torch.manual_seed(0)  # the same indexer weights on every rank
    attach_indexer(model, SparseAttentionConfig(block_size=block, density=1.0, min_sparse_len=1024))
    rows = []
    for S in seq_lens:
        g = torch.Generator().manual_seed(S)
        ids = torch.randint(0, model.config.vocab_size, (1, S), generator=g).to(device)
        model.set_attn_implementation("sdpa")
        ref, _, tolerance = gate_reference(model, ids)
        dense_s = _time(model, ids, repeats, device)
        err = full_density_error(model, ids, ref)
        base = {
            "world_size": world,
            "device_map": kwargs.get("device_map", "tp"),
            "seq_len": S,
            "dense_s": dense_s,
            "gate_rel_err_density_1": err,
        }
        rows.append({**base, "method": "sdpa", "density": 1.0, "seconds": dense_s, "speedup": 1.0})
        if err >= tolerance:
            rows.append({**base, "method": "sparse_prefill", "note": f"FAILED gate (rel err {err:.3g})"})
            continue
        for density in densities:
            set_budget(model, density=density)
            sparse_s = _time(model, ids, repeats, device)
            rows.append(
                {
                    **base,
                    "method": "sparse_prefill",
                    "density": kept_density(model),
                    "seconds": sparse_s,
                    "speedup": dense_s / sparse_s,
                }
            )
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--seq-lens", default="131072")
    parser.add_argument("--densities", default="0.1,0.05")
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device-map", default=None, help="one process: e.g. auto (layers split over GPUs)")
    parser.add_argument("--out", default="results/tensor_parallel")
    args = parser.parse_args(argv)
    rows = run(
        args.checkpoint,
        [int(x) for x in args.seq_lens.split(",")],
        [float(x) for x in args.densities.split(",")],
        args.block_size,
        args.repeats,
        args.device_map,
    )
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        for row in rows:
            print(row, flush=True)
        world = rows[0]["world_size"]
        name = f"tp{world}" if args.device_map in (None, "cuda") else f"device_map_{args.device_map}"
        cols = [
            "world_size",
            "device_map",
            "seq_len",
            "method",
            "density",
            "seconds",
            "speedup",
            "gate_rel_err_density_1",
        ]
        report.save(name, args.out, rows, cols, f"Prefill over {world} process(es), {rows[0]['device_map']}")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
