"""Training-free block scores from a cheap probe of the attention (the decomposition paper's vertical + slash components).

The last ``probe_queries`` valid queries of each sequence attend densely (P x S, linear in S); their
head-averaged attention (per selection group) is decomposed into

- a vertical component: mass per key position, pooled per key block (columns every query reads:
  sinks, instructions, retrieved passages);
- a slash component: mass per relative offset (query - key), pooled per block distance (diagonal
  bands: local context, periodic structure);

and every causal (query block, key block) cell is scored ``vertical[kb] + slash[qb - kb]``. The
scores go through ``select_blocks`` like any selector: ``top_p`` keeps the blocks covering that
share of the estimated mass outside the forced blocks, so at most ``1 - top_p`` of the estimate is
dropped (a bound on the estimated error vs dense); ``density`` / ``top_k`` meet a fixed cost. It needs no trained weights, so it runs on any checkpoint.

The horizontal component (query rows that need dense attention, ``horizontal_threshold``) is
measured, not estimated: ``ops.row_probe_mass`` attends densely from the last query of every query block
(nQ x S per head, 1/block_size of the dense cost); a query block whose probe keeps less than the
threshold of its attention mass inside the selected blocks attends to all of its causal blocks
(``selection.with_dense_rows``). It applies on top of any selector.
"""

from __future__ import annotations

import torch

from ..ops.common import check_groups, check_qk, num_blocks, sequence_lengths
from ..ops.probe_mass.naive import probe_probs


def _empty_scores(
    q: torch.Tensor, k: torch.Tensor, block_size: int, groups: int, seq_lens: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(zeros [B, groups, nQ, nK] float32, valid lengths [B]) after checking shapes and groups."""
    B, H, S, _ = check_qk(q, k)
    check_groups(H, groups)
    nb = num_blocks(S, block_size)
    out = torch.zeros(B, groups, nb, nb, dtype=torch.float32, device=q.device)
    return out, sequence_lengths(seq_lens, B, S, q.device)


def pattern_block_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: int,
    scale: float,
    groups: int,
    seq_lens: torch.Tensor | None = None,
    probe_queries: int = 64,
) -> torch.Tensor:
    """Estimated block mass [B, groups, nQ, nK] (float32) from the last ``probe_queries`` queries."""
    out, lens = _empty_scores(q, k, block_size, groups, seq_lens)
    nb = out.shape[-1]
    qb = torch.arange(nb, device=q.device)
    distance = (qb[:, None] - qb[None, :]).clamp(min=0)
    causal = qb[None, :] <= qb[:, None]
    for b in range(len(lens)):
        L = int(lens[b])
        if L == 0:
            continue
        P = min(probe_queries, L)
        qpos = torch.arange(L - P, L, device=q.device)
        probs = probe_probs(q[b], k[b, :, :L], qpos, scale, groups)
        nbl = num_blocks(L, block_size)
        vertical = (
            torch.nn.functional.pad(probs.mean(1), (0, nbl * block_size - L))
            .view(groups, nbl, block_size)
            .sum(-1)
        )
        offsets = qpos[:, None] - torch.arange(L, device=q.device)[None, :]
        slash_tok = (
            torch.zeros(groups, L, device=q.device).index_add_(
                1, offsets.clamp(min=0).flatten(), (probs * (offsets >= 0)).flatten(1)
            )
            / P
        )
        slash = (
            torch.nn.functional.pad(slash_tok, (0, nbl * block_size - L))
            .view(groups, nbl, block_size)
            .sum(-1)
        )
        score = vertical[:, None, :] + slash[:, distance[:nbl, :nbl]]
        out[b, :, :nbl, :nbl] = torch.where(causal[:nbl, :nbl], score, 0.0)
    return out
