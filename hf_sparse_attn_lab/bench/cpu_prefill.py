"""Whole-model prefill of the bundled proxy on a CPU: the vectorized sparse path against dense sdpa.

CPU timings on a shared machine drift by up to 2x between runs, so sparse and dense alternate in one
process for ``rounds`` rounds and each is reported by its fastest run (the least disturbed one), with
every run kept in the JSON. Before any timing, the vectorized ops' logits are checked against the
reference ops' (``HF_SPARSE_ATTN_BACKEND=reference``) on a ``check_len``-token prompt.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hf_sparse_attn.runtime.modeling import sparse_config_of
from hf_sparse_attn.runtime.selection import budget_kept_fraction

from .ttft import backend_env

CHECK_TOLERANCE = 1e-4  # relative error of the logits in fp32


@dataclass
class CpuPrefillRow:
    seq_len: int
    threads: int
    kept_blocks: float  # share of the causal blocks the budget keeps
    sparse_s: float
    dense_s: float
    speedup: float
    sparse_runs: list[float]
    dense_runs: list[float]
    check_len: int
    rel_err: float


@torch.no_grad()
def _prefill_s(model, ids: torch.Tensor, attn: str) -> float:
    model.set_attn_implementation(attn)
    start = time.perf_counter()
    model(input_ids=ids, logits_to_keep=1)
    return time.perf_counter() - start


@torch.no_grad()
def check(model, ids: torch.Tensor) -> float:
    """Relative error of the sparse prefill's logits, vectorized CPU ops against the reference ops."""
    model.set_attn_implementation("sparse_prefill")
    with backend_env("reference"):
        want = model(input_ids=ids).logits.float()
    with backend_env("cpu"):
        got = model(input_ids=ids).logits.float()
    return float((got - want).norm() / want.norm())


def run(
    model_dir: str | os.PathLike,
    seq_lens: list[int],
    rounds: int = 3,
    check_len: int = 2048,
    progress: Callable[[str], None] = print,
) -> list[CpuPrefillRow]:
    from hf_sparse_attn_lab.proxy import load_proxy

    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    model, tok = load_proxy(model_dir, device="cpu")
    config = sparse_config_of(model)
    short = [n for n in seq_lens if n < config.min_sparse_len]
    if short or check_len < config.min_sparse_len:
        raise ValueError(
            f"lengths {short or [check_len]} are below the model's min_sparse_len ({config.min_sparse_len}), "
            "where the sparse path runs dense: pass --seq-lens of at least that"
        )
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(len(tok.all_special_ids), len(tok), (1, max(seq_lens + [check_len])), generator=gen)
    rel_err = check(model, ids[:, :check_len])
    progress(f"check at {check_len} tokens: vectorized vs reference logits, relative error {rel_err:.2e}")
    if not rel_err <= CHECK_TOLERANCE:
        raise RuntimeError(
            f"the vectorized CPU ops differ from the reference by {rel_err:.2e} (> {CHECK_TOLERANCE}): not timing"
        )
    _prefill_s(model, ids[:, :1024], "sdpa")  # first-call setup outside the timings
    rows = []
    for n in seq_lens:
        sparse, dense = [], []
        for _ in range(rounds):
            sparse.append(_prefill_s(model, ids[:, :n], "sparse_prefill"))
            dense.append(_prefill_s(model, ids[:, :n], "sdpa"))
            progress(f"{n} tokens: sparse {sparse[-1]:.2f} s, dense {dense[-1]:.2f} s")
        rows.append(
            CpuPrefillRow(
                seq_len=n,
                threads=torch.get_num_threads(),
                kept_blocks=round(budget_kept_fraction(config, n), 4),
                sparse_s=round(min(sparse), 3),
                dense_s=round(min(dense), 3),
                speedup=round(min(dense) / min(sparse), 3),
                sparse_runs=[round(s, 3) for s in sparse],
                dense_runs=[round(s, 3) for s in dense],
                check_len=check_len,
                rel_err=rel_err,
            )
        )
    return rows
