"""Dense forwards of unpadded prompts with every indexer's observer set (the studies' capture loop).

An indexer with an ``observer`` hands its layer's query / key states to it and runs dense
(``runtime.attention``); the retrieval-head calibration, the K-cache agreement and the selection
recall all read a model's attention this way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from hf_sparse_attn.runtime.modeling import indexers


@torch.no_grad()
def observe_dense_forwards(
    model: torch.nn.Module, prompts: list[torch.Tensor], observe: Callable[..., None], desc: str
) -> None:
    """Run each of ``prompts`` ([1, S] token ids) through ``model`` with ``observe(module, query, key,
    attention_mask)`` as every indexer's observer; the observers are cleared afterwards, also on error."""
    found = indexers(model)
    if not found:
        raise ValueError("model has no indexers: load one with hf_sparse_attn.load_indexer(model, path)")
    for ids in prompts:
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise ValueError(
                f"prompts must be [1, S] token-id tensors (one unpadded prompt each), got {tuple(ids.shape)}"
            )
    for ix in found.values():
        ix.observer = observe
    try:
        device = next(model.parameters()).device
        for ids in tqdm(prompts, desc=desc, disable=len(prompts) < 4):
            model(input_ids=ids.to(device), logits_to_keep=1)
    finally:
        for ix in found.values():
            ix.observer = None
