"""`hf-sparse-attn bench profile`: where a sparse prefill's time goes, phase by phase.

The TTFT table says how far the sparse path is from its ceiling (attention as a no-op); this says
why. One full-size model with random bf16 weights (``bench ttft``'s shapes) runs a sparse prefill
while CUDA events bracket every phase of every sparse layer:

- ``projection``: the indexer's q / k projections;
- ``scoring``: the pooled indexer mass (``Indexer.block_scores_from``);
- ``selection``: the budget rule (``select_blocks``: top-k / top-p into a block list);
- ``kernel``: the block-sparse attention kernel;
- ``attention_other``: the rest of the attention function (padding layout, budget check, layouts);
- ``model``: everything outside attention (projections, MLPs, norms, RoPE, the last-token logits).

Events are recorded on the stream without synchronizing, so each phase's time is its span on the GPU
stream, launch gaps included, and the phases add up to the prefill. A second pass under
``torch.profiler`` lists the CUDA kernels that take the most time, as a cross-check of the phases.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator

import torch
from transformers import AttentionInterface, AutoModelForCausalLM

import hf_sparse_attn.ops as ops
from hf_sparse_attn.runtime import attention
from hf_sparse_attn.runtime.config import SparseAttentionConfig
from hf_sparse_attn.runtime.indexer import Indexer
from hf_sparse_attn.runtime.modeling import attach_indexer

from .shapes import CONFIGS
from .ttft import backend_env

PHASES = ("projection", "scoring", "selection", "kernel", "attention_other", "model")


class PhaseTimer:
    """CUDA event pairs per phase; ``totals_ms`` after a synchronize."""

    def __init__(self) -> None:
        self.events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = defaultdict(list)

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                return fn(*args, **kwargs)
            finally:
                end.record()
                self.events[name].append((start, end))

        return timed

    def totals_ms(self) -> dict[str, float]:
        torch.cuda.synchronize()
        return {name: sum(s.elapsed_time(e) for s, e in pairs) for name, pairs in self.events.items()}

    def counts(self) -> dict[str, int]:
        return {name: len(pairs) for name, pairs in self.events.items()}


@contextlib.contextmanager
def timed_phases(timer: PhaseTimer) -> Iterator[None]:
    """Route the sparse path's phases through ``timer`` for the duration of the block."""
    patches = [
        (Indexer, "forward", "projection"),
        (Indexer, "block_scores_from", "scoring"),
        (attention, "select_blocks", "selection"),
        (ops, "block_sparse_attention", "kernel"),
    ]
    saved = []
    for owner, name, phase in patches:
        original = getattr(owner, name)
        saved.append((owner, name, original))
        setattr(owner, name, timer.wrap(phase, original))
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def _model(shape: str, block: int, budget: dict):
    config = CONFIGS[shape]()
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.bfloat16, attn_implementation="sdpa"
        ).eval()
    attach_indexer(model, SparseAttentionConfig(block_size=block, min_sparse_len=1024, **budget))
    model.set_attn_implementation("sparse_prefill")
    return model


def _top_kernels(model, ids: torch.Tensor, top: int) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        model(ids, logits_to_keep=1)
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_time_total > 0]
    kernels.sort(key=lambda e: -e.self_device_time_total)
    total = sum(e.self_device_time_total for e in kernels)
    return [
        {
            "kernel": e.key[:120],
            "calls": e.count,
            "ms": e.self_device_time_total / 1e3,
            "share": e.self_device_time_total / total,
        }
        for e in kernels[:top]
    ]


def run(
    shape: str, seq_len: int, budget: dict, block: int = 128, backend: str = "auto", top: int = 15
) -> tuple[dict, list[dict]]:
    """(phase breakdown row, top CUDA kernels) of one sparse prefill of ``shape`` at ``seq_len``."""
    model = _model(shape, block, budget)
    head_dim = model.config.head_dim
    with backend_env(backend):
        backend = ops.attention_backend(
            torch.empty(1, 1, 1, head_dim, device="cuda", dtype=torch.bfloat16), block
        )
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), device="cuda")
    timer = PhaseTimer()
    with torch.no_grad(), backend_env(backend):
        model(ids, logits_to_keep=1)  # compile and warm up outside the timed pass
        torch.cuda.synchronize()
        original = attention.sparse_prefill_attention
        AttentionInterface.register("sparse_prefill", timer.wrap("attention", original))
        try:
            with timed_phases(timer):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(ids, logits_to_keep=1)
                end.record()
                totals = timer.totals_ms()
                prefill_ms = start.elapsed_time(end)
        finally:
            AttentionInterface.register("sparse_prefill", original)
        kernels = _top_kernels(model, ids, top)
    phases = {p: totals.get(p, 0.0) for p in PHASES[:4]}
    phases["attention_other"] = totals.get("attention", 0.0) - sum(phases.values())
    phases["model"] = prefill_ms - totals.get("attention", 0.0)
    layers = timer.counts().get("kernel", 0)
    row = {
        "model": shape,
        "seq_len": seq_len,
        "block": block,
        "backend": backend,
        "budget": ",".join(f"{k}={v}" for k, v in budget.items()),
        "density": attention.kept_density(model),
        "sparse_layers": layers,
        "prefill_ms": prefill_ms,
        **{f"{p}_ms": v for p, v in phases.items()},
        **{f"{p}_per_layer_ms": v / max(1, layers) for p, v in phases.items() if p != "model"},
        "scoring_selection_share_of_kernel": (phases["scoring"] + phases["selection"]) / phases["kernel"]
        if phases["kernel"]
        else None,
    }
    del model
    torch.cuda.empty_cache()
    return row, kernels
