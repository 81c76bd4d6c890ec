"""The proxy backbone: a small Qwen3 trained from scratch on the synthetic task suite.

Qwen weights cannot be downloaded here, so quality is measured on a model that genuinely needs
long-range attention: answering the tasks means retrieving a few needles from thousands of tokens.
Training (``train_proxy``) feeds a seeded stream of task prompts, mixes in a pure-induction copy
task, and grows the prompt length geometrically from 128 tokens to ``train_len``. The loss is the
answer cross-entropy plus a down-weighted next-token loss on the prompt: the repetitive haystacks
give that term a dense copying signal, which is what makes induction heads (and so retrieval)
appear; trained on the answer tokens alone the model stalled at the unigram loss. (Randomized position ids, tried for length extrapolation, stopped
retrieval from emerging at all: the previous-token heads that copying needs rely on a fixed
offset.) The result is saved in the layout of a Hub repo (config.json, model.safetensors,
tokenizer files, generation_config.json).

``init_from`` + ``sparse_fraction`` continue a trained proxy sparse-aware: that share of the steps
runs every layer on its block oracle's selection (``sparse_training``), so the proxy's attention
concentrates on few blocks as a pretrained LLM's does, and block selection can be judged on it.
``sparse_random_share`` runs part of those steps on random blocks, so the prompt's rows stop relying
on attention spread over the whole context (what cost an earlier proxy checkpoint its block-oracle accuracy).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Qwen3Config

from hf_sparse_attn.demo import PROXY_DIR
from hf_sparse_attn.runtime.config import SparseAttentionConfig
from hf_sparse_attn.runtime.fileio import atomic_write, atomic_write_text
from hf_sparse_attn.tasks import (
    TASKS,
    Sample,
    TaskBuilder,
    common_words,
    frequent_words,
    generate,
    niah,
    qa_retrieval,
    variable_tracking,
)

from .sparse_training import ATTENTION_NAME as ORACLE_SPARSE_TRAINING
from .sparse_training import register as register_oracle_sparse_training
from .sparse_training import set_training_sparsity

# Grammar that training draws besides the evaluated forms. The held-out grammar of the eval
# (``tasks.HELD_OUT_TASKS``: 2, 3, 5 or 6 hops, 2 or 4 of 6 keys asked, a decoy sharing 3 digits, a
# needle stated 3 times) is never drawn, so those rows measure whether the proxy learned the task.
VT_HOPS = (1, 4, 7)
NIAH_REPEATS = (1, 1, 1, 2, 4)
NIAH_DECOY_PREFIXES = (1, 2, 4, 5, 6)
HELD_OUT_QUERIES = {(6, 2), (6, 4)}  # (keys, asked)


def niah_grammar(rng: random.Random) -> dict:
    """Keyword arguments of ``tasks.niah`` for one varied training needle task."""
    num_keys = rng.randint(1, 6)
    num_queries = rng.randint(1, num_keys)
    while (num_keys, num_queries) in HELD_OUT_QUERIES:
        num_queries = rng.randint(1, num_keys)
    value_kind = rng.choice(["numbers", "numbers", "words"])
    return {
        "haystack": rng.choice(["repeat", "essay", "essay", "needle"]),
        "num_keys": num_keys,
        "num_values": rng.choice([1, 1, 2, 3, 4]) if num_keys <= 2 else 1,
        "num_queries": num_queries,
        "value_kind": value_kind,
        "repeats": rng.choice(NIAH_REPEATS),
        "decoy_prefix": rng.choice(NIAH_DECOY_PREFIXES)
        if value_kind == "numbers" and rng.random() < 0.3
        else 0,
    }


TRAINING_VARIANTS = {
    "niah_varied": lambda b, n: niah(b, n, task="niah_varied", **niah_grammar(b.rng)),
    "vt_varied": lambda b, n: variable_tracking(
        b, n, hops=b.rng.choice(VT_HOPS), chains=b.rng.choice([1, 1, 2]), task="vt_varied"
    ),
    "cwe_varied": lambda b, n: common_words(b, n, top=b.rng.randint(3, 10)),
    "fwe_varied": lambda b, n: frequent_words(b, n, top=b.rng.randint(2, 5)),
    "qa_varied": lambda b, n: qa_retrieval(b, n, distractors_per_doc=b.rng.randint(1, 5)),
}
TASK_WEIGHTS = (
    {task: 1.0 for task in TASKS}
    | {"vt": 1.5, "cwe": 2.0, "fwe": 2.0, "qa": 1.5, "copy": 3.0}
    | {"niah_varied": 4.0, "vt_varied": 2.0, "cwe_varied": 1.0, "fwe_varied": 1.0, "qa_varied": 1.0}
)


def copy_task(b: TaskBuilder, length: int) -> Sample:
    """Training-only warm-up: a span of random words hidden in an essay; its first 3 words cue the rest.

    Pure induction (find the cue, copy what followed it), the circuit every retrieval task builds on;
    training on it from the start is what lets retrieval emerge within minutes instead of stalling
    at the unigram loss.
    """
    span = [b.rng.choice(b.words) for _ in range(b.rng.randint(8, 40))]
    return b.assemble(
        "copy", length, "essay", [" ".join(span) + " ."], " ".join(span[:3]), [" ".join(span[3:])]
    )


def training_sample(task: str, tokenizer, length: int, seed: int) -> Sample:
    if task == "copy":
        return copy_task(TaskBuilder(tokenizer, seed), length)
    if task in TRAINING_VARIANTS:
        return TRAINING_VARIANTS[task](TaskBuilder(tokenizer, seed), length)
    return generate(task, tokenizer, length, seed=seed)


def proxy_config(tokenizer, max_position_embeddings: int = 65536) -> Qwen3Config:
    """6 layers, hidden 256, 8 query / 2 kv heads (GQA 4:1) of dim 32: about 5M parameters."""
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 100_000.0},
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def warm_start(init_dir: str | os.PathLike, tokenizer, attn_implementation: str = "sdpa"):
    """fp32 weights of a trained proxy directory, embeddings grown to ``tokenizer``'s vocabulary.

    The vocabulary only ever grows at its end (``vocab.vocabulary``), so a proxy trained before words
    were added keeps every token id: its embedding rows carry over and the added words start drawn
    from each dimension's mean and spread over the trained rows. A directory whose ids differ
    raises rather than continue on shuffled rows.
    """
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    path = Path(init_dir) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --init-from takes a trained proxy directory")
    old = PreTrainedTokenizerFast(tokenizer_file=str(path)).get_vocab()
    new = tokenizer.get_vocab()
    moved = sorted((w for w, i in old.items() if new.get(w) != i), key=old.get)
    if moved:
        raise ValueError(
            f"{path}: {len(moved)} of its {len(old)} tokens have other ids (or none) in the current "
            f"vocabulary, e.g. {moved[:5]}; its weights cannot be continued: train from scratch "
            "(drop --init-from)"
        )
    config = proxy_config(tokenizer)
    config.vocab_size = len(old)
    model = AutoModelForCausalLM.from_pretrained(  # the proxy config: no auto_map of a rendered repo
        init_dir, config=config, dtype=torch.float32, attn_implementation=attn_implementation
    )
    if len(tokenizer) > len(old):
        rows = model.get_input_embeddings().weight.detach()
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        added = model.get_input_embeddings().weight.data[len(old) :]
        added.copy_(rows.mean(0) + rows.std(0) * torch.randn_like(added))  # each dimension's spread
    return model


COUNTED_TASKS = {"cwe", "fwe"}  # answers are the words a list holds most often


def answer_text(sample: Sample) -> str:
    """The target completion: the answers in an order the model can compute, then ``.``.

    Retrieval answers come in the order they first occur in the prompt, a function of the prompt.
    Counted answers (common / frequent words) come most frequent first, ties in an order drawn from
    the prompt's hash: which of ten equally common words occurs first is not something attention
    that tallies words can see. (Proxy v6, trained on first-occurrence targets, scored 0 on common
    words at every length; v7, trained on this order, still does.) The scorer itself is order-free.
    """
    if sample.task in COUNTED_TASKS:
        counts = Counter(sample.prompt.split())
        order = random.Random(sample.prompt).sample(sample.answers, len(sample.answers))
        return " " + " , ".join(sorted(order, key=lambda w: -counts[w])) + " ."

    def first(answer: str) -> int:
        pos = sample.prompt.find(answer)
        return pos if pos >= 0 else len(sample.prompt)

    return " " + " , ".join(sorted(sample.answers, key=first)) + " ."


def encode_example(tokenizer, sample: Sample) -> tuple[list[int], list[int]]:
    """(input_ids, labels): BOS + prompt + answer + EOS, loss on the answer and EOS only."""
    prompt = [tokenizer.bos_token_id] + tokenizer(sample.prompt, add_special_tokens=False)["input_ids"]
    answer = tokenizer(answer_text(sample), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt + answer, [-100] * len(prompt) + answer


@dataclass
class ProxyTrainingConfig:
    train_len: int = 4096
    min_len: int = 128
    steps: int = 2400
    tokens_per_step: int = 65536
    learning_rate: float = 1.5e-3
    warmup_steps: int = 100
    weight_decay: float = 0.05
    prompt_loss_weight: float = 0.5
    seed: int = 0
    task_weights: dict[str, float] = field(default_factory=lambda: dict(TASK_WEIGHTS))

    time_budget_s: float | None = None
    init_from: str | None = None
    sparse_fraction: float = 0.0
    sparse_density: tuple[float, float] = (0.03, 0.12)
    sparse_min_len: int = 2048
    sparse_random_share: float = 0.0
    sparse_block_size: int = 64
    sparse_dense_tail_blocks: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparse_fraction <= 1.0:
            raise ValueError(f"sparse_fraction is a share of the steps in [0, 1], got {self.sparse_fraction}")
        if not 0.0 <= self.sparse_random_share <= 1.0:
            raise ValueError(
                f"sparse_random_share is a share of the sparse steps in [0, 1], got {self.sparse_random_share}"
            )
        unknown = sorted(set(self.task_weights) - set(TASK_WEIGHTS))
        if unknown:
            raise ValueError(f"task_weights names unknown tasks {unknown}; known: {sorted(TASK_WEIGHTS)}")
        bad = {t: w for t, w in self.task_weights.items() if not (math.isfinite(w) and w >= 0)}
        if bad or not sum(self.task_weights.values()) > 0:
            raise ValueError(
                f"task_weights must be finite and >= 0 with a positive sum, got {bad or self.task_weights}"
            )
        SparseAttentionConfig(  # raises for a size the kernels lack or a negative tail
            block_size=self.sparse_block_size, dense_tail_blocks=self.sparse_dense_tail_blocks
        )
        lo, hi = self.sparse_density
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(
                f"sparse_density must be (low, high) with 0 < low <= high <= 1, got {self.sparse_density}"
            )

    def sparsity_at(self, step: int) -> SparseAttentionConfig | None:
        """The step's oracle-sparse attention config (see ``sparse_training``), or None for dense.

        A ``sparse_fraction`` of the steps, drawn from (seed, step), run each layer on the blocks its
        dense attention ranks highest, at a density drawn from ``sparse_density``: one sink, two local
        blocks, ``sparse_dense_tail_blocks`` dense last blocks and one selection for all heads, on
        blocks of ``sparse_block_size`` tokens (the bundled weights were trained with blocks of 64
        and a dense last block). A ``sparse_random_share`` of those steps draws the blocks at random
        instead: the prompt's rows then miss blocks they would have used, which teaches them not to
        depend on attention spread over the whole context.
        """
        rng = random.Random(self.seed * 7919 + step)
        if rng.random() >= self.sparse_fraction:
            return None
        return SparseAttentionConfig(
            selector="random" if rng.random() < self.sparse_random_share else "oracle",
            density=rng.uniform(*self.sparse_density),
            block_size=self.sparse_block_size,
            dense_tail_blocks=self.sparse_dense_tail_blocks,
            min_sparse_len=self.sparse_min_len,
        )

    def progress(self, step: int, started: float | None = None) -> float:
        """Fraction of training done: by steps, or by wall time when a time budget is set and binds."""
        frac = step / max(1, self.steps)
        if self.time_budget_s is not None and started is not None:
            frac = max(frac, (time.time() - started) / self.time_budget_s)
        return min(1.0, frac)

    def length_at(self, progress: float, rng: random.Random) -> int:
        """Curriculum: uniform in [min_len, cap], cap growing geometrically to train_len at 70% progress."""
        cap = self.min_len * (self.train_len / self.min_len) ** min(1.0, progress / 0.7)
        return rng.randint(self.min_len, max(self.min_len, int(cap)))


class TaskBatches(torch.utils.data.IterableDataset):
    """Seeded batches (input_ids, right-padded; labels) for each training step.

    Worker ``w`` of ``n`` builds the batches of steps ``w, w + n, ...``; each step's content depends
    only on (seed, step), so the stream is identical for any number of workers.
    """

    def __init__(
        self, tokenizer, config: ProxyTrainingConfig, started: float | None = None, first_step: int = 0
    ):
        self.tok, self.cfg, self.started, self.first_step = tokenizer, config, started, first_step

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        rng = random.Random(cfg.seed * 1_000_003 + step)
        length = cfg.length_at(cfg.progress(step, self.started), rng)
        tasks, weights = zip(*cfg.task_weights.items(), strict=True)
        rows = []
        for i in range(max(1, cfg.tokens_per_step // length)):
            task = rng.choices(tasks, weights)[0]
            sample = training_sample(task, self.tok, length, seed=(cfg.seed << 40) + step * 4096 + i)
            rows.append(encode_example(self.tok, sample))
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), self.tok.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for r, (x, y) in enumerate(rows):
            ids[r, : len(x)], labels[r, : len(y)] = torch.tensor(x), torch.tensor(y)
        return {"input_ids": ids, "labels": labels}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        wid, n = (info.id, info.num_workers) if info is not None else (0, 1)
        for step in range(self.first_step + wid, self.cfg.steps, n):
            yield self.batch(step)


def proxy_loss(model, batch: dict[str, torch.Tensor], pad_token_id: int, prompt_weight: float):
    """(total loss, answer loss): answer cross-entropy + ``prompt_weight`` x next-token loss on the prompt."""
    hidden = model.model(input_ids=batch["input_ids"]).last_hidden_state[:, :-1]
    targets = batch["input_ids"][:, 1:]
    is_answer = batch["labels"][:, 1:] != -100
    is_prompt = (targets != pad_token_id) & ~is_answer
    answer = F.cross_entropy(model.lm_head(hidden[is_answer]).float(), targets[is_answer])
    if prompt_weight == 0:
        return answer, answer.detach()
    prompt = F.cross_entropy(model.lm_head(hidden[is_prompt]).float(), targets[is_prompt])
    return answer + prompt_weight * prompt, answer.detach()


def lr_at(cfg: ProxyTrainingConfig, step: int, progress: float) -> float:
    """Linear warmup, then cosine to 5% of the peak over the training progress."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    return cfg.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_proxy(
    output_dir: str | os.PathLike,
    config: ProxyTrainingConfig,
    device: str = "cuda",
    num_workers: int = 8,
    log_every: int = 50,
    stop_after_s: float | None = None,
    stop_at_step: int | None = None,
    resume: bool = False,
) -> dict:
    """Train the proxy from scratch and save it in Hub layout; returns the training log summary.

    With ``config.time_budget_s`` the curriculum and learning-rate schedule follow wall time when it
    binds, and training stops at the budget (the summary records the steps reached), so a run on a
    time-limited machine always completes its schedule and leaves a usable checkpoint.
    ``stop_after_s`` (or ``stop_at_step``) ends this call early with ``resume.pt`` (fp32 weights, optimizer, step, elapsed
    seconds) beside the export; ``resume=True`` continues from it, so one schedule can span several
    time-limited machine calls and matches an uninterrupted run step for step.
    """
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, GenerationConfig

    from hf_sparse_attn.vocab import build_tokenizer

    torch.manual_seed(config.seed)
    tok = build_tokenizer()
    attn = "sdpa"
    if config.sparse_fraction > 0:
        register_oracle_sparse_training()
        attn = ORACLE_SPARSE_TRAINING
    if config.init_from:
        model = warm_start(config.init_from, tok, attn).to(device)
    else:
        model = AutoModelForCausalLM.from_config(proxy_config(tok), attn_implementation=attn).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        betas=(0.9, 0.95),
        fused=device.startswith("cuda"),
    )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    first_step, elapsed, log = 0, 0.0, []
    if resume:
        if not (out / "resume.pt").exists():
            raise FileNotFoundError(f"{out / 'resume.pt'} not found: nothing to resume (drop --resume)")
        state = torch.load(
            out / "resume.pt", map_location=device, weights_only=True
        )  # tensors + plain data only
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        first_step, elapsed, log = state["step"], state["elapsed_s"], state["log"]
    else:
        (out / "training_log.jsonl").unlink(missing_ok=True)
    started = time.time() - elapsed
    loader = torch.utils.data.DataLoader(
        TaskBatches(tok, config, started=started, first_step=first_step),
        batch_size=None,
        num_workers=num_workers,
        prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
    )
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    segment_start, window = time.time(), []
    step, stopped = first_step, False
    model.train()
    bar = tqdm(loader, total=config.steps, initial=first_step, desc="train proxy")
    body_done = window_start = time.time()
    data_wait = 0.0  # seconds this log window spent blocked on the loader: a share near 1 is data-bound
    for step, batch in enumerate(bar, start=first_step):
        data_wait += time.time() - body_done
        progress = config.progress(step, started)
        if progress >= 1.0:
            break
        if (stop_after_s is not None and time.time() - segment_start >= stop_after_s) or step == stop_at_step:
            stopped = True
            break
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        for group in opt.param_groups:
            group["lr"] = lr_at(config, step, progress)
        lengths = (batch["input_ids"] != tok.pad_token_id).sum(1)  # pads only follow a row's tokens
        sparsity = config.sparsity_at(step)
        if batch["input_ids"].shape[1] < config.sparse_min_len:
            sparsity = None  # too short to select from: the step runs dense
        set_training_sparsity(model, sparsity, lengths)
        with autocast:
            loss, answer = proxy_loss(model, batch, tok.pad_token_id, config.prompt_loss_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        window.append((torch.stack([loss.detach(), answer]), sparsity is not None))
        if (step + 1) % log_every == 0:
            losses = torch.stack([w for w, _ in window])  # [steps, (loss, answer loss)]
            sparse = torch.tensor([on for _, on in window], device=losses.device)
            entry = {
                "step": step + 1,
                "loss": round(float(losses[:, 0].mean()), 4),
                "answer_loss": round(float(losses[:, 1].mean()), 4),
                "seq_len": int(batch["input_ids"].shape[1]),
                "seconds": round(time.time() - started, 1),
                "data_wait_share": round(data_wait / max(time.time() - window_start, 1e-9), 3),
            }
            if 0 < int(sparse.sum()) < len(window):  # sparse-aware steps: answer loss of each kind
                entry["answer_loss_sparse"] = round(float(losses[sparse, 1].mean()), 4)
                entry["answer_loss_dense"] = round(float(losses[~sparse, 1].mean()), 4)
            log.append(entry)
            window = []
            tqdm.write(json.dumps(entry))
            with open(out / "training_log.jsonl", "a") as f:
                print(json.dumps(entry), file=f)
            data_wait, window_start = 0.0, time.time()
        body_done = time.time()
    else:
        step += 1
    if stopped:
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "log": log}
        state["elapsed_s"] = time.time() - started
        atomic_write(out / "resume.pt", lambda tmp: torch.save(state, tmp))
    else:
        (out / "resume.pt").unlink(missing_ok=True)
    model.eval()
    set_training_sparsity(model, None)
    model.set_attn_implementation("sdpa")
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
    ).save_pretrained(out)
    summary = {
        "steps_done": step,
        "finished": not stopped,
        "config": asdict(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.time() - started, 1),
        "log": log,
    }
    atomic_write_text(out / "training_summary.json", json.dumps(summary, indent=2))
    return summary


@torch.no_grad()
def greedy_answers(
    model, tokenizer, prompts: list[str], max_new_tokens: int = 40, batch_size: int = 16
) -> list[str]:
    """Greedy completions of BOS + prompt, batched with left padding (what `pipeline` does)."""
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    outputs = []
    for i in range(0, len(prompts), batch_size):
        texts = [tokenizer.bos_token + p for p in prompts[i : i + batch_size]]
        enc = tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True).to(device)
        gen = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        outputs += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return outputs


def bundle_proxy(
    trained_dir: str | os.PathLike,
    out_dir: str | os.PathLike = PROXY_DIR,
    results_dir: str | os.PathLike | None = None,
) -> Path:
    """Render a trained + distilled proxy directory as the package's embedded default (Hub layout).

    The same ``render_repo`` as ``hf-sparse-attn publish --full``: config with ``auto_map``, weights,
    indexer, tokenizer, model card (its speed table from ``results_dir``, e.g. ``results/kernels``),
    plus the training and distillation summaries that the numbers in the docs come from, all listed
    in its manifest. The modeling file is not stored there: ``hf-sparse-attn demo`` renders it from
    the installed sources. The folder is swapped in whole: a failed bundle leaves the previous one.
    """
    from hf_sparse_attn.hub.publish import render_repo

    trained = Path(trained_dir)
    summaries = [
        trained / n for n in ("training_summary.json", "distill_summary.json") if (trained / n).is_file()
    ]
    return render_repo(
        out_dir,
        trained,
        base_model="hf-sparse-attn/proxy-qwen3",
        model_dir=trained,
        repo_name="proxy-qwen3",
        results_dir=results_dir,
        with_modeling_file=False,
        extra_files=summaries,
    )


def load_proxy(model_dir: str | os.PathLike, device: str = "cpu"):
    """(model, tokenizer) of a proxy directory through the installed package (Triton path on CUDA).

    The directory holds a model and its indexer (``indexer.safetensors`` + ``sparse_config.json``);
    a model without one raises with the command that makes it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_sparse_attn.runtime.modeling import WEIGHTS_NAME, load_indexer

    if not os.path.isfile(os.path.join(model_dir, WEIGHTS_NAME)):
        raise FileNotFoundError(
            f"{model_dir} has no {WEIGHTS_NAME}: distill one first (python recipes/distill_proxy.py "
            f"--model {model_dir}) or pass --model a directory that has it"
        )
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sparse_prefill")
    load_indexer(model, model_dir)
    return model.to(device).eval(), AutoTokenizer.from_pretrained(model_dir)
