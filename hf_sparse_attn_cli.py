"""Command line of hf-sparse-attn: run the demo, distill, publish, build the kernel repo.

A module beside the package rather than inside it: importing ``hf_sparse_attn`` registers the
attention with transformers (seconds of torch / transformers imports), and ``--help`` should not wait
for that; each command imports what it needs. The lab's commands (eval, kcache-agreement, bench) come
from the ``hf_sparse_attn.commands`` entry point group.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import entry_points

COMMANDS_GROUP = "hf_sparse_attn.commands"


def _demo(args: argparse.Namespace) -> int:
    import torch

    from hf_sparse_attn.demo import PROXY_DIR, run_demo

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is visible to torch; use --device cpu")
    result = run_demo(args.model or PROXY_DIR, args.seq_len, device=device)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    cfg = result["sparse_config"]
    budget = next(f"{k}={cfg[k]}" for k in ("top_k", "density", "top_p") if cfg.get(k) is not None)
    print(
        f"hf-sparse-attn demo: {result['model']} via trust_remote_code + pipeline('text-generation'), "
        f"~{result['seq_len']} tokens per prompt, selector {cfg['selector']}, {budget}, block {cfg['block_size']}, "
        f"on {device}"
    )
    for row in result["rows"]:
        print(f"\n{row['task']} ({row['tokens']} tokens), expected: {', '.join(row['answers_as_generated'])}")
        for mode in ("dense", "sparse"):
            r = row[mode]
            dens = "-" if r["kept_density"] is None else f"{r['kept_density']:.3f}"
            mark = "ok " if r["correct"] else "MISS"
            print(f"  {mode:6s} {mark} kept {dens}  {r['seconds']:6.2f}s  {r['output'][:70]}")
    acc, secs = result["accuracy"], result["seconds"]
    dens = result["mean_kept_density"]
    print(
        f"\naccuracy: dense {acc['dense']:.0%}, sparse {acc['sparse']:.0%}; kept block density "
        f"{'-' if dens is None else f'{dens:.3f}'}; seconds: dense {secs['dense']:.1f}, sparse {secs['sparse']:.1f}"
    )
    if device == "cpu":
        print(
            "(CPU: vectorized PyTorch ops; the seconds include generation, whose decode steps are dense in "
            "both; on CUDA the Triton kernel or FlashAttention-4 runs)"
        )
    return 0


def _ints(text: str) -> list[int]:
    """ "4096,16k" -> [4096, 16384]."""
    try:
        return [int(float(x[:-1]) * 1024) if x.lower().endswith("k") else int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(
            f"expected a comma list of whole numbers (a 'k' suffix multiplies by 1024, e.g. 4096,16k), got {text!r}"
        ) from None


def _batch_lengths(text: str) -> list[tuple[int, int]]:
    """ "1x128k,8x32k" -> [(1, 131072), (8, 32768)]; "" -> []."""
    return [(int(b), _ints(n)[0]) for b, n in (c.split("x") for c in text.split(",") if c)]


def _at_least_one(text: str) -> int:
    """argparse type of a count (prompts, batch rows, runs): a whole number >= 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return n


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"expected a comma list of numbers (e.g. 0.1,0.05), got {text!r}") from None


def _distill(args: argparse.Namespace) -> int:
    from hf_sparse_attn.recipe import main as recipe_main

    recipe_main(args.family, args.recipe_args, prog=f"hf-sparse-attn distill {args.family}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hf_sparse_attn.hub.publish import push, render_repo, resolve_revision

    base_revision = args.base_revision
    if not args.full:
        base_revision = resolve_revision(args.base_model, args.base_revision, "base model", "--base-revision")
    out = render_repo(
        args.out,
        args.indexer,
        args.base_model,
        base_revision,
        model_dir=args.full,
        repo_name=args.repo_id,
        kernel_repo=args.kernel_repo,
        kernel_revision=args.kernel_revision,
        license=args.license,
        results_dir=args.results,
    )
    for path in sorted(Path(out).iterdir()):
        print(f"{path.stat().st_size:>14,d}  {path.name}")
    if args.kernel_revision is None:
        print(
            "warning: --kernel-revision not given: the repo's users run the slow reference ops until it is "
            "re-rendered with the commit of the uploaded kernel repo"
        )
    if args.dry_run or not args.repo_id:
        print(f"rendered {out} (not pushed: pass --repo-id ORG/NAME without --dry-run to upload)")
        return 0
    print(push(out, args.repo_id, private=args.private, revision=args.revision))
    return 0


def _build_kernels(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hf_sparse_attn.hub.kernel_repo import build_kernel_repo

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file: pass a folder for the kernel repo")
    print("built", build_kernel_repo(args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-sparse-attn",
        description="Trainable block-sparse long-context prefill for Qwen3 / Qwen3.5 in HF transformers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="dense vs sparse answers of the bundled proxy model on long prompts")
    demo.add_argument("--model", default=None, help="a rendered repo directory (default: the bundled proxy)")
    demo.add_argument("--seq-len", type=int, default=4096, help="prompt length in tokens")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    demo.add_argument("--json", action="store_true", help="print the result as JSON")
    demo.set_defaults(func=_demo)
    distill = sub.add_parser(
        "distill",
        help="distill indexers with the HF Trainer (same as recipes/distill_<family>.py)",
        description="Arguments after the family go to the recipe: hf-sparse-attn distill qwen3 --help",
    )
    distill.add_argument("family", choices=["qwen3", "qwen3_5"])
    distill.add_argument("recipe_args", nargs=argparse.REMAINDER)
    distill.set_defaults(func=_distill)
    publish = sub.add_parser(
        "publish", help="render (and push) a trust_remote_code Hub repo for a trained indexer"
    )
    publish.add_argument(
        "--indexer", required=True, help="directory written by save_indexer / the distill recipe"
    )
    publish.add_argument("--base-model", required=True, help="Hub id of the frozen base checkpoint")
    publish.add_argument(
        "--base-revision",
        default=None,
        help="base commit sha, or a branch/tag resolved to its commit on the Hub (default main; offline: a sha)",
    )
    publish.add_argument(
        "--full", default=None, metavar="MODEL_DIR", help="ship these backbone weights (full repo)"
    )
    publish.add_argument("--out", required=True, help="folder to render the repo into")
    publish.add_argument("--repo-id", default=None, help="ORG/NAME to push to")
    publish.add_argument("--revision", default=None, help="branch to push to")
    publish.add_argument("--private", action="store_true")
    publish.add_argument("--dry-run", action="store_true", help="render only")
    publish.add_argument("--kernel-repo", default="hf-sparse-attn/sparse-prefill-kernels")
    publish.add_argument(
        "--kernel-revision",
        default=None,
        help="40-hex commit of the kernel repo to pin (without it the published model runs the reference ops)",
    )
    publish.add_argument("--license", default="apache-2.0")
    publish.add_argument(
        "--results", default="results/kernels", help="benchmark JSON folder for the model card"
    )
    publish.set_defaults(func=_publish)
    build = sub.add_parser("build-kernels", help="build the Hub kernel repo from hf_sparse_attn/ops")
    build.add_argument("--out", default="hub_kernels")
    build.set_defaults(func=_build_kernels)
    for ep in entry_points(group=COMMANDS_GROUP):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, NotImplementedError) as err:
        print(f"hf-sparse-attn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # one line naming the path, not a traceback
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"hf-sparse-attn {args.command}: error{where}: {err.strerror or err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
