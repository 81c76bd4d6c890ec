"""`hf-sparse-attn bench distill`: wall time and peak memory of one distillation step, full-size model.

Random bf16 weights (cost does not depend on their values), indexers in float32 under bf16 autocast
(what ``IndexerDistillationTrainer`` does with ``bf16=True``), AdamW on the indexer parameters.
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import AutoModelForCausalLM

from hf_sparse_attn.distill import distillation_loss
from hf_sparse_attn.runtime.config import SparseAttentionConfig
from hf_sparse_attn.runtime.modeling import attach_indexer, indexers

from .shapes import CONFIGS


def run(model_name: str, seq_lens: list[int], steps: int = 3, block: int = 64) -> list[dict]:
    config = CONFIGS[model_name]()
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    attach_indexer(model, SparseAttentionConfig(block_size=block, density=0.1))
    params = []
    for indexer in indexers(model).values():
        indexer.float()
        params += list(indexer.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    rows = []
    for S in seq_lens:
        ids = torch.randint(0, config.vocab_size, (1, S), device="cuda")
        with torch.no_grad():
            model(ids, logits_to_keep=1, use_cache=False)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(ids, logits_to_keep=1, use_cache=False)
            torch.cuda.synchronize()
            forward_s = time.perf_counter() - t0
        torch.cuda.reset_peak_memory_stats()
        times, losses = [], []
        for _ in range(steps + 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, terms = distillation_loss(model, ids)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
        step_s = statistics.median(times[1:])
        rows.append(
            {
                "model": model_name,
                "seq_len": S,
                "layers_distilled": len(terms),
                "step_s": step_s,
                "dense_forward_s": forward_s,
                "steps_300_min": 300 * step_s / 60,
                "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
                "loss_first": losses[0],
                "loss_last": losses[-1],
            }
        )
        print(rows[-1], flush=True)
    return rows
