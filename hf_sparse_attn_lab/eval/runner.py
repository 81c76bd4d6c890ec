"""`hf-sparse-attn eval`: task accuracy per (method, length), with the density each method really kept.

The model runs greedy generation through ``model.generate`` on left-padded batches (what
``pipeline("text-generation")`` does); the prefill goes through the method's selection, decode steps
are dense. Samples are seeded per (task, length, index), so every method sees the same prompts.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from hf_sparse_attn.runtime.attention import (
    FORCED_BLOCKS_FILL_BUDGET,
    clear_selections,
    kept_density_per_layer,
    sparse_at_every_budget,
)
from hf_sparse_attn.runtime.fileio import atomic_write, atomic_write_text
from hf_sparse_attn.runtime.log import silenced
from hf_sparse_attn.runtime.modeling import (
    ARCHITECTURE_FIELDS,
    load_indexer,
    save_indexer,
    sparse_config_of,
    update_sparse_config,
)
from hf_sparse_attn.tasks import HELD_OUT_TASKS, TASKS, generate, score

from ..bench.report import have_matplotlib
from ..proxy import greedy_answers
from .methods import Method, attention_name, matched_topk_methods, register_token_oracle, streaming_changes

EVAL_SEED = 1_000_000
CALIBRATION_SEED = 3_000_000


def calibration_prompts(
    tokenizer, length: int, per_task: int = 1, tasks: list[str] | None = None
) -> list[torch.Tensor]:
    """[1, S] token ids (BOS + prompt) of every task, seeded apart from the eval prompts."""
    out = []
    for task in tasks or list(TASKS):
        for i in range(per_task):
            sample = generate(task, tokenizer, length, seed=CALIBRATION_SEED + 7919 * i)
            ids = [tokenizer.bos_token_id] + tokenizer(sample.prompt, add_special_tokens=False)["input_ids"]
            out.append(torch.tensor([ids]))
    return out


def answer_budget(task: str) -> int:
    """Greedy tokens to generate: enough for the longest answer of the task plus separators."""
    if task.startswith("vt_hops"):  # one name per hop plus the first, ~3 tokens each with separators
        return 3 * (int(task.removeprefix("vt_hops")) + 1) + 1
    budgets = {"niah_multivalue": 40, "niah_multiquery": 40, "niah_multiquery_4of6": 40, "cwe": 30, "vt": 16}
    return budgets.get(task, 30 if task.startswith("niah_multiquery") else 20)


def evaluate(
    model: torch.nn.Module,
    tokenizer,
    methods: list[Method],
    lengths: list[int],
    tasks: list[str] | None = None,
    samples: int = 20,
    batch_size: int = 16,
    progress: bool = True,
) -> list[dict]:
    """One row per (method, length, task): accuracy, measured kept density, seconds.

    Every budget runs the sparse path, also where a user's run would switch to dense because dense is
    faster there (``attention.sparse_at_every_budget``): the rows measure the selection itself."""
    from tqdm.auto import tqdm

    tasks = tasks or list(TASKS)
    unknown = sorted(set(tasks) - set(TASKS) - set(HELD_OUT_TASKS))
    if unknown:
        raise ValueError(
            f"unknown tasks {unknown}; known: {sorted(TASKS)}, held-out grammar: {sorted(HELD_OUT_TASKS)}"
        )
    register_token_oracle()
    base = sparse_config_of(model).to_dict()
    rows: list[dict] = []
    bar = tqdm(total=len(methods) * len(lengths) * len(tasks), desc="eval", disable=not progress)
    try:
        with indexer_swaps(model, methods) as use_indexer_of:
            for length in lengths:
                prompts = {
                    t: [generate(t, tokenizer, length, seed=EVAL_SEED + 7919 * i) for i in range(samples)]
                    for t in tasks
                }
                for method in methods:
                    use_indexer_of(method)
                    changes = dict(method.changes)
                    quiet = nullcontext()
                    if method.name == "streaming":
                        changes.pop("density")
                        config = replace(sparse_config_of(model), **_restore(base, changes))
                        changes.update(streaming_changes(method, length, config))
                        # sink + local blocks only by design: the warning that they fill the budget would
                        # tell the user to fix what the baseline is meant to be
                        quiet = silenced(FORCED_BLOCKS_FILL_BUDGET)
                    changes["min_sparse_len"] = min(lengths) // 2
                    update_sparse_config(model, **_restore(base, changes))
                    model.set_attn_implementation(attention_name(method))
                    with quiet, sparse_at_every_budget():
                        for task in tasks:
                            bar.set_postfix_str(f"{length} {method.label} {task}")
                            rows.append(
                                _run(model, tokenizer, method, length, task, prompts[task], batch_size)
                            )
                            bar.update()
    finally:
        update_sparse_config(model, **_restore(base, {}))
        model.set_attn_implementation("sparse_prefill")
        bar.close()
    return rows


@contextlib.contextmanager
def indexer_swaps(model: torch.nn.Module, methods: list[Method]) -> Iterator[Callable[[Method], None]]:
    """Yields ``use(method)``: puts the method's other indexer (``Method.indexer``) in the model, or the
    model's own back. Every other indexer is loaded once up front, so one that does not fit the model
    fails before any prompt runs; the model's own indexer is back on exit, also after an error."""
    others = {m.indexer for m in methods if m.indexer is not None}
    if not others:
        yield lambda method: None
        return
    current: list[str | None] = [None]  # the directory whose indexer the model holds; None: its own
    with tempfile.TemporaryDirectory(prefix="own-indexer-") as own:
        save_indexer(model, own)

        def put(directory: str | None) -> None:
            if directory != current[0]:
                load_indexer(model, directory or own)
                current[0] = directory

        try:
            for _, directory in sorted(others):
                put(directory)
            yield lambda method: put(method.indexer[1] if method.indexer is not None else None)
        finally:
            if current[0] is not None:
                load_indexer(model, own)


def _restore(base: dict, changes: dict) -> dict:
    fixed = ("format_version", *ARCHITECTURE_FIELDS)
    keep = {k: v for k, v in base.items() if k not in fixed}
    if {"top_k", "density", "top_p"} & set(changes):
        keep.update(top_k=None, density=None, top_p=None, layer_top_p=None)
    return keep | changes


def _run(model, tokenizer, method: Method, length: int, task: str, samples, batch_size: int) -> dict:
    per_layer: list[dict[int, float]] = []
    outputs = []
    start = time.perf_counter()
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        outputs += greedy_answers(
            model, tokenizer, [s.prompt for s in chunk], answer_budget(task), batch_size
        )
        if method.name not in ("dense", "token_oracle"):
            per_layer.append(kept_density_per_layer(model))
    clear_selections(model)
    correct = [score(o, s.answers, tokenizer) for o, s in zip(outputs, samples, strict=True)]
    layers = sorted({layer for batch in per_layer for layer in batch})
    layer_density = {
        layer: sum(b[layer] for b in per_layer if layer in b) / sum(layer in b for b in per_layer)
        for layer in layers
    }
    if method.name == "token_oracle":
        measured = method.target_density
    elif method.name == "dense":
        measured = 1.0
    else:
        measured = sum(layer_density.values()) / len(layer_density) if layer_density else None
    return {
        "method": method.name,
        "label": method.label,
        "length": length,
        "task": task,
        "accuracy": sum(correct) / len(correct),
        "samples": len(correct),
        "correct": [int(c) for c in correct],
        "target_density": method.target_density,
        "density": measured,
        "layer_density": layer_density,
        "block_size": method.changes.get("block_size"),
        "seconds": round(time.perf_counter() - start, 2),
        "example_output": outputs[0],
        "example_answers": samples[0].answers,
        "outputs": outputs,
        "answers": [s.answers for s in samples],
    }


def evaluate_matched_topk(
    model: torch.nn.Module,
    tokenizer,
    rows: list[dict],
    tasks: list[str] | None = None,
    samples: int = 20,
    batch_size: int = 16,
    progress: bool = True,
) -> list[dict]:
    """Rows of the indexer at top-k (density) budgets whose kept density equals what each adaptive
    method (top-p, dual top-p, retrieval heads, horizontal rows) kept in ``rows``, on the same prompts."""
    out: list[dict] = []
    for length, methods in matched_topk_methods(macro(rows), sparse_config_of(model)).items():
        out += evaluate(model, tokenizer, methods, [length], tasks, samples, batch_size, progress)
    return out


def macro_interval(tasks: list[tuple[float, int]]) -> float:
    """95% half-width of a macro accuracy (mean over tasks) from each task's (accuracy, prompts): the
    tasks are independent binomials, so var(macro) = sum of p (1 - p) / (n - 1) over tasks / tasks^2."""
    var = sum(p * (1 - p) / max(1, n - 1) for p, n in tasks) / len(tasks) ** 2
    return 1.96 * math.sqrt(var)


def paired_difference(method_rows: list[dict], dense_rows: list[dict]) -> tuple[float, float] | None:
    """(macro accuracy minus dense, 95% half-width) over the same prompts, paired per prompt; None when
    the rows lack per-prompt results or do not cover the same tasks and prompt counts."""
    dense = {r["task"]: r.get("correct") for r in dense_rows}
    diffs = []
    for r in method_rows:
        a, b = r.get("correct"), dense.get(r["task"])
        if a is None or b is None or len(a) != len(b):
            return None
        diffs.append([x - y for x, y in zip(a, b, strict=True)])
    if not diffs:
        return None
    means = [sum(d) / len(d) for d in diffs]
    var = (
        sum(
            sum((x - m) ** 2 for x in d) / max(1, len(d) - 1) / len(d)
            for d, m in zip(diffs, means, strict=True)
        )
        / len(diffs) ** 2
    )
    return sum(means) / len(means), 1.96 * math.sqrt(var)


def macro(rows: list[dict]) -> dict[tuple[str, int], dict]:
    """{(label, length): {"accuracy": macro over tasks, "ci95": its 95% half-width, "vs_dense": (paired
    difference to dense on the same prompts, half-width) or None, "density": mean measured density}}."""
    out: dict[tuple[str, int], dict] = {}
    for r in rows:
        entry = out.setdefault(
            (r["label"], r["length"]),
            {"method": r["method"], "block_size": r.get("block_size"), "rows": [], "dens": []},
        )
        entry["rows"].append(r)
        if r["density"] is not None:
            entry["dens"].append(r["density"])
    dense = {length: e["rows"] for (label, length), e in out.items() if e["method"] == "dense"}
    return {
        key: {
            "method": e["method"],
            "block_size": e["block_size"],
            "accuracy": sum(r["accuracy"] for r in e["rows"]) / len(e["rows"]),
            "ci95": macro_interval([(r["accuracy"], r["samples"]) for r in e["rows"]]),
            "vs_dense": None
            if e["method"] == "dense" or key[1] not in dense
            else paired_difference(e["rows"], dense[key[1]]),
            "density": sum(e["dens"]) / len(e["dens"]) if e["dens"] else None,
        }
        for key, e in out.items()
    }


def write_report(rows: list[dict], out_dir: str | os.PathLike, meta: dict) -> dict[str, str]:
    """JSON (rows + meta), a markdown table per length, and PNG plots (if matplotlib is installed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    summary = macro(rows)
    table = [{"label": label, "length": length, **values} for (label, length), values in summary.items()]
    atomic_write_text(out / "eval.json", json.dumps({"meta": meta, "summary": table, "rows": rows}, indent=2))
    lines = [f"# Eval: {meta.get('model', '')}", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k != "model"]
    for length in lengths:
        lines += ["", f"## {length} tokens", ""]
        lines.append(
            "| method | kept density | macro, 95% CI | vs dense, paired | " + " | ".join(tasks) + " |"
        )
        lines.append("|---|---|---|---|" + "---|" * len(tasks))
        for label in dict.fromkeys(r["label"] for r in rows if r["length"] == length):
            acc = {r["task"]: r["accuracy"] for r in rows if r["label"] == label and r["length"] == length}
            s = summary[(label, length)]
            dens = "-" if s["density"] is None else f"{s['density']:.3f}"
            cells = " | ".join(f"{100 * acc[t]:.0f}" if t in acc else "-" for t in tasks)
            paired = (
                "-" if s["vs_dense"] is None else "{:+.1f} ± {:.1f}".format(*(100 * x for x in s["vs_dense"]))
            )
            lines.append(
                f"| {label} | {dens} | **{100 * s['accuracy']:.1f}** ± {100 * s['ci95']:.1f} | {paired} | {cells} |"
            )
    lines += _layer_table(rows, lengths)
    atomic_write_text(out / "eval.md", "\n".join(lines) + "\n")
    files = {"json": str(out / "eval.json"), "markdown": str(out / "eval.md")}
    files.update(_plots(summary, lengths, out))
    return files


def _layer_table(rows: list[dict], lengths: list[int]) -> list[str]:
    """Per-layer kept density of each block-sparse method (mean over tasks): where the budget went."""
    per: dict[tuple[str, int], dict[int, list[float]]] = {}
    for r in rows:
        for layer, d in (r.get("layer_density") or {}).items():
            per.setdefault((r["label"], r["length"]), {}).setdefault(int(layer), []).append(d)
    if not per:
        return []
    layers = sorted({layer for v in per.values() for layer in v})
    lines = ["", "## Per-layer kept density (mean over tasks)", ""]
    lines.append("| method | length | " + " | ".join(f"layer {i}" for i in layers) + " |")
    lines.append("|---|---|" + "---|" * len(layers))
    for length in lengths:
        for (label, n), v in per.items():
            if n == length:
                cells = " | ".join(f"{sum(v[i]) / len(v[i]):.3f}" if i in v else "-" for i in layers)
                lines.append(f"| {label} | {n} | {cells} |")
    return lines


def _plots(summary: dict, lengths: list[int], out: Path) -> dict[str, str]:
    if not have_matplotlib():
        return {}
    import matplotlib.pyplot as plt

    files = {}
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # distinct colours beyond 10 methods
    for label in dict.fromkeys(k[0] for k in summary):
        xs = [n for n in lengths if (label, n) in summary]
        ax.plot(xs, [100 * summary[(label, n)]["accuracy"] for n in xs], marker="o", label=label)
    ax.set(xscale="log", xlabel="prompt tokens", ylabel="macro accuracy (%)", title="accuracy vs length")
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(out / "accuracy_vs_length.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    files["plot_length"] = str(out / "accuracy_vs_length.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # distinct colours beyond 10 methods
    by_method: dict[str, list[tuple[float, float]]] = {}
    for (label, n), s in summary.items():
        if n == lengths[0] and s["density"] is not None:
            name = s["method"] + ("" if "block_size" not in label else " " + label.split()[-1])
            by_method.setdefault(name, []).append((s["density"], 100 * s["accuracy"]))
    for name, pts in by_method.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set(
        xlabel="kept density",
        ylabel="macro accuracy (%)",
        title=f"accuracy vs density at {lengths[0]} tokens",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(out / "accuracy_vs_density.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    files["plot_density"] = str(out / "accuracy_vs_density.png")
    plt.close(fig)
    return files
