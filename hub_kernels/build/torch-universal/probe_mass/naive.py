# Generated from hf_sparse_attn/ops/probe_mass/naive.py (hf-sparse-attn 0.1.0, ops 52b9c680fcd2); do not edit.
"""Reference: dense attention of a few probe queries, the spec for the Triton row-probe kernel.

``probe_probs`` is the shared building block (training-free patterns, retrieval-head scoring);
``row_probe_mass`` probes the last valid query of every query block (the horizontal component of
the training-free selector, ``patterns``): nQ x S scores per head, 1/block_size of dense attention.
"""

from __future__ import annotations

import torch

from ..common import check_groups, check_qk, num_blocks, sequence_lengths


def probe_probs(
    q: torch.Tensor, k: torch.Tensor, qpos: torch.Tensor, scale: float, groups: int
) -> torch.Tensor:
    """Causal softmax of one sequence's queries at ``qpos`` (q [H, S, d]) over k [Hk, L, d], averaged
    over the query heads of each group: [groups, len(qpos), L]."""
    H, _, d = q.shape
    Hk, L, _ = k.shape
    probe = q[:, qpos].float().view(Hk, H // Hk, len(qpos), d)
    logits = torch.einsum("grpd,gkd->grpk", probe, k.float()) * scale
    logits = logits.masked_fill(torch.arange(L, device=q.device)[None, :] > qpos[:, None], float("-inf"))
    return torch.softmax(logits, dim=-1).reshape(groups, H // groups, len(qpos), L).mean(1)


def row_probe_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: int,
    scale: float,
    groups: int,
    seq_lens: torch.Tensor | None = None,
    rows_per_chunk: int = 64,
) -> torch.Tensor:
    """Block mass [B, groups, nQ, nK] (float32) of the last valid query of each query block, averaged
    over the query heads of each group (zero past the end); q [B, H, S, d], k [B, Hk, S, d]."""
    B, H, S, _ = check_qk(q, k)
    check_groups(H, groups)
    nb = num_blocks(S, block_size)
    out = torch.zeros(B, groups, nb, nb, dtype=torch.float32, device=q.device)
    lens = sequence_lengths(seq_lens, B, S, q.device)
    for b in range(B):
        L = int(lens[b])
        nbl = num_blocks(L, block_size)
        for r0 in range(0, nbl, rows_per_chunk):
            rows = torch.arange(r0, min(nbl, r0 + rows_per_chunk), device=q.device)
            qpos = torch.clamp((rows + 1) * block_size, max=L) - 1
            probs = probe_probs(q[b], k[b, :, :L], qpos, scale, groups)
            pooled = torch.nn.functional.pad(probs, (0, nbl * block_size - L)).view(
                groups, len(rows), nbl, block_size
            )
            out[b, :, rows, :nbl] = pooled.sum(-1)
    return out
