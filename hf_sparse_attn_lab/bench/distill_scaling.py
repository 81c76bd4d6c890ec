"""Distillation throughput over N GPUs with the Trainer (DDP over the indexer parameters only).

``torchrun --nproc_per_node N -m hf_sparse_attn_lab.bench.distill_scaling --out DIR``: a Qwen3-8B-shape
model with random bf16 weights (throughput does not depend on their values), per-device batch 1 of
``--seq-len`` tokens, ``IndexerDistillationTrainer`` with ``bf16=True``. Step times come from a
callback (the first ``--warmup`` steps are dropped); rank 0 writes ``distill_scaling<N>.json`` / ``.md``
with tokens per second over all ranks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, TrainerCallback, TrainingArguments

from hf_sparse_attn.distill import IndexerDistillationTrainer, SyntheticRetrievalDataset
from hf_sparse_attn.runtime.config import SparseAttentionConfig

from . import report
from .shapes import CONFIGS


class _StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default="results/distill_scaling")
    args = parser.parse_args(argv)
    config = CONFIGS["qwen3-8b"]()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    timer = _StepTimer()
    with tempfile.TemporaryDirectory() as out_dir:
        training = TrainingArguments(
            output_dir=out_dir,
            max_steps=args.steps,
            per_device_train_batch_size=1,
            learning_rate=1e-3,
            bf16=True,
            logging_steps=args.steps,
            save_strategy="no",
            report_to="none",
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = IndexerDistillationTrainer(
            model=model,
            args=training,
            train_dataset=SyntheticRetrievalDataset(config.vocab_size, args.seq_len, 64),
            sparse_config=SparseAttentionConfig(block_size=64, density=0.1),
            callbacks=[timer],
        )
        trainer.train()
    if training.process_index == 0:
        world = training.world_size
        step_s = statistics.median(timer.times[args.warmup :])
        row = {
            "world_size": world,
            "seq_len": args.seq_len,
            "per_device_batch": 1,
            "step_s": step_s,
            "tokens_per_s": world * args.seq_len / step_s,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        }
        print(row, flush=True)
        cols = ["world_size", "seq_len", "per_device_batch", "step_s", "tokens_per_s", "peak_mem_gib"]
        report.save(f"distill_scaling{world}", args.out, [row], cols, f"Distillation over {world} GPU(s)")


if __name__ == "__main__":
    main()
