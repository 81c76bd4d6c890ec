"""Left padding -> right padding, so block boundaries sit where they would for each sequence alone.

With left padding the first real token of each row starts mid-block, so a padded batch would pick
different blocks than the same sequence run alone. Rolling each row so its real tokens start at 0
makes blocks, scores and selection identical to the unpadded run; causality keeps the right-hand pad
keys away from every real query.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PaddingLayout:
    seq_lens: torch.Tensor
    shift: torch.Tensor | None

    @classmethod
    def from_key_mask(
        cls, key_valid: torch.Tensor | None, batch: int, seq_len: int, device: torch.device
    ) -> PaddingLayout:
        """``key_valid`` bool [B, S] (True = real token) or None (no padding)."""
        if key_valid is None:
            return cls(torch.full((batch,), seq_len, dtype=torch.int32, device=device), None)
        lens = key_valid.sum(-1)
        pos = torch.arange(seq_len, device=device)
        left = pos[None, :] >= (seq_len - lens)[:, None]
        right = pos[None, :] < lens[:, None]
        is_left = (key_valid == left).all(-1)
        if not bool((is_left | (key_valid == right).all(-1)).all()):
            raise ValueError(
                "sparse_prefill supports left or right padding only (each row's real tokens contiguous at one "
                "end); this attention_mask has holes. Use attn_implementation='sdpa' for such masks."
            )
        shift = torch.where(is_left, seq_len - lens, 0)
        return cls(lens.to(torch.int32), shift if bool(shift.any()) else None)

    @classmethod
    def from_attention_mask(cls, attention_mask: torch.Tensor | None, query: torch.Tensor) -> PaddingLayout:
        """From the compact prefill mask ``sparse_prefill_mask`` returns (None or [B, 1, 1, S] bool)."""
        key_valid = None if attention_mask is None else attention_mask[:, 0, 0, :]
        return cls.from_key_mask(key_valid, query.shape[0], query.shape[2], query.device)

    def to_right(self, x: torch.Tensor) -> torch.Tensor:
        """Roll [B, H, S, D] rows left by their pad count."""
        return x if self.shift is None else _roll_rows(x, self.shift)

    def to_original(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.shift is None else _roll_rows(x, -self.shift)


def _roll_rows(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    S = x.shape[2]
    idx = (torch.arange(S, device=x.device)[None, :] + shift[:, None]) % S
    return torch.gather(x, 2, idx[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3]))
