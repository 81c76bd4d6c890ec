"""One rank of the tensor-parallel simulation: each rank attends with its half of the heads."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from conftest import build, qwen3_config

from hf_sparse_attn import SparseAttentionConfig, attach_indexer
from hf_sparse_attn.runtime.attention import sparse_prefill_attention


def main(selector: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = attach_indexer(
        build(qwen3_config(), attn="sparse_prefill"),
        SparseAttentionConfig(
            block_size=16, density=0.25, local_blocks=1, min_sparse_len=1, selector=selector
        ),
    )
    module = model.model.layers[1].self_attn
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 320, 16, generator=g) for h in (8, 2, 2))
    with torch.no_grad():
        full, _ = sparse_prefill_attention(module, q, k, v, None)
        full_blocks = module.indexer.last_selection
        hq, hk = 8 // world, 2 // world
        local, _ = sparse_prefill_attention(
            module,
            q[:, rank * hq : (rank + 1) * hq],
            k[:, rank * hk : (rank + 1) * hk],
            v[:, rank * hk : (rank + 1) * hk],
            None,
        )
        local_blocks = module.indexer.last_selection
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local.contiguous())
    lists = [torch.empty_like(local_blocks.kv_indices) for _ in range(world)]
    dist.all_gather(lists, local_blocks.kv_indices.contiguous())
    if rank == 0:
        result = {
            "max_diff": float((torch.cat(parts, dim=2) - full).abs().max()),
            "same_lists_on_all_ranks": all(torch.equal(x, lists[0]) for x in lists),
            "same_as_unsharded": torch.equal(local_blocks.kv_num_blocks, full_blocks.kv_num_blocks)
            and torch.equal(lists[0], full_blocks.kv_indices),
        }
        print("RESULT " + json.dumps(result), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
