"""`hf-sparse-attn docs-tables`: the tables of README.md and docs/*.md, rendered from results/*.json.

A generated table sits between ``<!-- table: NAME -->`` and ``<!-- end table -->``; ``render_docs``
rewrites those spans and ``check`` (a test) fails when a doc and its JSON disagree, so a number in
the docs is always the one in the evidence folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEED = "results/speed_h200"
PROXY = "results/proxy_v7"
QUALITY = [f"{PROXY}/eval_gpu_4k_100/eval.json", f"{PROXY}/eval_gpu_4k_100_baselines/eval.json"]
QUALITY_BUDGET = [f"{PROXY}/eval_gpu_4k_100/eval.json", f"{PROXY}/budget_gpu_4k_100/eval.json"]
QUALITY_LENGTHS = [
    ("4096 tokens, 110 prompts", f"{PROXY}/eval_gpu/eval.json", 4096),
    ("8192 tokens, 110 prompts", f"{PROXY}/eval_gpu/eval.json", 8192),
    ("8192 tokens, 440 prompts", f"{PROXY}/eval_gpu_8k_40/eval.json", 8192),
    ("16384 tokens, 110 prompts", f"{PROXY}/eval_gpu/eval.json", 16384),
    ("16384 tokens, 440 prompts", f"{PROXY}/eval_gpu_16k_40/eval.json", 16384),
]
LENGTHS_RUNS = f"{PROXY}/distill_lengths_gpu"
QUALITY_DISTILL_LENGTHS = [
    (
        "4096, 1,100 prompts",
        [f"{LENGTHS_RUNS}/eval_4k_100/eval.json", f"{LENGTHS_RUNS}/longer_4k_100/eval.json"],
        4096,
    ),
    ("8192, 440", [f"{LENGTHS_RUNS}/eval_8k_40/eval.json", f"{LENGTHS_RUNS}/longer_8k_40/eval.json"], 8192),
    ("16384, 440", f"{PROXY}/eval_gpu_16k_40/eval.json", 16384),
]
QUALITY_HELDOUT = [
    (f"{n} tokens, 80 prompts", f"{PROXY}/heldout_gpu/eval.json", n) for n in (4096, 8192, 16384)
]
CONTINUED = "results/proxy_v7_continued"
QUALITY_CONTINUED = [
    ("4096, v7, 1,100 prompts", f"{PROXY}/eval_gpu_4k_100/eval.json", 4096),
    ("4096, continued, 1,100", f"{CONTINUED}/eval_4k_100/eval.json", 4096),
    ("8192, v7, 440", f"{PROXY}/eval_gpu_8k_40/eval.json", 8192),
    ("8192, continued, 440", f"{CONTINUED}/eval_long_40/eval.json", 8192),
    ("16384, continued, 440", f"{CONTINUED}/eval_long_40/eval.json", 16384),
]
_SPAN = re.compile(r"(<!-- table: ([\w-]+) -->\n)(.*?)(<!-- end table -->)", re.DOTALL)
SHAPE_NAMES = {
    "qwen3-8b": "Qwen3-8B (32 q / 8 kv heads, D 128)",
    "qwen3.5-9b": "Qwen3.5-9B full-attn layer (16 / 4, D 256)",
}


def _load(rel: str) -> dict:
    return json.loads((ROOT / rel).read_text())


def _rows(paths: str | list[str]) -> list[dict]:
    """The rows of one eval JSON, or of several runs on the same prompts merged: a (label, length,
    task) cell that two runs both hold (their dense rows, say) is kept once, and only if the two
    agree prompt for prompt, since pairing against dense is meaningful only then."""
    merged: dict[tuple, dict] = {}
    for path in [paths] if isinstance(paths, str) else paths:
        for row in _load(path)["rows"]:
            key = (row["label"], row["length"], row["task"])
            seen = merged.setdefault(key, row)
            if seen is not row and seen["correct"] != row["correct"]:
                raise ValueError(
                    f"{path}: {key} differs from an earlier run's answers on the same prompts; "
                    "runs merged into one table must share their prompts and their dense rows"
                )
    return list(merged.values())


def _kernel_cell(rows: list[dict], shape: str, method: str, density: float) -> str:
    for r in rows:
        if r["shape"] == shape and r["method"] == method and abs(r["density"] - density) < 0.01 and r["ms"]:
            return f"{r['ms']:.1f} ms / {r['tflops']:.0f}"
    return "n/a"


def kernels_table() -> str:
    """One layer's attention at 128K tokens, 10% kept, per method and block size."""
    b128 = _load(f"{SPEED}/kernels_bs128.json")
    b64 = _load(f"{SPEED}/kernels_bs64.json")
    cols = [
        ("ours, Triton, block 64", b64, "ours-bs64", 0.1),
        ("ours, Triton, block 128", b128, "ours-bs128", 0.1),
        ("ours, FA4 backend, block 128", b128, "fa4-bs128", 0.1),
        ("FlexAttention, block 128", b128, "flex-bs128", 0.1),
        ("dense SDPA cuDNN", b128, "sdpa-cudnn", 1.0),
        ("dense FA4", b128, "fa4-dense", 1.0),
    ]
    lines = [
        f"{b128['environment']['device']}, bf16, batch 1, 128K tokens, median ms / effective TFLOP/s over the kept causal pairs:",
        "",
        "| shape | " + " | ".join(c[0] for c in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for shape, name in SHAPE_NAMES.items():
        cells = [_kernel_cell(src["rows"], shape, method, d) for _, src, method, d in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ttft_table() -> str:
    """Whole-model prefill of the Qwen3-8B shape at 128K tokens, both dense baselines and the ceiling."""
    data = _load(f"{SPEED}/ttft_qwen3-8b_128k.json")
    rows = data["rows"]
    first = rows[0]
    lines = [
        f"Qwen3-8B shape (random bf16 weights), {first['seq_len'] // 1024}K tokens, {data['environment']['device']}, "
        "time to the first token's logits:",
        "",
        "| run | kept | seconds | vs SDPA dense | vs FA4 dense | share of the no-op ceiling |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "seconds" not in r:
            continue
        kept = "all" if r["budget"] == "dense" else f"{r['density']:.3f}"
        vs_fa4 = r.get("speedup_vs_fa4")
        lines.append(
            f"| {r['method'] if r['budget'] == 'dense' else r['method'] + ' ' + r['budget']} | {kept} | {r['seconds']:.2f} | "
            f"{r['speedup']:.2f}x | {f'{vs_fa4:.2f}x' if vs_fa4 else 'n/a'} | {r['fraction_of_ceiling']:.2f} |"
        )
    lines.append(
        f"| attention as a no-op (ceiling) | none | {first['noop_ceiling_s']:.2f} | {first['ceiling_speedup']:.2f}x | "
        f"{first['fa4_dense_s'] / first['noop_ceiling_s']:.2f}x | 1.00 |"
    )
    return "\n".join(lines) + "\n"


def quality_table() -> str:
    """Each selection method on the bundled proxy at 4096 tokens: macro ± 95% CI, paired vs dense."""
    return _method_rows(QUALITY, lambda s: -s["accuracy"])


def quality_budget_table() -> str:
    """The block oracle and the indexer at 4096 tokens under larger budgets, the same 1,100 prompts."""
    return _method_rows(QUALITY_BUDGET, lambda s: (s["method"] != "dense", s["method"], s["density"] or 1.0))


def _method_rows(paths: list[str], order: Callable[[dict], object]) -> str:
    """One row per method at 4096 tokens (the runs merged by ``_rows``), sorted by ``order`` of its
    macro summary: macro ± 95% CI, the paired difference to dense, the kept blocks, the prompts."""
    from .eval.runner import macro

    rows = [r for r in _rows(paths) if r["length"] == 4096]
    lines = [
        "| method | macro accuracy, 95% CI | vs dense, paired | kept blocks | prompts per task |",
        "|---|---|---|---|---|",
    ]
    for (label, _), s in sorted(macro(rows).items(), key=lambda kv: order(kv[1])):
        prompts = min(r["samples"] for r in rows if r["label"] == label)
        paired = (
            "-" if s["vs_dense"] is None else f"{100 * s['vs_dense'][0]:+.1f} ± {100 * s['vs_dense'][1]:.1f}"
        )
        lines.append(
            f"| {label} | {100 * s['accuracy']:.1f} ± {100 * s['ci95']:.1f} | {paired} | "
            f"{s['density'] or 1.0:.3f} | {prompts} |"
        )
    return "\n".join(lines) + "\n"


def _paired_cell(s: dict) -> str:
    text = f"{100 * s['accuracy']:.1f} ± {100 * s['ci95']:.1f}"
    if s["vs_dense"] is not None:
        diff, half = s["vs_dense"]
        text += f" ({100 * diff:+.1f} ± {100 * half:.1f})"
    return text


def quality_lengths_table() -> str:
    """Each method at 1x, 2x and 4x the indexer's training length, every method of a column on the same
    prompts: macro ± 95% CI, and the paired difference to dense ± its 95% half-width."""
    return _method_grid(QUALITY_LENGTHS, _paired_cell, keep=lambda label: "[" not in label)


def quality_distill_lengths_table() -> str:
    """The bundled indexer (300 steps at 4096 tokens) against indexers distilled at 8192 and 16384
    tokens and for 900 steps at 4096, on the same prompts per length."""
    return _method_grid(QUALITY_DISTILL_LENGTHS, _paired_cell)


def quality_heldout_table() -> str:
    """The same cells on the held-out grammar: task variants the proxy's training never produced."""
    return _method_grid(QUALITY_HELDOUT, _paired_cell)


def quality_continued_table() -> str:
    """Bundled v7 against v7 trained on (not bundled), the same prompts per length."""
    return _method_grid(QUALITY_CONTINUED, _paired_cell)


def _method_grid(
    runs: list[tuple[str, str | list[str], int | None]],
    cell: Callable[[dict], str],
    keep: Callable[[str], bool] = lambda label: True,
) -> str:
    """One row per method (whose label ``keep`` accepts), one column per (title, eval JSON or runs
    merged by ``_rows``, length or None for the run's only one): ``cell`` of the method's macro
    summary there, empty where the run lacks the method."""
    from .eval.runner import macro

    columns = [
        (
            title,
            {
                label: s
                for (label, n), s in macro(_rows(paths)).items()
                if length in (None, n) and keep(label)
            },
        )
        for title, paths, length in runs
    ]
    labels = list(dict.fromkeys(label for _, summary in columns for label in summary))
    lines = ["| method | " + " | ".join(t for t, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label in labels:
        cells = [cell(summary[label]) if label in summary else "" for _, summary in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


PROFILE = f"{SPEED}/profile_qwen3-8b_128k.json"


def profile_table() -> str:
    """Where a sparse prefill's time goes, per phase (``bench profile``), one row per block size."""
    data = _load(PROFILE)
    rows = data["rows"]
    lines = [
        f"Qwen3-8B shape, {rows[0]['seq_len'] // 1024}K tokens, {rows[0]['budget']}, {data['environment']['device']}, "
        "milliseconds over the whole prefill (per layer in brackets):",
        "",
        "| block, backend | prefill | model (not attention) | attention kernel | scoring | selection | projection | rest of attention | scoring + selection / kernel |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = r["sparse_layers"]
        lines.append(
            f"| {r['block']}, {r['backend']} | {r['prefill_ms']:.0f} | {r['model_ms']:.0f} | "
            f"{r['kernel_ms']:.0f} ({r['kernel_ms'] / n:.1f}) | {r['scoring_ms']:.0f} ({r['scoring_ms'] / n:.2f}) | "
            f"{r['selection_ms']:.1f} | {r['projection_ms']:.1f} | {r['attention_other_ms']:.1f} | "
            f"{100 * r['scoring_selection_share_of_kernel']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


PROXY_GRID = [
    ("4096 tokens, 100 prompts", "results/proxy_v6_g2/eval_gpu_4k_100/eval.json", None),
    ("4096, 40 prompts", "results/proxy_v6_g2/eval_gpu_4k_token_oracle/eval.json", None),
    ("4096 with a dense last block, 40 prompts", "results/proxy_v6_g2/eval_gpu_4k_tail/eval.json", None),
    ("8192, 20 prompts", "results/proxy_v6_g2/eval_gpu_8k/eval.json", None),
    ("16384, 10 prompts", "results/proxy_v6_g2/eval_gpu_16k/eval.json", None),
]


def proxy_grid_table() -> str:
    """Every method of the previous proxy's (v6) evaluations, one column per run: macro ± 95% (kept)."""
    return _method_grid(
        PROXY_GRID,
        lambda s: f"{100 * s['accuracy']:.1f} ± {100 * s['ci95']:.1f} ({s['density'] or 1.0:.3f})",
    )


TABLES: dict[str, Callable[[], str]] = {
    "proxy-grid": proxy_grid_table,
    "kernels-128k": kernels_table,
    "ttft-128k": ttft_table,
    "quality-4k": quality_table,
    "quality-lengths": quality_lengths_table,
    "quality-budget": quality_budget_table,
    "quality-distill-lengths": quality_distill_lengths_table,
    "quality-heldout": quality_heldout_table,
    "quality-continued": quality_continued_table,
    "profile-128k": profile_table,
}


def render(text: str) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(2)
        if name not in TABLES:
            raise KeyError(f"unknown generated table {name!r}; known: {sorted(TABLES)}")
        return m.group(1) + TABLES[name]() + m.group(4)

    return _SPAN.sub(sub, text)


def doc_paths() -> list[Path]:
    if not (ROOT / "results").is_dir() or not (ROOT / "docs").is_dir():
        raise FileNotFoundError(
            f"{ROOT} has no results/ and docs/: docs-tables works on a source checkout installed with "
            "`pip install -e .`"
        )
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def stale_docs() -> list[Path]:
    """Docs whose generated tables differ from what the JSON renders."""
    return [p for p in doc_paths() if render(p.read_text()) != p.read_text()]


def render_docs() -> list[Path]:
    """Rewrite every generated table in place (atomically); returns the files that changed."""
    from hf_sparse_attn.runtime.fileio import atomic_write_text

    changed = stale_docs()
    for path in changed:
        atomic_write_text(path, render(path.read_text()))
    return changed
