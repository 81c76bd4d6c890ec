"""`hf-sparse-attn demo`: the bundled proxy model answers long prompts, sparse next to dense.

Everything goes through the path a user takes with a published repo:
``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True,
attn_implementation="sparse_prefill")`` and ``pipeline("text-generation")``. The dense run is the same
model switched to ``sdpa`` with ``set_attn_implementation``, so the two differ only in the prefill.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .runtime.attention import clear_selections, kept_density
from .tasks import generate, score

PROXY_DIR = Path(__file__).parent / "assets" / "proxy-qwen3"
DEMO_TASKS = ("niah_single_2", "niah_multiquery", "vt", "niah_single_3")
DEMO_SEED = 2_000_000


def cache_root() -> Path:
    return Path(os.environ.get("HF_SPARSE_ATTN_CACHE", Path.home() / ".cache" / "hf-sparse-attn"))


def rendered_proxy_repo(source: Path = PROXY_DIR) -> Path:
    """The bundled proxy as a loadable repo: its files + the modeling file rendered from the installed
    sources, in a cache folder named by the hash of that file (made once, atomically, by rename)."""
    from .hub.bundle import MODELING_FILE, render_modeling_file

    code = render_modeling_file()
    key = hashlib.sha256(code.encode() + (source / "config.json").read_bytes()).hexdigest()[:16]
    target = cache_root() / f"{source.name}-{key}"
    if (target / MODELING_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for path in source.iterdir():
            if path.is_file():
                shutil.copyfile(path, tmp / path.name)
        (tmp / MODELING_FILE).write_text(code)
        try:
            os.rename(tmp, target)
        except OSError:  # another process rendered it first
            if not (target / MODELING_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_demo_pipeline(model_dir: str | os.PathLike = PROXY_DIR, device: str = "cpu"):
    """(pipeline, sparse_config dict) of a Hub-layout directory loaded with trust_remote_code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    model_dir = Path(model_dir)
    if model_dir.resolve() == PROXY_DIR.resolve():
        model_dir = rendered_proxy_repo()
    missing = [
        n
        for n in ("config.json", "indexer.safetensors", "modeling_sparse_prefill.py")
        if not (model_dir / n).exists()
    ]
    if missing:
        raise FileNotFoundError(
            f"{model_dir} is not a sparse_prefill repo (missing {', '.join(missing)}): pass a directory "
            "rendered by `hf-sparse-attn publish --full MODEL_DIR --out DIR --dry-run`"
        )
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, trust_remote_code=True, attn_implementation="sparse_prefill", dtype=dtype
    ).to(device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    sparse = json.loads((model_dir / "sparse_config.json").read_text())
    return pipe, sparse


@torch.no_grad()
def run_demo(
    model_dir: str | os.PathLike = PROXY_DIR,
    seq_len: int = 4096,
    tasks: tuple[str, ...] = DEMO_TASKS,
    device: str = "cpu",
    max_new_tokens: int = 40,
) -> dict:
    """Dense and sparse greedy answers for one prompt per task; accuracy, kept density, seconds."""
    pipe, sparse = load_demo_pipeline(model_dir, device)
    if seq_len < sparse["min_sparse_len"]:
        raise ValueError(
            f"--seq-len {seq_len} is below the model's min_sparse_len ({sparse['min_sparse_len']}): "
            "such prompts take the dense path in both runs; pass a longer --seq-len"
        )
    model, tok = pipe.model, pipe.tokenizer
    samples = [generate(task, tok, seq_len, seed=DEMO_SEED + i) for i, task in enumerate(tasks)]
    rows = []
    for sample in samples:
        row = {
            "task": sample.task,
            "answers": sample.answers,
            # as the model writes them (the proxy's vocabulary spells numbers digit by digit)
            "answers_as_generated": [
                tok.decode(tok(a, add_special_tokens=False)["input_ids"]) for a in sample.answers
            ],
            "tokens": len(tok(sample.prompt)["input_ids"]),
        }
        for mode in ("dense", "sparse"):
            model.set_attn_implementation("sdpa" if mode == "dense" else "sparse_prefill")
            clear_selections(model)
            start = time.perf_counter()
            out = pipe(
                tok.bos_token + sample.prompt,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                return_full_text=False,
                pad_token_id=tok.pad_token_id,
            )[0]["generated_text"]
            row[mode] = {
                "output": out.strip(),
                "correct": score(out, sample.answers, tok),
                "seconds": round(time.perf_counter() - start, 2),
                "kept_density": 1.0 if mode == "dense" else kept_density(model),
            }
        rows.append(row)
    model.set_attn_implementation("sparse_prefill")
    return {
        "model": str(model_dir),
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "device": device,
        "seq_len": seq_len,
        "sparse_config": sparse,
        "rows": rows,
        "accuracy": {m: sum(r[m]["correct"] for r in rows) / len(rows) for m in ("dense", "sparse")},
        "seconds": {m: round(sum(r[m]["seconds"] for r in rows), 2) for m in ("dense", "sparse")},
        "mean_kept_density": _mean([r["sparse"]["kept_density"] for r in rows]),
    }


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None
