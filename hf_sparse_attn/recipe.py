"""The distillation recipe behind `recipes/distill_*.py` and `hf-sparse-attn distill`.

Loads a frozen checkpoint, attaches indexers, packs a corpus (a `datasets` dataset, local text
files, or the synthetic generator) to the training length, and trains the indexers with
``IndexerDistillationTrainer`` under stock ``TrainingArguments``. ``--smoke`` swaps in a tiny random
model of the same family and a CPU-sized run, then checks that the loss fell and that the saved
indexer reloads to identical outputs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import torch

from .runtime.config import SparseAttentionConfig
from .runtime.fileio import atomic_write_text

FAMILIES = {
    "qwen3": {"model": "Qwen/Qwen3-8B"},
    "qwen3_5": {"model": "Qwen/Qwen3.5-9B"},
}


def build_parser(family: str, prog: str | None = None) -> argparse.ArgumentParser:
    from .distill import KL_BLOCKS

    p = argparse.ArgumentParser(
        prog=prog, description=f"Distill sparse-prefill indexers for a {family} checkpoint"
    )
    p.add_argument(
        "--model", default=FAMILIES[family]["model"], help="Hub id or local directory of the frozen model"
    )
    p.add_argument("--output-dir", default=f"indexer-{family}")
    p.add_argument("--seq-len", type=int, default=32768)
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--save-steps", type=int, default=100)
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--report-to", default="none", help="none | tensorboard | wandb ...")
    p.add_argument("--resume-from-checkpoint", default=None)
    data = p.add_mutually_exclusive_group()
    data.add_argument("--dataset", help="a `datasets` dataset name or path (text column --text-column)")
    data.add_argument("--text-files", nargs="+", help="local UTF-8 text files, one document each")
    data.add_argument(
        "--synthetic", action="store_true", help="random tokens with planted long-range repeats"
    )
    data.add_argument(
        "--tasks",
        action="store_true",
        help="prompts of the synthetic task suite (hf_sparse_attn.tasks) at --seq-len, for the proxy",
    )
    p.add_argument("--dataset-config", default=None)
    p.add_argument("--dataset-split", default="train")
    p.add_argument("--text-column", default="text")
    p.add_argument("--num-sequences", type=int, default=None, help="cap on packed training sequences")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--density", type=float, default=0.1, help="budget used for the logged recall")
    p.add_argument(
        "--min-sparse-len", type=int, default=4096, help="shortest prompt that runs sparse (saved config)"
    )
    p.add_argument(
        "--dense-tail-blocks", type=int, default=0, help="last query blocks kept dense (saved config)"
    )
    p.add_argument(
        "--kl-blocks",
        choices=KL_BLOCKS,
        default="all",
        help="distill the block distribution over all key blocks, or only over the ones the selector "
        "ranks (sink / local / dense-tail blocks are kept anyway)",
    )
    p.add_argument(
        "--indexer-heads",
        type=int,
        default=2,
        help="selection groups (a divisor of the kv heads; 1 = head-collapsed, needed for tensor parallel "
        "serving). 2 by default: on the bundled proxy one selection per kv head scored 85.9-86.4 against "
        "70.0 head-collapsed at 12.4%% kept, and at 128K a second group adds 3.0-3.2 ms of scoring per "
        "layer (about 2%% of a Qwen3-8B prefill); 8 groups would add 21-23 ms, about the attention kernel's "
        "own time (docs/quality.md, selection groups)",
    )
    p.add_argument("--indexer-dim", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny random model on the CPU, a few steps, checks")
    return p


def smoke_config(family: str):
    """A tiny random config of the family, for CI."""
    if family == "qwen3":
        from transformers import Qwen3Config

        return Qwen3Config(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=4096,
        )
    from transformers.models.qwen3_5 import Qwen3_5TextConfig

    return Qwen3_5TextConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        max_position_embeddings=4096,
    )


def _load(args: argparse.Namespace, family: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.smoke:
        torch.manual_seed(args.seed)
        model = AutoModelForCausalLM.from_config(
            copy.deepcopy(smoke_config(family)), attn_implementation="sdpa"
        )
        return model, None
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        args.model,
        dtype=dtype,
        attn_implementation="sdpa",
        device_map="cuda" if torch.cuda.is_available() else None,
    )
    return model, AutoTokenizer.from_pretrained(args.model)


def _dataset(args: argparse.Namespace, model, tokenizer):
    from .distill import PackedDataset, SyntheticRetrievalDataset

    if args.tasks:
        from .tasks import TASKS, generate

        count = args.num_sequences or args.max_steps * args.batch_size * args.grad_accum
        names = sorted(TASKS)
        texts = (
            generate(names[i % len(names)], tokenizer, args.seq_len, seed=args.seed * 1_000_003 + i).prompt
            for i in range(count * 2)
        )
        return PackedDataset(texts, tokenizer, args.seq_len, count)
    if args.synthetic or args.smoke or (args.dataset is None and args.text_files is None):
        if not (args.synthetic or args.smoke):
            raise ValueError("choose training data: --dataset NAME, --text-files FILES, or --synthetic")
        size = args.num_sequences or max(8, args.max_steps * args.batch_size * args.grad_accum)
        return SyntheticRetrievalDataset(model.config.vocab_size, args.seq_len, size, seed=args.seed)
    if args.text_files:
        texts = (Path(path).read_text(encoding="utf-8") for path in args.text_files)
    else:
        from datasets import load_dataset

        ds = load_dataset(args.dataset, args.dataset_config, split=args.dataset_split, streaming=True)
        texts = (row[args.text_column] for row in ds)
    return PackedDataset(texts, tokenizer, args.seq_len, args.num_sequences)


def training_arguments(args: argparse.Namespace):
    """The Trainer's arguments; a run shorter than the logging interval still logs its last step."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=min(20, args.max_steps // 10),
        logging_steps=min(args.logging_steps, args.max_steps),  # the summary needs a logged loss
        save_steps=args.save_steps,
        report_to=args.report_to,
        bf16=torch.cuda.is_available(),
        use_cpu=args.smoke or not torch.cuda.is_available(),
        seed=args.seed,
        dataloader_num_workers=0,
        save_total_limit=3,
    )


def run(args: argparse.Namespace, family: str) -> dict:
    from .distill import IndexerDistillationTrainer
    from .runtime.modeling import indexer_state_dict, load_indexer

    if args.smoke:
        args.seq_len, args.max_steps, args.logging_steps, args.save_steps = 256, 24, 4, 12
        args.learning_rate, args.block_size, args.batch_size, args.grad_accum = 2e-2, 16, 2, 1
    model, tokenizer = _load(args, family)
    sparse = SparseAttentionConfig(
        block_size=args.block_size,
        density=args.density,
        indexer_heads=args.indexer_heads,
        indexer_dim=args.indexer_dim,
        min_sparse_len=args.min_sparse_len,
        dense_tail_blocks=args.dense_tail_blocks,
    )
    train_dataset = _dataset(args, model, tokenizer)
    training_args = training_arguments(args)
    trainer = IndexerDistillationTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        sparse_config=sparse,
        kl_blocks=args.kl_blocks,
        processing_class=tokenizer,
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    recalls = [e["recall"] for e in trainer.state.log_history if "recall" in e]
    summary = {
        "output_dir": args.output_dir,
        "steps": trainer.state.global_step,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "first_recall": recalls[0],
        "last_recall": recalls[-1],
    }
    if args.smoke:
        if not losses[-1] < losses[0]:
            raise RuntimeError(f"smoke run: the loss did not decrease ({losses[0]:.4g} -> {losses[-1]:.4g})")
        fresh, _ = _load(args, family)
        load_indexer(fresh, args.output_dir)
        trained, reloaded = indexer_state_dict(model), indexer_state_dict(fresh)
        if trained.keys() != reloaded.keys() or any(
            not torch.equal(trained[n], reloaded[n]) for n in trained
        ):
            raise RuntimeError("smoke run: the reloaded indexer differs from the trained one")
        summary["reload"] = f"{len(reloaded)} indexer tensors identical"
    atomic_write_text(os.path.join(args.output_dir, "distill_summary.json"), json.dumps(summary, indent=2))
    return summary


COUNTS = ("seq_len", "max_steps", "batch_size", "grad_accum", "save_steps", "logging_steps")


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse what would fail only after the model is loaded: counts below 1, a missing local --model."""
    for name in COUNTS:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    model = args.model
    looks_local = model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model
    if not args.smoke and looks_local and not os.path.isdir(os.path.expanduser(model)):
        parser.error(
            f"--model {model}: no such directory; pass a local model directory or a Hub repo id such as "
            f"{FAMILIES['qwen3']['model']}"
        )


def main(family: str, argv: list[str] | None = None, prog: str | None = None) -> dict:
    """Run the recipe; ``prog`` names the command in ``--help`` and errors (default: the script's name)."""
    parser = build_parser(family, prog)
    args = parser.parse_args(argv)
    _check(parser, args)
    summary = run(args, family)
    print(json.dumps(summary, indent=2))
    return summary
