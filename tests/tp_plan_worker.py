"""One rank of ``from_pretrained(ckpt, tp_plan="auto")`` + sparse prefill + sparse decode; with no
torchrun it runs the same model on one process. Prints last-position logits and layer 1's block list."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from hf_sparse_attn import SparseAttentionConfig, attach_indexer


def main(checkpoint: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    kwargs = {"tp_plan": "auto"} if world > 1 else {}
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, **kwargs).eval()
    torch.manual_seed(0)
    cfg = SparseAttentionConfig(block_size=16, density=0.3, min_sparse_len=64, sparse_decode=True)
    attach_indexer(model, cfg)
    ids = torch.randint(0, 128, (1, 200), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    indexer = model.model.layers[1].self_attn.indexer
    if not dist.is_initialized() or dist.get_rank() == 0:
        result = {
            "world": world,
            "logits": torch.stack(out.logits)[:, 0, :16].flatten().tolist(),
            "prefill_blocks": indexer.last_selection.kv_indices[0, 0, -1].tolist(),
            "decode_blocks": sorted(indexer.last_decode_selection[1][0, 0].tolist()),
        }
        print("RESULT " + json.dumps(result), flush=True)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
