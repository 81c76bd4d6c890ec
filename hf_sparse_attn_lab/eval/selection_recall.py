"""Dense attention mass inside the indexer's blocks, against the block oracle's at the same budget.

The eval's accuracy rows say whether a selection loses answers; this says where. The block oracle
keeps the blocks of most dense mass, so its recall bounds every selection at the budget. The
indexer's share of it (indexer recall / oracle recall) falling with the prompt length means an
indexer distilled at one length ranks blocks worse at longer ones; an oracle recall falling with
length means the budget itself keeps less of the attention.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from hf_sparse_attn.distill import block_recall
from hf_sparse_attn.runtime.oracle import oracle_block_scores
from hf_sparse_attn.runtime.selection import select_blocks

from ..observed import observe_dense_forwards

RECALLS = ("indexer", "oracle", "indexer_question", "oracle_question")


@torch.no_grad()
def selection_recall(model: torch.nn.Module, prompts: list[torch.Tensor]) -> dict[int, dict[str, float]]:
    """{layer index: {recall name: recall}} (``RECALLS``): the dense attention mass inside each
    layer's selection under the model's sparse config, averaged over the query blocks of each of
    ``prompts`` ([1, S] token ids, one dense forward each), and in the last query block alone (the
    question's rows: where a task reads its needles); then averaged over the prompts."""
    sums: dict[int, dict[str, float]] = defaultdict(lambda: dict.fromkeys(RECALLS, 0.0))

    def observe(module, query, key, attention_mask):
        indexer = module.indexer
        cfg = indexer.config
        lens = torch.full((query.shape[0],), query.shape[2], device=query.device)
        mass = oracle_block_scores(query, key, cfg.block_size, module.scaling, cfg.indexer_heads, lens)
        for name, scores in (("indexer", indexer.block_scores(query, key, lens)), ("oracle", mass)):
            blocks = select_blocks(scores, cfg, lens)
            sums[indexer.layer_idx][name] += float(block_recall(mass, blocks))
            last = (mass[:, :, -1] * blocks.to_dense()[:, :, -1]).sum(-1).mean()
            sums[indexer.layer_idx][f"{name}_question"] += float(last)

    observe_dense_forwards(model, prompts, observe, "selection recall")
    return {layer: {k: v / len(prompts) for k, v in s.items()} for layer, s in sorted(sums.items())}
