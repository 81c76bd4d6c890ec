"""Find retrieval heads (RTPurbo): the kv groups whose queries read far-away context.

Scoring procedure, on calibration prompts run dense: for every indexed layer and kv head, take the
last ``probe_queries`` queries of each prompt, their causal softmax attention averaged over the
group's query heads, and sum the probability on *long-range* keys: keys outside the sink blocks and
outside the query's own and ``local_blocks`` previous blocks (exactly what a sink + local pattern
drops). The score is the mean over probe queries and prompts, in [0, 1]. The ``count`` highest
(layer, kv head) pairs become ``SparseAttentionConfig.retrieval_heads``: those groups attend to
every causal block, the rest follow the selector.
"""

from __future__ import annotations

import torch

from hf_sparse_attn.ops.probe_mass.naive import probe_probs
from hf_sparse_attn.runtime.modeling import indexers, sparse_config_of

from .observed import observe_dense_forwards


@torch.no_grad()
def long_range_mass(
    model: torch.nn.Module, prompts: list[torch.Tensor], probe_queries: int = 64
) -> torch.Tensor:
    """Mean long-range attention mass [num_layers, num_kv_heads] (0 rows for layers without an indexer)."""
    cfg = sparse_config_of(model)
    if model.config._attn_implementation != "sparse_prefill":
        raise ValueError(
            "retrieval-head calibration reads the attention through the sparse_prefill path: load the model "
            "with attn_implementation='sparse_prefill' (or model.set_attn_implementation('sparse_prefill'))"
        )
    layers = model.config.num_hidden_layers
    kv_heads = model.config.num_key_value_heads
    total = torch.zeros(layers, kv_heads, dtype=torch.float64)

    def observe(module, query, key, attention_mask):
        S = query.shape[2]
        P = min(probe_queries, S)
        qpos = torch.arange(S - P, S, device=query.device)
        kpos = torch.arange(S, device=query.device)
        bs = cfg.block_size
        near = kpos[None, :] // bs > qpos[:, None] // bs - 1 - cfg.local_blocks
        far = (kpos[None, :] >= cfg.sink_blocks * bs) & ~near
        for b in range(query.shape[0]):
            probs = probe_probs(query[b], key[b], qpos, module.scaling, groups=key.shape[1])
            total[module.layer_idx] += (probs * far).sum(-1).mean(-1).double().cpu()

    observe_dense_forwards(model, prompts, observe, "retrieval-head calibration")
    return (total / max(1, len(prompts))).float()


def find_retrieval_heads(
    model: torch.nn.Module, prompts: list[torch.Tensor], count: int, probe_queries: int = 64
) -> tuple[list[list[int]], torch.Tensor]:
    """(the ``count`` [layer, kv_head] pairs with the most long-range mass, the mass table)."""
    mass = long_range_mass(model, prompts, probe_queries)
    candidates = [(layer, head) for layer in sorted(indexers(model)) for head in range(mass.shape[1])]
    if not 0 <= count <= len(candidates):
        raise ValueError(f"count must be in [0, {len(candidates)}] (indexed layers x kv heads), got {count}")
    ranked = sorted(candidates, key=lambda lh: -float(mass[lh]))
    return sorted([list(pair) for pair in ranked[:count]]), mass
