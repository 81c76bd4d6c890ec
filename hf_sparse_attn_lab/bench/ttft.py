"""`hf-sparse-attn bench ttft`: prefill time of a full-size model, dense vs sparse vs the no-op ceiling.

Dense baselines: SDPA (cuDNN / flash, PyTorch's choice) and, where installed, FlashAttention-4, the
fastest dense attention a user could install instead; each sparse row gives its speedup over both.
Sparse rows run each installed block-sparse backend (Triton; FA4 where it runs the block size).

Random bf16 weights with the published shapes (speed does not depend on the values; the indexers are
untrained, so the density is set by the budget rule). Each timing is ``model(ids, logits_to_keep=1)``
(full-vocabulary logits at 128K do not fit in memory). The ceiling replaces attention by a no-op:
no sparse attention can beat it. Correctness gate: at density 1.0 the sparse path's last-token logits
must match ``sdpa`` before any sparse timing is reported. Through 36 random bf16 layers two correct
dense kernels already disagree by a few percent, so the tolerance is calibrated in the same run:
max(2e-2, 2 x the relative difference between SDPA's flash and cuDNN backends).
"""

from __future__ import annotations

import contextlib
import os
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface, AutoModelForCausalLM

from hf_sparse_attn.ops.block_sparse_attn import fa4
from hf_sparse_attn.runtime.attention import kept_density, sparse_at_every_budget
from hf_sparse_attn.runtime.config import SparseAttentionConfig
from hf_sparse_attn.runtime.modeling import attach_indexer, indexers

from .kernels import fa4_dense
from .shapes import CONFIGS

NOOP = "noop_attention_ceiling"
FA4_DENSE = "fa4_dense"
GATE_REL_ERR = 2e-2


def _noop_attention(module, query, key, value, attention_mask, **kwargs):
    return torch.zeros_like(query).transpose(1, 2), None


def _fa4_dense_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    return fa4_dense(query, key, value, scaling).transpose(1, 2), None


def _time_prefill(model, ids, repeats: int) -> tuple[float, float]:
    with torch.no_grad():
        model(ids, logits_to_keep=1)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(ids, logits_to_keep=1)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return min(times), (torch.cuda.max_memory_allocated() - base) / 2**30


@contextlib.contextmanager
def backend_env(backend: str):
    """``HF_SPARSE_ATTN_BACKEND=backend`` for the duration of the block."""
    old = os.environ.get("HF_SPARSE_ATTN_BACKEND")
    os.environ["HF_SPARSE_ATTN_BACKEND"] = backend
    try:
        yield
    finally:
        if old is None:
            del os.environ["HF_SPARSE_ATTN_BACKEND"]
        else:
            os.environ["HF_SPARSE_ATTN_BACKEND"] = old


def set_budget(model, **budget) -> None:
    """Give every indexer of ``model`` the one budget rule in ``budget`` (e.g. ``density=0.1``)."""
    for indexer in indexers(model).values():
        for name in ("top_k", "density", "top_p"):
            setattr(indexer.config, name, budget.get(name))
        indexer.config.validate()


def gate_reference(model, ids: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """(last-token logits with SDPA flash, their relative difference to SDPA cuDNN, the gate tolerance
    max(GATE_REL_ERR, 2 x that difference)) of ``model`` on ``ids`` with its current attention."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        ref = model(ids, logits_to_keep=1).logits.float()
    with torch.no_grad(), sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        backend_err = float((model(ids, logits_to_keep=1).logits.float() - ref).norm() / ref.norm())
    return ref, backend_err, max(GATE_REL_ERR, 2 * backend_err)


def full_density_error(model, ids: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative difference of the sparse path at density 1 (every causal block) to ``ref``; leaves the
    model on ``sparse_prefill`` at density 1."""
    model.set_attn_implementation("sparse_prefill")
    set_budget(model, density=1.0)
    with torch.no_grad(), sparse_at_every_budget():  # gate the kernel itself, not the dense shortcut
        full = model(ids, logits_to_keep=1).logits.float()
    return float((full - ref).norm() / ref.norm())


def run(
    model_name: str, seq_lens: list[int], budgets: list[dict], repeats: int = 3, block: int = 64
) -> list[dict]:
    AttentionInterface.register(NOOP, _noop_attention)
    with_fa4 = fa4.fa4_installed()
    if with_fa4:
        AttentionInterface.register(FA4_DENSE, _fa4_dense_attention)
    config = CONFIGS[model_name]()
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.bfloat16, attn_implementation="sdpa"
        ).eval()
    attach_indexer(model, SparseAttentionConfig(block_size=block, density=1.0, min_sparse_len=1024))
    rows = []
    for S in seq_lens:
        ids = torch.randint(0, config.vocab_size, (1, S), device="cuda")
        model.set_attn_implementation("sdpa")
        dense_s, dense_mem = _time_prefill(model, ids, repeats)
        ref, backend_err, tolerance = gate_reference(model, ids)
        fa4_dense_s = None
        if with_fa4:
            model.set_attn_implementation(FA4_DENSE)
            fa4_dense_s, _ = _time_prefill(model, ids, repeats)
        model.set_attn_implementation(NOOP)
        noop_s, _ = _time_prefill(model, ids, repeats)
        err = full_density_error(model, ids, ref)
        base = {
            "model": model_name,
            "seq_len": S,
            "dense_s": dense_s,
            "fa4_dense_s": fa4_dense_s,
            "noop_ceiling_s": noop_s,
            "ceiling_speedup": dense_s / noop_s,
            "gate_rel_err_density_1": err,
            "flash_vs_cudnn_rel_err": backend_err,
            "gate_tolerance": tolerance,
        }
        rows.append(
            {
                **base,
                "method": "sdpa",
                "budget": "dense",
                "seconds": dense_s,
                "speedup": 1.0,
                "fraction_of_ceiling": noop_s / dense_s,
                "peak_mem_gib": dense_mem,
            }
        )
        print(rows[-1], flush=True)
        if fa4_dense_s is not None:
            rows.append(
                {
                    **base,
                    "method": "fa4",
                    "budget": "dense",
                    "seconds": fa4_dense_s,
                    "speedup": dense_s / fa4_dense_s,
                    "speedup_vs_fa4": 1.0,
                    "fraction_of_ceiling": noop_s / fa4_dense_s,
                }
            )
            print(rows[-1], flush=True)
        if err >= tolerance:
            rows.append(
                {
                    **base,
                    "method": "sparse_prefill",
                    "budget": "all",
                    "note": f"FAILED correctness gate (rel err {err:.3g}): not timed",
                }
            )
            print(rows[-1], flush=True)
            continue
        backends = ["triton", "fa4"] if with_fa4 and block in (64, 128) else ["triton"]
        for budget in budgets:
            set_budget(model, **budget)
            for backend in backends:
                with backend_env(backend):
                    sparse_s, sparse_mem = _time_prefill(model, ids, repeats)
                rows.append(
                    {
                        **base,
                        "method": f"sparse_prefill[{backend}]",
                        "budget": ",".join(f"{k}={v}" for k, v in budget.items()),
                        "density": kept_density(model),
                        "seconds": sparse_s,
                        "speedup": dense_s / sparse_s,
                        "speedup_vs_fa4": fa4_dense_s / sparse_s if fa4_dense_s else None,
                        "fraction_of_ceiling": noop_s / sparse_s,
                        "peak_mem_gib": sparse_mem,
                    }
                )
                print(rows[-1], flush=True)
        torch.cuda.empty_cache()
    return rows
