"""Worker for tests/test_distributed.py: distill the planted model for a few steps, print the result as JSON.

Run as ``torchrun --nproc_per_node N ddp_worker.py OUT PER_DEVICE_BATCH`` or plainly with N = 1.
"""

from __future__ import annotations

import json
import sys

import torch
from test_distill import PLANTED, planted_model
from transformers import TrainingArguments

import hf_sparse_attn as hsa
from hf_sparse_attn.distill import IndexerDistillationTrainer, SyntheticRetrievalDataset

out_dir, batch = sys.argv[1], int(sys.argv[2])
args = TrainingArguments(
    output_dir=out_dir,
    max_steps=4,
    per_device_train_batch_size=batch,
    learning_rate=2e-2,
    logging_steps=1,
    save_steps=2,
    report_to="none",
    use_cpu=True,
    seed=0,
    dataloader_num_workers=0,
)
trainer = IndexerDistillationTrainer(
    model=planted_model(),
    args=args,
    train_dataset=SyntheticRetrievalDataset(1024, 128, 16, spans=3),
    sparse_config=PLANTED,
)
trainer.train()
if args.process_index == 0:
    weights = {
        str(i): ix.q_proj.weight.detach().flatten()[:64].tolist()
        for i, ix in hsa.indexers(trainer.model).items()
    }
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    print(
        "RESULT " + json.dumps({"world": args.world_size, "losses": losses, "weights": weights}), flush=True
    )
if (
    torch.distributed.is_initialized()
):  # leave together: a rank exiting mid-teardown aborts its peer's gloo pair
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
