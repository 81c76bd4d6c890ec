"""Benchmark results -> JSON + markdown table + PNG plot, stamped with the device and versions."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from typing import Any

import torch

from hf_sparse_attn.runtime.fileio import atomic_write, atomic_write_text


def environment() -> dict[str, Any]:
    import transformers

    env = {
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def save(
    name: str, out_dir: str, rows: list[Any], columns: list[str], title: str, plot=None
) -> dict[str, str]:
    """Write ``<name>.json`` and ``<name>.md`` (and ``<name>.png`` via ``plot(rows, path)``)."""
    os.makedirs(out_dir, exist_ok=True)
    dicts = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r) for r in rows]
    env = environment()
    paths = {"json": os.path.join(out_dir, f"{name}.json"), "md": os.path.join(out_dir, f"{name}.md")}
    atomic_write_text(paths["json"], json.dumps({"environment": env, "rows": dicts}, indent=1))
    atomic_write_text(
        paths["md"],
        f"# {title}\n\n{', '.join(f'{k} {v}' for k, v in env.items())}\n\n{markdown_table(dicts, columns)}\n",
    )
    if plot is not None and have_matplotlib():
        paths["png"] = os.path.join(out_dir, f"{name}.png")
        plot(dicts, paths["png"])
    return paths


def have_matplotlib() -> bool:
    """Whether PNG plots can be drawn (headless backend); says so when they cannot."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no PNG plot (pip install 'hf-sparse-attn[lab]')")
        return False
    matplotlib.use("Agg")
    return True


def plot_kernels(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib.pyplot as plt

    shapes = sorted({r["shape"] for r in rows})
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4.5), squeeze=False)
    for ax, shape in zip(axes[0], shapes, strict=True):
        sub = [r for r in rows if r["shape"] == shape and r["ms"]]
        for method in sorted({r["method"] for r in sub}):
            pts = [r for r in sub if r["method"] == method]
            by_len: dict[int, list] = {}
            for r in pts:
                by_len.setdefault(r["seq_len"], []).append(r)
            if method.startswith(("ours", "flex-bs")):
                for dens in sorted({round(r["density"], 2) for r in pts}, reverse=True):
                    series = sorted(
                        (r for r in pts if round(r["density"], 2) == dens), key=lambda r: r["seq_len"]
                    )
                    ax.plot(
                        [r["seq_len"] for r in series],
                        [r["speedup_vs_cudnn"] or 0 for r in series],
                        marker="o" if method.startswith("ours") else "x",
                        linestyle="-" if method.startswith("ours") else "--",
                        label=f"{method} d={dens:.2f}",
                    )
            else:
                series = sorted(pts, key=lambda r: r["seq_len"])
                ax.plot(
                    [r["seq_len"] for r in series],
                    [r["speedup_vs_cudnn"] or 0 for r in series],
                    marker="s",
                    linestyle=":",
                    label=method,
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("sequence length")
        ax.set_ylabel("speedup vs SDPA cuDNN dense causal")
        ax.set_title(shape)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
