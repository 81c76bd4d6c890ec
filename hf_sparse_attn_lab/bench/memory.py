"""`hf-sparse-attn bench memory`: peak GPU memory of one prefill of the demo model, dense vs sparse.

At fixed density the sparse path's peak should grow about linearly with length (no S x S buffer).
"""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM

from hf_sparse_attn.demo import tiny_qwen3_config
from hf_sparse_attn.runtime.config import SparseAttentionConfig
from hf_sparse_attn.runtime.modeling import attach_indexer


@torch.no_grad()
def run(seq_lens: list[int], density: float = 0.1, block: int = 64) -> list[dict]:
    config = tiny_qwen3_config()
    dense = AutoModelForCausalLM.from_config(
        copy.deepcopy(config), attn_implementation="sdpa", dtype=torch.bfloat16
    )
    dense = dense.cuda().eval()
    sparse = attach_indexer(
        copy.deepcopy(dense), SparseAttentionConfig(block_size=block, density=density, min_sparse_len=1)
    )
    rows = []
    for S in seq_lens:
        ids = torch.randint(0, config.vocab_size, (1, S), device="cuda")
        for name, model in (("sdpa", dense), ("sparse_prefill", sparse)):
            model(ids, logits_to_keep=1)
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            model(ids, logits_to_keep=1)
            torch.cuda.synchronize()
            rows.append(
                {
                    "method": name,
                    "seq_len": S,
                    "density": density if name != "sdpa" else 1.0,
                    "peak_extra_mib": (torch.cuda.max_memory_allocated() - base) / 2**20,
                    "s_by_s_bf16_mib": S * S * 2 / 2**20,
                }
            )
    return rows
