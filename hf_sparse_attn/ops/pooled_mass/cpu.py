"""Block-pooled attention mass for CPUs: the reference's contract with one fused softmax per chunk.

The reference takes two logsumexps per chunk (block, then row), which autograd needs for its
recompute-in-backward chunks; without autograd one softmax over each row's causal keys, summed per
key block, gives the same mass in a fraction of the time. Memory is bounded by ``SOFTMAX_CHUNK_ELEMENTS``.
"""

from __future__ import annotations

import torch

from ..common import check_groups, check_qk, num_blocks, sequence_lengths

SOFTMAX_CHUNK_ELEMENTS = 1 << 24
SOFTMAX_CHUNK_ROWS = 256  # short chunks: each computes and masks its own square of the causal triangle


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
    qf = (q.float() * scale).view(B, Hk, H // Hk, S, d)
    out = torch.zeros(B, groups, nb, nb, dtype=torch.float32, device=dev)
    shortest = int(lens.min())
    step = max(
        1,
        min(
            SOFTMAX_CHUNK_ROWS // block_size, SOFTMAX_CHUNK_ELEMENTS // (B * H * block_size * block_size * nb)
        ),
    )
    # One scratch buffer for every chunk's scores: fresh large tensors cost a page fault per 4 KiB on
    # every chunk, which took as long as the matmul itself.
    scratch = torch.empty(B * H * step * block_size * nb * block_size, dtype=torch.float32, device=dev)
    for qb0 in range(0, nb, step):
        qb1 = min(nb, qb0 + step)
        s0, s1 = qb0 * block_size, min(S, qb1 * block_size)
        keys = qb1 * block_size
        rows = s1 - s0
        scores = scratch[: B * H * rows * keys].view(B, Hk, H // Hk, rows, keys)
        torch.matmul(qf[:, :, :, s0:s1], kf[:, :, :, :keys].transpose(-1, -2), out=scores)
        qpos = torch.arange(s0, s1, device=dev)
        kpos = torch.arange(s0, keys, device=dev)
        scores[..., s0:].masked_fill_(kpos[None, :] > qpos[:, None], float("-inf"))
        if shortest < keys:  # right padding: keys at or beyond a row's length
            kpad = torch.arange(shortest, keys, device=dev)
            scores[..., shortest:].masked_fill_(
                (kpad[None, :] >= lens[:, None]).view(B, 1, 1, 1, -1), float("-inf")
            )
        probs = torch.softmax(scores, dim=-1, out=scores)
        if shortest == 0:  # an all-padding row has no key at all
            probs.nan_to_num_(0.0)
        mass = probs.view(B, groups, H // groups, rows, qb1, block_size).sum(-1).mean(2)  # [B, G, rows, kb]
        qvalid = (qpos[None, :] < lens[:, None]).float()  # [B, rows]
        pad_q = (qb1 - qb0) * block_size - rows
        mass = torch.nn.functional.pad(mass * qvalid[:, None, :, None], (0, 0, 0, pad_q))
        count = torch.nn.functional.pad(qvalid, (0, pad_q)).view(B, qb1 - qb0, block_size).sum(-1)
        out[:, :, qb0:qb1, :qb1] = (
            mass.view(B, groups, qb1 - qb0, block_size, qb1).sum(3) / count.clamp(min=1)[:, None, :, None]
        )
    return out
