"""The trainable indexer: low-dim projections of a layer's own query/key states -> block scores.

It works on the post-RoPE q/k that the attention function receives (it never sees hidden states), so
its keys double as an indexer K-cache for decode. Its block score is the same pooled causal softmax
mass the teacher computes from the dense attention, which makes KL distillation a like-for-like fit.
"""

from __future__ import annotations

import math

import torch
import torch.distributed.nn
from torch import nn

from .. import ops
from .config import SparseAttentionConfig


def tensor_parallel_rank(shards: int, indexer_heads: int = 1) -> int:
    """This rank's head shard when the layer hands the attention 1/``shards`` of its heads.

    Tensor parallelism (``tp_plan="auto"`` under torchrun) shards q/k/v heads over all ranks in rank
    order; the indexer weights stay replicated. Each rank projects its local heads and an all-reduce
    sums the partial projections, so every rank gets the full projection, the same scores and the
    same block list; the kernel then runs on the local heads.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            f"the layer passed 1/{shards} of its heads but torch.distributed is not initialized: tensor "
            "parallel sparse prefill runs under torchrun with tp_plan='auto'"
        )
    if dist.get_world_size() != shards:
        raise NotImplementedError(
            f"heads are split {shards} ways over {dist.get_world_size()} ranks: only pure tensor parallelism "
            "over all ranks is supported"
        )
    if indexer_heads != 1:
        raise NotImplementedError(
            f"tensor parallel sparse prefill needs the head-collapsed indexer (indexer_heads=1), got {indexer_heads}"
        )
    return dist.get_rank()


class Indexer(nn.Module):
    """``indexer_heads`` x ``indexer_dim`` projections of the concatenated query / key heads.

    Indexer head g scores for the query heads of selection group g (1 group = head-collapsed). The
    initial weights average the heads of the group and apply one shared random projection to q and k,
    so an untrained indexer already approximates the group-mean attention logits (Johnson-Lindenstrauss)
    and distillation starts from a sensible point.
    """

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        config: SparseAttentionConfig,
        layer_idx: int | None = None,
    ) -> None:
        super().__init__()
        G, d = config.indexer_heads, config.indexer_dim
        if num_kv_heads % G:
            raise ValueError(
                f"indexer_heads ({G}) must divide the layer's key/value heads ({num_kv_heads}): use 1 "
                f"(head-collapsed) or a divisor of {num_kv_heads} (one selection per group of kv heads)"
            )
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_proj = nn.Linear(num_heads * head_dim, G * d, bias=False)
        self.k_proj = nn.Linear(num_kv_heads * head_dim, G * d, bias=False)
        self.observer = None  # set by distill.distillation_forward and the lab studies: gets the q/k, the layer runs dense
        self.kcache = None  # decode.IndexerKCache of the cached tokens, when config.sparse_decode
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        G, d, D = self.config.indexer_heads, self.config.indexer_dim, self.head_dim
        proj = torch.randn(G, d, D, generator=generator) / math.sqrt(d)
        match_scale = (d / D) ** 0.25
        for lin, heads in ((self.q_proj, self.num_heads), (self.k_proj, self.num_kv_heads)):
            per_group = heads // G
            w = torch.zeros(G, d, heads, D)
            for g in range(G):
                w[g, :, g * per_group : (g + 1) * per_group] = proj[g][:, None, :] * match_scale / per_group
            lin.weight.copy_(w.reshape(G * d, heads * D).to(lin.weight))

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q [B, Hq, S, D], k [B, Hkv, S, D] -> (q_idx, k_idx) each [B, G, S, d].

        Projects head by head (a batched matmul summed over heads) instead of transposing q / k into
        [B, S, H * D], which would copy the full query states (1 GiB at 128K tokens for Qwen3-8B).
        """
        return self.queries(q), self.keys(k)

    def queries(self, q: torch.Tensor) -> torch.Tensor:
        """Indexer queries [B, G, S, d] of the layer's query states [B, Hq, S, D]."""
        return self._project(q, self.q_proj.weight)

    def keys(self, k: torch.Tensor) -> torch.Tensor:
        """Indexer keys [B, G, S, d] of the layer's key states [B, Hkv, S, D] (what the K-cache holds)."""
        return self._project(k, self.k_proj.weight)

    def _project(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        G, d = self.config.indexer_heads, self.config.indexer_dim
        B, H, S, D = x.shape
        total = weight.shape[1] // D
        per_head = weight.view(G * d, total, D).permute(1, 2, 0)
        shards = total // H
        if shards > 1:
            per_head = per_head.narrow(0, tensor_parallel_rank(shards, G) * H, H)
        y = torch.matmul(x.to(weight.dtype), per_head).sum(1, dtype=torch.float32)
        if shards > 1:
            y = torch.distributed.nn.functional.all_reduce(y)
        return y.to(weight.dtype).view(B, S, G, d).transpose(1, 2)

    def block_scores(
        self, q: torch.Tensor, k: torch.Tensor, seq_lens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pooled indexer attention mass [B, G, nQ, nK] (float32, rows sum to 1 on valid blocks)."""
        return self.block_scores_from(*self(q, k), seq_lens)

    def block_scores_from(
        self, q_idx: torch.Tensor, k_idx: torch.Tensor, seq_lens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``block_scores`` from already projected indexer queries / keys [B, G, S, d]."""
        return ops.pooled_attention_mass(
            q_idx,
            k_idx,
            self.config.block_size,
            1.0 / math.sqrt(self.config.indexer_dim),
            self.config.indexer_heads,
            seq_lens,
        )

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}, heads={self.config.indexer_heads}, dim={self.config.indexer_dim}"
