"""Command line: ``hf-sparse-attn demo`` (more subcommands arrive with their issues)."""

from __future__ import annotations

import argparse
import json
import sys

from .config import SparseAttentionConfig


def _budget_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--density", type=float, help="fraction of causal blocks kept per query block (default 0.1)"
    )
    g.add_argument("--top-k", type=int, help="key blocks kept per query block")
    g.add_argument("--top-p", type=float, help="smallest block set holding this share of the selector's mass")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--selector", choices=["indexer", "oracle"], default="indexer")


def _sparse_config(args: argparse.Namespace) -> SparseAttentionConfig:
    return SparseAttentionConfig(
        block_size=args.block_size,
        density=args.density,
        top_k=args.top_k,
        top_p=args.top_p,
        selector=args.selector,
        min_sparse_len=1,
    )


def _demo(args: argparse.Namespace) -> int:
    import torch

    from .demo import run_demo

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    result = run_demo(args.seq_len, _sparse_config(args), device, seed=args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"hf-sparse-attn demo: tiny random Qwen3 (4 layers, 8 q / 2 kv heads), {result['seq_len']} tokens, "
        f"{result['budget']}, block {result['block_size']}, selector {args.selector}, on {device}"
    )
    print("per-layer kept fraction of causal blocks:")
    for layer, frac in result["per_layer_kept_fraction"].items():
        print(f"  layer {layer}: {'dense' if frac is None else f'{frac:.3f}'}")
    print(f"mean kept fraction (density): {result['mean_kept_fraction']:.3f}")
    print(
        f"max |sparse - dense| logits at this density: {result['max_abs_diff_vs_dense']:.4g} "
        f"(top-1 agreement {result['top1_agreement_vs_dense']:.1%})"
    )
    print(
        f"max |sparse - dense| logits at density 1.0:  {result['max_abs_diff_vs_dense_at_full_density']:.3g}"
    )
    print(
        f"prefill seconds: dense {result['seconds_dense']:.2f}, sparse {result['seconds_sparse']:.2f} "
        "(CPU reference path; the speed path is the Triton kernel on CUDA)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-sparse-attn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="one sparse vs dense prefill on the bundled default model")
    demo.add_argument("--seq-len", type=int, default=4096)
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", action="store_true", help="print the result as JSON")
    _budget_args(demo)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, NotImplementedError, FileNotFoundError) as err:
        print(f"hf-sparse-attn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
