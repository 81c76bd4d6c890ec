"""The lab's ``hf-sparse-attn`` commands: ``eval``, ``kcache-agreement``, ``bench``.

Registered through the ``hf_sparse_attn.commands`` entry point, so the library's CLI lists them
without importing this package.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re

from hf_sparse_attn_cli import _at_least_one, _batch_lengths, _floats, _ints

NOT_SETTABLE = {
    "selector": "each method sets it (--methods)",
    "top_k": "each method sets its budget (--densities)",
    "density": "each method sets its budget (--densities)",
    "top_p": "each method sets its budget (--top-ps)",
    "layer_top_p": "indexer_dual_topp sets it (--layer-top-p)",
    "min_sparse_len": "eval sets it to half the shortest of --lengths, so that every length runs sparse",
}


def _config_override(text: str) -> tuple[str, object]:
    """``FIELD=VALUE`` of ``eval --set``: a sparse-config field and its JSON value (bare words are strings)."""
    import dataclasses

    from hf_sparse_attn.runtime.config import SparseAttentionConfig

    field, sep, raw = text.partition("=")
    known = sorted(f.name for f in dataclasses.fields(SparseAttentionConfig) if f.name != "format_version")
    if not sep or field not in known:
        raise argparse.ArgumentTypeError(
            f"expected FIELD=VALUE with FIELD one of {', '.join(known)}; got {text!r}"
        )
    if field in NOT_SETTABLE:
        raise argparse.ArgumentTypeError(f"{field} cannot be set here: {NOT_SETTABLE[field]}")
    try:
        return field, json.loads(raw)
    except json.JSONDecodeError:
        return field, raw


def _other_indexer(text: str) -> tuple[str, str]:
    """``NAME=DIR`` of ``eval --indexer``: a row label and a directory saved by ``save_indexer``."""
    from hf_sparse_attn.runtime.modeling import WEIGHTS_NAME

    name, sep, directory = text.partition("=")
    if not sep or not re.fullmatch(r"[\w.+-]+", name) or not directory:
        raise argparse.ArgumentTypeError(
            f"expected NAME=DIR (NAME of letters, digits, '.', '+', '-' or '_'; DIR a saved indexer); got {text!r}"
        )
    if not os.path.isfile(os.path.join(directory, WEIGHTS_NAME)):
        raise argparse.ArgumentTypeError(
            f"{directory} holds no {WEIGHTS_NAME}: pass a directory written by save_indexer or a distill recipe"
        )
    return name, directory


def _bench(args: argparse.Namespace) -> int:
    import torch

    from .bench import report

    if args.what == "cpu-prefill":
        from hf_sparse_attn.demo import PROXY_DIR

        from .bench.cpu_prefill import run as run_cpu_prefill

        rows = run_cpu_prefill(PROXY_DIR, _ints(args.seq_lens or "4k,16k"), rounds=args.rounds)
        cols = ["seq_len", "threads", "kept_blocks", "sparse_s", "dense_s", "speedup", "rel_err"]
        title = "Bundled proxy prefill on a CPU, vectorized sparse ops vs dense sdpa (fastest of interleaved runs)"
        print("wrote", ", ".join(report.save("cpu_prefill", args.out, rows, cols, title).values()))
        return 0
    if not torch.cuda.is_available():
        raise ValueError(f"bench {args.what} needs a CUDA device; on a CPU: hf-sparse-attn bench cpu-prefill")
    args.seq_lens = args.seq_lens or "16k,32k,64k,128k"
    if args.what == "kernels":
        from .bench.kernels import run

        def show(r):
            speed = f"{r.ms:.3f} ms, {r.tflops:.0f} TFLOP/s" if r.ms else "not timed"
            print(
                f"{r.shape} S={r.seq_len} d={r.density:.3f} {r.method}: {speed}, rel_err={r.rel_err} {r.note}",
                flush=True,
            )

        rows = run(
            args.shapes.split(","),
            _ints(args.seq_lens),
            _floats(args.densities),
            block=args.block_size,
            with_flex=not args.no_flex,
            progress=show,
        )
        cols = [
            "shape",
            "seq_len",
            "density",
            "method",
            "ms",
            "tflops",
            "speedup_vs_cudnn",
            "rel_err",
            "note",
        ]
        paths = report.save(
            "kernels", args.out, rows, cols, "Block-sparse attention kernels", report.plot_kernels
        )
    elif args.what == "selection":
        from .bench.kernels import selection_cost

        rows = []
        for method in args.methods.split(","):
            for S in _ints(args.seq_lens):
                rows.append(selection_cost(S, block=args.block_size, method=method))
                print(rows[-1], flush=True)
        cols = [
            "shape",
            "method",
            "seq_len",
            "block",
            "density",
            "total_ms",
            "scoring_ms",
            "peak_extra_mib",
            "s_by_s_bf16_mib",
        ]
        paths = report.save("selection", args.out, rows, cols, "Selection cost per method (one layer)")
    elif args.what == "decode":
        from .bench.decode import attention_rows, end_to_end_rows

        densities = [d for d in _floats(args.densities) if d < 1.0]
        rows = attention_rows(_ints(args.seq_lens), _ints(args.batches), densities, block=args.block_size)
        cols = [
            "batch",
            "seq_len",
            "density",
            "sdpa_ms",
            "kernel_all_blocks_ms",
            "step_ms",
            "step_int4_kcache_ms",
            "scoring_ms",
            "scoring_reference_ms",
            "kernel_ms",
            "speedup_step_vs_sdpa",
            "speedup_kernel_vs_sdpa",
            "gate_rel_err",
        ]
        paths = report.save(
            "decode_attention", args.out, rows, cols, "Decode attention, one Qwen3-8B layer, one step"
        )
        static_cases = _batch_lengths(args.static_cases)
        if static_cases:
            from .bench.decode import static_compiled_rows

            static = static_compiled_rows(
                static_cases, densities[0], block=args.block_size, num_layers=args.num_layers
            )
            cols = ["num_layers", "batch", "seq_len", "density"]
            for name in ("dense", "all_blocks", "sparse"):
                cols += [f"{name}_eager_ms", f"{name}_compiled_ms", f"{name}_compiled_vs_eager_rel_err"]
            cols += ["speedup_vs_dense_compiled", "speedup_vs_all_blocks_compiled"]
            paths.update(
                report.save(
                    "decode_static_compiled",
                    args.out,
                    static,
                    cols,
                    "Decode per token, Qwen3-8B shape, StaticCache + torch.compile(mode='reduce-overhead')",
                )
            )
        cases = _batch_lengths(args.e2e_cases)
        if cases:  # --e2e-cases '' times the attention only
            e2e = end_to_end_rows(cases, densities[0], block=args.block_size)
            cols = [
                "batch",
                "seq_len",
                "density",
                "dense_ms",
                "sparse_ms",
                "speedup",
                "cache_cat_ms",
                "kv_cache_gib",
                "indexer_kcache_bf16_mib",
                "indexer_kcache_4bit_mib",
            ]
            paths.update(
                report.save(
                    "decode_e2e", args.out, e2e, cols, "Decode per token, Qwen3-8B shape, DynamicCache"
                )
            )
    elif args.what == "ttft":
        from .bench.ttft import run as run_ttft

        budgets = [{"density": d} for d in _floats(args.densities) if d < 1.0]
        rows = []
        for shape in args.shapes.split(","):
            rows += run_ttft(shape, _ints(args.seq_lens), budgets, block=args.block_size)
        cols = [
            "model",
            "seq_len",
            "method",
            "budget",
            "density",
            "seconds",
            "speedup",
            "speedup_vs_fa4",
            "ceiling_speedup",
            "fraction_of_ceiling",
            "peak_mem_gib",
            "gate_rel_err_density_1",
        ]
        paths = report.save(
            "ttft", args.out, rows, cols, "Prefill time (TTFT), full-size shapes, random weights"
        )
    elif args.what == "profile":
        from .bench.profile import PHASES
        from .bench.profile import run as run_profile

        rows, kernels = [], []
        cases = itertools.product(
            args.shapes.split(","),
            _ints(args.seq_lens),
            [d for d in _floats(args.densities) if d < 1.0],
            args.backends.split(","),
        )
        for shape, S, density, backend in cases:
            row, top = run_profile(shape, S, {"density": density}, args.block_size, backend)
            rows.append(row)
            kernels += [{**{c: row[c] for c in ("model", "seq_len", "backend", "budget")}, **k} for k in top]
            print(row, flush=True)
        cols = ["model", "seq_len", "block", "backend", "budget", "density", "sparse_layers", "prefill_ms"]
        cols += [f"{p}_ms" for p in PHASES] + ["scoring_selection_share_of_kernel"]
        paths = report.save("profile", args.out, rows, cols, "Sparse prefill, time per phase (CUDA events)")
        paths.update(
            report.save(
                "profile_kernels",
                args.out,
                kernels,
                ["model", "seq_len", "backend", "budget", "kernel", "calls", "ms", "share"],
                "Sparse prefill, CUDA kernels by device time (torch.profiler)",
            )
        )
    elif args.what == "distill":
        from .bench.distill import run as run_distill

        rows = run_distill("qwen3-8b", _ints(args.seq_lens))
        cols = [
            "model",
            "seq_len",
            "layers_distilled",
            "step_s",
            "dense_forward_s",
            "steps_300_min",
            "peak_mem_gib",
        ]
        paths = report.save(
            "distill", args.out, rows, cols, "One distillation step (Qwen3-8B shape, random weights)"
        )
    else:
        from .bench.memory import run as run_memory

        rows = run_memory(_ints(args.seq_lens))
        for r in rows:
            print(r, flush=True)
        paths = report.save(
            "memory",
            args.out,
            rows,
            ["method", "seq_len", "density", "peak_extra_mib", "s_by_s_bf16_mib"],
            "Peak prefill memory of the demo model",
        )
    print("wrote", ", ".join(paths.values()))
    return 0


def _shares(text: str, flag: str) -> list[float]:
    """A comma list of budgets in (0, 1], checked before any model is loaded or row is run."""
    values = _floats(text)
    bad = [v for v in values if not 0 < v <= 1]
    if bad:
        raise ValueError(f"{flag} takes shares of the blocks in (0, 1], got {bad}")
    return values


def _task_list(text: str) -> list[str] | None:
    """``--tasks``: "all" (the trained tasks: None), "heldout" (the held-out grammar variants) or a comma list."""
    from hf_sparse_attn.tasks import HELD_OUT_TASKS

    if text == "all":
        return None
    if text == "heldout":
        return list(HELD_OUT_TASKS)
    return text.split(",")


def _eval(args: argparse.Namespace) -> int:
    import torch

    from hf_sparse_attn.runtime.modeling import update_sparse_config

    from .eval.methods import ADAPTIVE, build_methods
    from .eval.runner import (
        calibration_prompts,
        evaluate,
        evaluate_matched_topk,
        macro,
        write_report,
    )
    from .proxy import PROXY_DIR, load_proxy
    from .retrieval_heads import find_retrieval_heads

    names = args.methods.split(",")
    other_indexers = dict(args.indexer or [])
    if len(other_indexers) < len(args.indexer or []):
        raise ValueError("--indexer: each NAME once (it labels the rows)")
    if args.matched_topk and not set(names) & set(ADAPTIVE):
        raise ValueError(
            f"--matched-topk needs at least one adaptive method in --methods: {', '.join(ADAPTIVE)}"
        )
    densities, top_ps = _shares(args.densities, "--densities"), _shares(args.top_ps, "--top-ps")
    lengths = _ints(args.lengths)
    if min(lengths) < 1:
        raise ValueError(f"--lengths takes prompt lengths in tokens >= 1, got {args.lengths!r}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_dir = args.model or str(PROXY_DIR)
    model, tok = load_proxy(model_dir, device)
    overrides = dict(args.set or [])
    if overrides:
        update_sparse_config(model, **overrides)
    heads = None
    if "retrieval_heads" in names:
        prompts = calibration_prompts(tok, min(lengths))
        heads, mass = find_retrieval_heads(model, prompts, args.retrieval_heads)
        print(f"retrieval heads ([layer, kv head], most long-range mass on {len(prompts)} prompts): {heads}")
        print("long-range mass per layer x kv head:", [[round(float(x), 3) for x in row] for row in mass])
    methods = build_methods(
        args.methods.split(","),
        densities,
        top_ps,
        layer_top_p=args.layer_top_p,
        block_sizes=_ints(args.block_sizes) if args.block_sizes else None,
        retrieval_heads=heads,
        horizontal_threshold=args.horizontal_threshold,
        other_indexers=other_indexers,
    )
    tasks = _task_list(args.tasks)
    rows = evaluate(model, tok, methods, lengths, tasks, args.samples, args.batch_size)
    if args.matched_topk:
        rows += evaluate_matched_topk(model, tok, rows, tasks, args.samples, args.batch_size)
    meta = {
        "model": model_dir,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "samples_per_task": args.samples,
        "lengths": args.lengths,
        **({"retrieval_heads": heads} if heads else {}),
        **({"config_overrides": overrides} if overrides else {}),
        **({"other_indexers": other_indexers} if other_indexers else {}),
    }
    paths = write_report(rows, args.out, meta)
    for (label, length), s in macro(rows).items():
        dens = "-" if s["density"] is None else f"{s['density']:.3f}"
        print(f"{length:>6} {label:<40} density {dens:>6}  macro {100 * s['accuracy']:.1f}")
    print("wrote", ", ".join(paths.values()))
    return 0


def _kcache_agreement(args: argparse.Namespace) -> int:
    import torch

    from hf_sparse_attn.ops.kcache_quant.naive import FORMATS
    from hf_sparse_attn.runtime.modeling import sparse_config_of

    from .bench import report
    from .eval.kcache_agreement import (
        REFERENCE_ROUNDINGS,
        capture_indexer_qk,
        selection_agreement,
    )
    from .eval.runner import calibration_prompts
    from .proxy import PROXY_DIR, load_proxy

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_proxy(args.model or str(PROXY_DIR), device)
    prompts = calibration_prompts(tok, args.length, per_task=args.per_task)
    captured = capture_indexer_qk(model, prompts)
    config = sparse_config_of(model)
    rows = []
    for i, group in enumerate(_ints(args.groups)):
        formats = (*FORMATS, *REFERENCE_ROUNDINGS) if i == 0 else FORMATS  # the roundings are group-free
        for fmt, r in selection_agreement(captured, config, formats, group).items():
            reference = fmt in REFERENCE_ROUNDINGS
            rows.append(
                {
                    "format": f"{fmt} (reference rounding)" if reference else fmt,
                    "group": "-" if reference else group,
                    "length": args.length,
                    "prompts": len(prompts),
                    **r,
                }
            )
            print(rows[-1], flush=True)
    cols = [
        "format",
        "group",
        "length",
        "prompts",
        "agreement",
        "mass_recall",
        "bytes_per_key",
        "compression",
    ]
    paths = report.save(
        "kcache_agreement",
        args.out,
        rows,
        cols,
        "4-bit indexer K-cache: selections vs the model-precision indexer keys",
    )
    print("wrote", ", ".join(paths.values()))
    return 0


def _selection_recall(args: argparse.Namespace) -> int:
    import torch

    from .bench import report
    from .eval.runner import calibration_prompts
    from .eval.selection_recall import RECALLS, selection_recall
    from .proxy import PROXY_DIR, load_proxy

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_proxy(args.model or str(PROXY_DIR), device)
    rows = []
    for length in _ints(args.lengths):
        prompts = calibration_prompts(tok, length, per_task=args.per_task)
        per_layer = selection_recall(model, prompts)
        for layer, r in [*per_layer.items(), ("mean", _mean_recall(per_layer))]:
            row = {"length": length, "layer": layer, "prompts": len(prompts), **r}
            shares = {"indexer_share": r["indexer"] / r["oracle"]}
            shares["question_share"] = r["indexer_question"] / r["oracle_question"]
            rows.append(row | shares)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    paths = report.save(
        "selection_recall",
        args.out,
        rows,
        ["length", "layer", "prompts", *RECALLS, "indexer_share", "question_share"],
        "Dense attention mass inside the indexer's and the block oracle's selections",
    )
    print("wrote", ", ".join(paths.values()))
    return 0


def _mean_recall(per_layer: dict[int, dict[str, float]]) -> dict[str, float]:
    from .eval.selection_recall import RECALLS

    return {k: sum(r[k] for r in per_layer.values()) / len(per_layer) for k in RECALLS}


def _docs_tables(args: argparse.Namespace) -> int:
    from .docs_tables import render_docs, stale_docs

    if args.check:
        stale = stale_docs()
        for path in stale:
            print(f"{path}: generated tables differ from results/*.json (run hf-sparse-attn docs-tables)")
        return 1 if stale else 0
    for path in render_docs():
        print(f"rewrote {path}")
    return 0


def _transformers_tests(args: argparse.Namespace) -> int:
    from .transformers_tests.runner import run

    return run(args.work, args.pytest_args)


def add_commands(sub) -> None:
    """Add the lab's subcommands to the ``hf-sparse-attn`` parser."""
    tt = sub.add_parser(
        "transformers-tests",
        help="transformers' common model tests on Qwen3 with attention through sparse_prefill "
        "(fetches the installed transformers' sdist from the package index; needs pytest, parameterized)",
    )
    tt.add_argument("--work", default=None, help="work folder (default: a new temporary one)")
    tt.add_argument("pytest_args", nargs="*", help="passed to pytest (e.g. -k training)")
    tt.set_defaults(func=_transformers_tests)
    tables = sub.add_parser(
        "docs-tables", help="render the README's and docs' tables from results/*.json (run from a checkout)"
    )
    tables.add_argument("--check", action="store_true", help="only report docs whose tables are stale")
    tables.set_defaults(func=_docs_tables)
    ev = sub.add_parser(
        "eval", help="task accuracy of selection methods (dense, oracles, indexer, baselines)"
    )
    ev.add_argument("--model", default=None, help="model directory with indexer (default: the bundled proxy)")
    ev.add_argument(
        "--methods",
        default="dense,token_oracle,block_oracle,indexer,indexer_topp,patterns,streaming,random",
        help="comma list of: dense, token_oracle, block_oracle, indexer, indexer_topp, indexer_dual_topp, "
        "retrieval_heads, patterns, patterns_horizontal, streaming, random",
    )
    ev.add_argument(
        "--densities",
        default="0.1",
        help="budgets of the density-based methods (default: the shipped config's)",
    )
    ev.add_argument("--top-ps", default="0.9", help="budgets of the top-p methods")
    ev.add_argument("--layer-top-p", type=float, default=None, help="per-layer p of indexer_dual_topp")
    ev.add_argument(
        "--retrieval-heads", type=int, default=2, help="kv heads kept dense by the retrieval_heads method"
    )
    ev.add_argument(
        "--horizontal-threshold",
        type=float,
        default=0.8,
        help="probe mass a row must keep (patterns_horizontal)",
    )
    ev.add_argument(
        "--matched-topk",
        action="store_true",
        help="then run the indexer at the top-k budget that keeps what each adaptive method kept "
        "(indexer_topp, indexer_dual_topp, retrieval_heads, patterns_horizontal): equal-cost rows",
    )
    ev.add_argument("--block-sizes", default=None, help="comma list to sweep block sizes (default: model's)")
    ev.add_argument(
        "--set",
        action="append",
        type=_config_override,
        metavar="FIELD=VALUE",
        help="change a sparse-config field for every method, e.g. --set dense_tail_blocks=0 "
        "--set local_blocks=1 (repeatable; budgets and selectors come from the method flags)",
    )
    ev.add_argument(
        "--indexer",
        action="append",
        type=_other_indexer,
        metavar="NAME=DIR",
        help="also run the indexer method with the indexer saved in DIR in the model's place, rows "
        "labelled [NAME], on the same prompts and paired against the same dense rows (repeatable)",
    )
    ev.add_argument("--lengths", default="4096,8192,16384", help="prompt lengths in tokens")
    ev.add_argument(
        "--tasks",
        default="all",
        help="all (the tasks the proxy trains on), heldout (grammar variants training never produces: "
        "other hop counts, k-of-n queries, prefix-sharing distractors, repeated keys) or a comma list",
    )
    ev.add_argument("--samples", type=_at_least_one, default=20, help="prompts per (task, length)")
    ev.add_argument("--batch-size", type=_at_least_one, default=16)
    ev.add_argument("--device", default=None)
    ev.add_argument("--out", default="results/eval")
    ev.set_defaults(func=_eval)
    agree = sub.add_parser(
        "kcache-agreement",
        help="how often a 4-bit indexer K-cache selects the blocks bf16 indexer keys select (bundled proxy)",
    )
    agree.add_argument(
        "--model", default=None, help="model directory with indexer (default: the bundled proxy)"
    )
    agree.add_argument("--length", type=int, default=4096, help="calibration prompt length in tokens")
    agree.add_argument("--per-task", type=_at_least_one, default=1, help="calibration prompts per task")
    agree.add_argument("--groups", default="16,8", help="comma list of quantization group sizes")
    agree.add_argument("--device", default=None)
    agree.add_argument("--out", default="results/kcache")
    agree.set_defaults(func=_kcache_agreement)
    recall = sub.add_parser(
        "selection-recall",
        help="dense attention mass the indexer's blocks keep vs the block oracle's, per prompt length",
    )
    recall.add_argument(
        "--model", default=None, help="model directory with indexer (default: the bundled proxy)"
    )
    recall.add_argument("--lengths", default="4096,8192,16384", help="comma list of prompt lengths in tokens")
    recall.add_argument("--per-task", type=_at_least_one, default=2, help="prompts per task and length")
    recall.add_argument("--device", default=None)
    recall.add_argument("--out", default="results/selection_recall")
    recall.set_defaults(func=_selection_recall)
    bench = sub.add_parser(
        "bench",
        help="GPU benchmarks: kernels | selection | memory | distill | ttft | profile | decode; "
        "on a CPU: cpu-prefill",
    )
    bench.add_argument(
        "what",
        choices=["kernels", "selection", "memory", "distill", "ttft", "profile", "decode", "cpu-prefill"],
    )
    bench.add_argument("--shapes", default="qwen3-8b,qwen3.5-9b")
    bench.add_argument(
        "--seq-lens",
        default=None,
        help="comma list; 'k' = x1024 (default 16k,32k,64k,128k; cpu-prefill 4k,16k)",
    )
    bench.add_argument(
        "--rounds",
        type=_at_least_one,
        default=3,
        help="cpu-prefill: interleaved sparse / dense runs per length",
    )
    bench.add_argument(
        "--densities", default="1.0,0.2,0.1,0.05", help="kernels: kept fractions; ttft: the budgets below 1.0"
    )
    bench.add_argument("--block-size", type=int, default=128)
    bench.add_argument(
        "--methods",
        default="indexer,indexer_topp,indexer_dual_topp,retrieval_heads,patterns,patterns_horizontal",
        help="selection: the selection methods to time",
    )
    bench.add_argument("--batches", default="1,8", help="decode: batch sizes of the attention-only rows")
    bench.add_argument(
        "--e2e-cases", default="1x32k,1x128k,8x32k", help="decode: BATCHxLENGTH cases timed end to end"
    )
    bench.add_argument(
        "--static-cases",
        default="1x128k,8x32k",
        help="decode: BATCHxLENGTH cases timed end to end over a StaticCache under torch.compile (CUDA graphs)",
    )
    bench.add_argument(
        "--num-layers",
        type=int,
        default=None,
        help="decode: keep the first N layers in the static-cache rows, for caches that do not fit (ratio = lower bound)",
    )
    bench.add_argument(
        "--backends", default="auto", help="profile: block-sparse backends to profile (auto, triton, fa4)"
    )
    bench.add_argument("--no-flex", action="store_true", help="skip FlexAttention baselines")
    bench.add_argument("--out", default="results", help="folder for JSON / markdown / PNG")
    bench.set_defaults(func=_bench)
