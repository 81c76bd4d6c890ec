"""Train the proxy backbone (a ~5M-parameter Qwen3) on the synthetic task suite, seed fixed.

python recipes/train_proxy.py --output-dir proxy-qwen3                  # on a GPU (~8 min on an H100)
python recipes/train_proxy.py --smoke                                   # CPU check of the loop

Sparse-aware continuation of a trained proxy; proxy v6 is the dense-only run (proxy-v2) plus these
eight continuations (the first two on an H200, the others on an H100; all of them ran on the filler
haystack that the standard-library prose has replaced, so rerun today they give another v6):
python recipes/train_proxy.py --output-dir stage1 --init-from proxy-v2 --sparse-fraction 0.5 \
    --train-len 8192 --min-len 1024 --learning-rate 4e-4 --warmup-steps 50 --time-budget 320 --steps 100000
python recipes/train_proxy.py --output-dir proxy-v3 --init-from stage1 --sparse-fraction 0.75 \
    --train-len 8192 --min-len 2048 --learning-rate 3e-4 --warmup-steps 30 --time-budget 390 --steps 100000
python recipes/train_proxy.py --output-dir proxy-v4 --init-from proxy-v3 --sparse-fraction 0.75 \
    --train-len 8192 --min-len 4096 --learning-rate 2e-4 --warmup-steps 30 --time-budget 420 --steps 100000
W="--task-weight niah_multivalue=2 --task-weight niah_multiquery=2 --task-weight niah_multikey_2=1.5"
python recipes/train_proxy.py --output-dir stage4 --init-from proxy-v4 --sparse-fraction 0.75 \
    --sparse-random-share 0.33 $W --train-len 8192 --min-len 3072 --learning-rate 2e-4 --warmup-steps 30 \
    --time-budget 360 --steps 100000
python recipes/train_proxy.py --output-dir proxy-v5 --init-from stage4 --sparse-fraction 0.6 \
    --sparse-random-share 0.33 $W --train-len 8192 --min-len 4096 --learning-rate 1.5e-4 --warmup-steps 20 \
    --time-budget 320 --steps 100000
for stage in 6 7 8; do  # three repeats of one stage: half of the sparse steps on random blocks
  python recipes/train_proxy.py --output-dir stage$stage --init-from $PREVIOUS --sparse-fraction 0.7 \
      --sparse-random-share 0.5 $W --train-len 8192 --min-len 4096 --learning-rate 1e-4 --warmup-steps 30 \
      --time-budget 330 --steps 100000
done  # PREVIOUS: proxy-v5, then stage6, stage7; stage8 is proxy-v6

The bundled proxy v7 is v6 continued on the standard-library prose haystack and the varied grammar, to
16384 tokens, on an H200 (--init-from grows v6's vocabulary to the current one; then distill_proxy.py):
python recipes/train_proxy.py --output-dir proxy-v7 --init-from proxy-v6 --train-len 16384 --min-len 2048 \
    --sparse-fraction 0.5 --sparse-random-share 0.5 --sparse-block-size 32 --sparse-dense-tail-blocks 0 \
    --learning-rate 3e-4 --warmup-steps 50 --prompt-loss-weight 0.25 --time-budget 1000 --steps 1000000 \
    --workers 14 $W --task-weight cwe=3

On a machine whose calls are time-limited, split one schedule over calls (keep the output directory
outside a checkout that is re-synced between calls, or resume.pt goes with the sync):
python recipes/train_proxy.py --output-dir proxy-qwen3 --time-budget 1500 --stop-after 500
python recipes/train_proxy.py --output-dir proxy-qwen3 --time-budget 1500 --stop-after 500 --resume   # x2
"""

import argparse
import json

import torch

from hf_sparse_attn_lab.proxy import TASK_WEIGHTS, ProxyTrainingConfig, train_proxy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--output-dir", default="proxy-qwen3")
    p.add_argument("--steps", type=int, default=ProxyTrainingConfig.steps)
    p.add_argument("--train-len", type=int, default=ProxyTrainingConfig.train_len)
    p.add_argument("--min-len", type=int, default=ProxyTrainingConfig.min_len)
    p.add_argument("--warmup-steps", type=int, default=ProxyTrainingConfig.warmup_steps)
    p.add_argument(
        "--init-from",
        default=None,
        help="continue from a trained proxy directory's weights (its vocabulary may be a prefix of the current one)",
    )
    p.add_argument(
        "--sparse-fraction",
        type=float,
        default=ProxyTrainingConfig.sparse_fraction,
        help="share of steps run on each layer's block-oracle selection (sparse-aware training)",
    )
    p.add_argument(
        "--sparse-random-share",
        type=float,
        default=ProxyTrainingConfig.sparse_random_share,
        help="share of the sparse-aware steps whose blocks are drawn at random instead of by the oracle",
    )
    p.add_argument(
        "--sparse-block-size",
        type=int,
        default=ProxyTrainingConfig.sparse_block_size,
        help="block size of the sparse-aware steps' selections (match the block size the proxy is served with)",
    )
    p.add_argument(
        "--sparse-dense-tail-blocks",
        type=int,
        default=ProxyTrainingConfig.sparse_dense_tail_blocks,
        help="last query blocks kept dense in the sparse-aware steps (match the serving config)",
    )
    p.add_argument(
        "--task-weight",
        action="append",
        default=[],
        metavar="TASK=W",
        help="sampling weight of one task (repeatable; the others keep TASK_WEIGHTS)",
    )
    p.add_argument("--tokens-per-step", type=int, default=ProxyTrainingConfig.tokens_per_step)
    p.add_argument("--learning-rate", type=float, default=ProxyTrainingConfig.learning_rate)
    p.add_argument("--prompt-loss-weight", type=float, default=ProxyTrainingConfig.prompt_loss_weight)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--time-budget", type=float, default=None, help="seconds; stop early and save")
    p.add_argument("--stop-after", type=float, default=None, help="seconds; end this call with resume.pt")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/resume.pt")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    weights = dict(TASK_WEIGHTS)
    for item in args.task_weight:
        task, _, value = item.partition("=")
        try:
            weights[task] = float(value)
        except ValueError:
            p.error(f"--task-weight takes TASK=W with W a number, got {item!r}")
    cfg = ProxyTrainingConfig(
        steps=args.steps,
        train_len=args.train_len,
        min_len=args.min_len,
        warmup_steps=args.warmup_steps,
        init_from=args.init_from,
        sparse_fraction=args.sparse_fraction,
        sparse_random_share=args.sparse_random_share,
        sparse_block_size=args.sparse_block_size,
        sparse_dense_tail_blocks=args.sparse_dense_tail_blocks,
        task_weights=weights,
        tokens_per_step=args.tokens_per_step,
        learning_rate=args.learning_rate,
        prompt_loss_weight=args.prompt_loss_weight,
        seed=args.seed,
        time_budget_s=args.time_budget,
    )
    if args.smoke:
        cfg.steps, cfg.train_len, cfg.min_len, cfg.tokens_per_step, cfg.warmup_steps = 6, 256, 128, 1024, 2
        cfg.sparse_min_len = 128
    device = "cuda" if torch.cuda.is_available() else "cpu"
    summary = train_proxy(
        args.output_dir,
        cfg,
        device=device,
        num_workers=args.workers,
        log_every=1 if args.smoke else 50,
        stop_after_s=args.stop_after,
        resume=args.resume,
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "log"}, indent=2))


if __name__ == "__main__":
    main()
