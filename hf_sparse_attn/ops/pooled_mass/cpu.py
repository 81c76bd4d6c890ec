"""Block-pooled attention mass for CPUs: the reference's contract, computed in cache-sized key tiles.

The reference takes two logsumexps per chunk (block, then row), which autograd needs for its
recompute-in-backward chunks. Without autograd, each tile of ``KEY_TILE`` keys is scored, shifted by
its own row maximum, exponentiated and summed per key block while it is still in cache; the tiles'
block sums are then rescaled to the row's overall maximum and normalized, an online softmax. Scoring a
whole row at once instead streamed every pass (matmul, mask, softmax, block sum) through memory: with
an indexer dim of 16 the matmul's output write alone took as long as the softmax.
"""

from __future__ import annotations

import torch

from ..common import check_groups, check_qk, num_blocks, sequence_lengths

SOFTMAX_CHUNK_ROWS = 256  # query rows scored per chunk (each chunk masks its own causal square)
KEY_TILE = 1024  # keys per tile: a [rows, KEY_TILE] fp32 score tile per head stays in cache
TILE_ELEMENTS = 1 << 22  # bound on one tile's scores over batch and heads (16 MB)


def pooled_attention_mass_cpu(
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: int,
    scale: float,
    groups: int,
    seq_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same inputs and output as ``naive.pooled_attention_mass``."""
    B, H, S, d = check_qk(q, k)
    check_groups(H, groups)
    Hk = k.shape[1]
    nb = num_blocks(S, block_size)
    dev = q.device
    lens = sequence_lengths(seq_lens, B, S, dev)
    kf = torch.nn.functional.pad(k.float(), (0, 0, 0, nb * block_size - S)).unsqueeze(2)
    qt = (q.float() * scale).view(B, Hk, H // Hk, S, d).transpose(-1, -2)  # [B, Hk, H/Hk, d, S]
    out = torch.zeros(B, groups, nb, nb, dtype=torch.float32, device=dev)
    shortest = int(lens.min())
    tile = max(1, KEY_TILE // block_size) * block_size
    step = max(1, min(SOFTMAX_CHUNK_ROWS // block_size, TILE_ELEMENTS // (B * H * block_size * tile)))
    scratch = torch.empty(B * H * step * block_size * tile, dtype=torch.float32, device=dev)
    for qb0 in range(0, nb, step):
        qb1 = min(nb, qb0 + step)
        s0, s1 = qb0 * block_size, min(S, qb1 * block_size)
        rows = s1 - s0
        qpos = torch.arange(s0, s1, device=dev)
        qchunk = qt[..., s0:s1].contiguous()
        sums, maxima = [], []  # per tile: [B, Hk, H/Hk, tile blocks, rows] and [B, Hk, H/Hk, 1, rows]
        for t0 in range(0, qb1 * block_size, tile):
            t1 = min(t0 + tile, qb1 * block_size)
            # Keys-major [keys, rows]: the block sums and the row maxima reduce over an outer dimension,
            # vectorized along the contiguous rows.
            scores = scratch[: B * H * rows * (t1 - t0)].view(B, Hk, H // Hk, t1 - t0, rows)
            torch.matmul(kf[:, :, :, t0:t1], qchunk, out=scores)
            kpos = torch.arange(t0, t1, device=dev)
            if t1 > s0:  # the tile reaches the chunk's causal square
                scores.masked_fill_(kpos[:, None] > qpos[None, :], float("-inf"))
            if t1 > shortest:  # right padding: keys at or beyond a row's length
                scores.masked_fill_((kpos[None, :] >= lens[:, None]).view(B, 1, 1, -1, 1), float("-inf"))
            peak = scores.amax(-2, keepdim=True)
            scores.sub_(peak.nan_to_num(neginf=0.0)).exp_()  # a fully masked row stays all zero
            sums.append(scores.view(B, Hk, H // Hk, -1, block_size, rows).sum(-2))
            maxima.append(peak.expand(B, Hk, H // Hk, sums[-1].shape[-2], rows))
        peaks = torch.cat(maxima, -2)
        mass = torch.cat(sums, -2) * (peaks - peaks.amax(-2, keepdim=True)).exp()
        mass = (mass / mass.sum(-2, keepdim=True)).nan_to_num_(0.0)  # an all-padding row has no key
        mass = mass.transpose(-1, -2)  # [B, Hk, H/Hk, rows, kb]
        mass = mass.reshape(B, groups, H // groups, rows, qb1).mean(2)  # [B, G, rows, kb]
        qvalid = (qpos[None, :] < lens[:, None]).float()  # [B, rows]
        pad_q = (qb1 - qb0) * block_size - rows
        mass = torch.nn.functional.pad(mass * qvalid[:, None, :, None], (0, 0, 0, pad_q))
        count = torch.nn.functional.pad(qvalid, (0, pad_q)).view(B, qb1 - qb0, block_size).sum(-1)
        out[:, :, qb0:qb1, :qb1] = (
            mass.view(B, groups, qb1 - qb0, block_size, qb1).sum(3) / count.clamp(min=1)[:, None, :, None]
        )
    return out
