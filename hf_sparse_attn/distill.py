"""KL distillation of the indexers from the frozen model's own dense attention, with the HF Trainer.

During a distillation forward every layer runs stock dense attention (so hidden states are exactly
the base model's); each layer with an indexer also computes, from its detached q/k:

- teacher: the block-pooled mass of the dense softmax, averaged over the query heads of each
  selection group (``pooled_attention_mass``; the Triton kernel on CUDA, no autograd);
- student: the indexer's block distribution (same pooling of its low-dim softmax; differentiable,
  recomputed chunk by chunk in backward so memory stays O(S x chunk) per layer);
- loss: KL(teacher || student) summed over key blocks, averaged over valid query blocks, groups,
  batch and layers (``kl_blocks="candidates"``: only the part of it over the blocks the selector
  ranks, the sink / local / tail blocks being kept anyway; see ``kl_divergence``);
- recall: teacher mass inside the blocks the configured budget would select.

No backbone tensor requires grad, so autograd records only the indexers' small graphs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .ops import pooled_attention_mass
from .runtime.config import SparseAttentionConfig
from .runtime.fileio import atomic_write_text
from .runtime.modeling import attach_indexer, indexers, load_indexer, save_indexer
from .runtime.padding import PaddingLayout
from .runtime.selection import BlockList, block_masks, causal_block_counts, select_blocks

TRAINING_ARGS_NAME = "training_args.bin"
logger = logging.getLogger(__name__)
KL_BLOCKS = ("all", "candidates")
# TrainingArguments' switch for checkpointing the model's layers (renamed in transformers 5.2x; both spellings)
CHECKPOINTING_ARGS = ("activation_checkpointing", "gradient_checkpointing")


def kl_divergence(
    teacher: torch.Tensor,
    student: torch.Tensor,
    seq_lens: torch.Tensor,
    block_size: int,
    candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over valid (batch, group, query block) rows of KL(teacher || student) over key blocks.

    ``candidates`` (bool [B, nQ, nK], the blocks the selector ranks): each row's loss is then only the
    part of the full KL that can change the selection. By the chain rule, KL over all blocks = KL of
    the (candidate, forced) split + m * KL of the renormalized candidate distributions + (1 - m) * KL
    of the renormalized forced ones, with m the teacher's candidate mass; this keeps the middle term.
    The sink and local blocks hold most of the mass of most rows and are kept anyway, so the full KL
    spends the indexer's few dimensions on them.
    """
    if candidates is not None:
        mask = candidates[:, None].expand_as(teacher)
        mass = torch.where(mask, teacher, 0.0).sum(-1, keepdim=True)
        teacher = torch.where(mask, teacher / mass.clamp(min=1e-12), 0.0)
        student = torch.where(mask, student, 0.0)
        student = student / student.sum(-1, keepdim=True).clamp(min=1e-12)
    log_student = torch.log(student.clamp(min=1e-12))
    per_row = (torch.xlogy(teacher, teacher) - teacher * log_student).sum(-1)
    if candidates is not None:
        per_row = per_row * mass[..., 0]
    valid = _valid_rows(seq_lens, block_size, teacher.shape[2])[:, None, :].expand_as(per_row)
    return per_row[valid].mean()


def block_recall(teacher: torch.Tensor, blocks: BlockList) -> torch.Tensor:
    """Mean teacher mass covered by the selected blocks, over valid query-block rows."""
    covered = (teacher * blocks.to_dense()).sum(-1)
    valid = _valid_rows(blocks.seq_lens, blocks.block_size, teacher.shape[2])[:, None, :].expand_as(covered)
    return covered[valid].mean()


def _valid_rows(seq_lens: torch.Tensor, block_size: int, nq: int) -> torch.Tensor:
    """[B, nQ] query blocks holding at least one real token."""
    return causal_block_counts(seq_lens, block_size, nq) > 0


@dataclass
class LayerTerms:
    layer_idx: int
    kl: torch.Tensor
    recall: torch.Tensor


@dataclass
class _Collector:
    kl_blocks: str = "all"
    terms: list[LayerTerms] = field(default_factory=list)

    def observe(self, module: nn.Module, query: torch.Tensor, key: torch.Tensor, attention_mask) -> None:
        if query.shape[2] != key.shape[2]:
            raise ValueError(
                "distillation runs full prefills only (no cache): call the model with use_cache=False"
            )
        if attention_mask is not None and attention_mask.shape[-2] != 1:
            raise ValueError("distillation supports causal batches with left or right padding only")
        indexer = module.indexer
        cfg = indexer.config
        layout = PaddingLayout.from_attention_mask(attention_mask, query)
        q, k = layout.to_right(query.detach()), layout.to_right(key.detach())
        with torch.no_grad():
            teacher = pooled_attention_mass(
                q, k, cfg.block_size, module.scaling, cfg.indexer_heads, layout.seq_lens
            )
        student = indexer.block_scores(q, k, layout.seq_lens)
        candidates = None
        if self.kl_blocks == "candidates":
            nq = teacher.shape[2]
            causal, forced = block_masks(cfg, layout.seq_lens, nq, nq)
            candidates = causal & ~forced
        kl = kl_divergence(teacher, student, layout.seq_lens, cfg.block_size, candidates)
        with torch.no_grad():
            recall = block_recall(teacher, select_blocks(student.detach(), cfg, layout.seq_lens))
        self.terms.append(LayerTerms(indexer.layer_idx, kl, recall))


@contextlib.contextmanager
def distillation_forward(model: nn.Module, kl_blocks: str = "all") -> Iterator[list[LayerTerms]]:
    """Within this context, forwards of ``model`` run dense and record per-layer KL / recall terms."""
    _check_kl_blocks(kl_blocks)
    found = indexers(model)
    if not found:
        raise ValueError("model has no indexers: call attach_indexer(model, config) before distilling")
    collector = _Collector(kl_blocks)
    for indexer in found.values():
        indexer.observer = collector.observe
    try:
        yield collector.terms
    finally:
        for indexer in found.values():
            indexer.observer = None


def _check_kl_blocks(kl_blocks: str) -> None:
    if kl_blocks not in KL_BLOCKS:
        raise ValueError(f"kl_blocks must be one of {KL_BLOCKS}, got {kl_blocks!r}")


def distillation_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    wrapped: nn.Module | None = None,
    kl_blocks: str = "all",
):
    """(loss, per-layer terms) of one batch: mean KL over the indexed layers.

    ``wrapped``: the module to call (e.g. the DDP wrapper, so gradients synchronize); its indexers
    are found on ``model``. ``kl_blocks``: "all" key blocks, or the selector's "candidates" only.
    """
    if attention_mask is not None:
        empty = (
            (attention_mask.reshape(attention_mask.shape[0], -1).sum(-1) == 0).nonzero().flatten().tolist()
        )
        if empty:
            raise ValueError(
                f"attention_mask rows {empty} hold no token (all padding): the KL of an empty row is undefined; "
                "drop empty sequences from the batch"
            )
    with distillation_forward(model, kl_blocks) as terms:
        (wrapped or model)(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1
        )
    if not terms:
        raise RuntimeError("no indexed layer ran: is attn_implementation 'sparse_prefill'?")
    return torch.stack([t.kl for t in terms]).mean(), terms


class IndexerDistillationTrainer(Trainer):
    """``transformers.Trainer`` that trains only the indexers by KL distillation.

    Pass a model with indexers attached, or ``sparse_config=`` to attach them here. ``kl_blocks``:
    distill the distribution over "all" key blocks, or only its part over the "candidates" the
    selector ranks (see ``kl_divergence``). Indexer weights are kept in float32 (master weights;
    activations follow ``TrainingArguments.bf16``). Checkpoints and ``save_model`` write
    ``indexer.safetensors`` + ``sparse_config.json`` only (plus the Trainer's optimizer / scheduler /
    RNG state in checkpoints), so they are megabytes and load with ``load_indexer``. Logged per step:
    ``loss`` (mean KL), ``recall``, and ``kl/layer_<i>``, ``recall/layer_<i>`` per indexed layer.
    """

    def __init__(
        self,
        model: nn.Module,
        *args,
        sparse_config: SparseAttentionConfig | None = None,
        kl_blocks: str = "all",
        **kwargs,
    ):
        _check_kl_blocks(kl_blocks)
        self.kl_blocks = kl_blocks
        if sparse_config is not None:
            attach_indexer(model, sparse_config, replace=True)
        found = indexers(model)
        if not found:
            raise ValueError("model has no indexers: pass sparse_config=... or call attach_indexer first")
        for indexer in found.values():
            indexer.float()
        kwargs.setdefault("data_collator", PackedCollator())
        training_args = kwargs.get("args", args[0] if args else None)
        if training_args is not None and training_args.ddp_find_unused_parameters is None:
            # The loss is computed beside the model's outputs, so DDP's unused-parameter search (which walks back
            # from the outputs) would mark every indexer unused and then see its gradient twice.
            training_args.ddp_find_unused_parameters = False
        if training_args is not None and any(getattr(training_args, n, False) for n in CHECKPOINTING_ARGS):
            # Nothing backpropagates through the frozen backbone, so autograd keeps none of its activations
            # and checkpointing it saves no memory; it would only break the indexer's graph on recompute.
            logger.warning(
                "gradient_checkpointing=True is ignored by IndexerDistillationTrainer: the frozen backbone "
                "keeps no activations for backward (only the indexers' small graphs are kept), so there is "
                "nothing to recompute; peak memory is set by seq_len and the teacher's chunking"
            )
            for name in CHECKPOINTING_ARGS:
                if hasattr(training_args, name):
                    setattr(training_args, name, False)
        _disable_layer_checkpointing(model)
        super().__init__(model, *args, **kwargs)
        self._layer_stats: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, terms = distillation_loss(
            self.accelerator.unwrap_model(model),
            inputs["input_ids"],
            inputs.get("attention_mask"),
            wrapped=model,
            kl_blocks=self.kl_blocks,
        )
        if model.training:
            for t in terms:
                self._layer_stats[f"kl/layer_{t.layer_idx}"].append(float(t.kl.detach()))
                self._layer_stats[f"recall/layer_{t.layer_idx}"].append(float(t.recall))
            self._layer_stats["recall"].append(float(torch.stack([t.recall for t in terms]).mean()))
        return (loss, {"terms": terms}) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._layer_stats:
            logs.update({name: sum(v) / len(v) for name, v in self._layer_stats.items()})
            self._layer_stats.clear()
        super().log(logs, *args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        save_indexer(self.accelerator.unwrap_model(self.model), output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, then a completion marker: ``train(resume_from_checkpoint=True)``
        resumes from the newest checkpoint that has one, never from a half-written folder."""
        super()._save_checkpoint(model, trial)
        folder = os.path.join(
            self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        )
        if self.args.should_save and os.path.isdir(folder):
            atomic_write_text(os.path.join(folder, CHECKPOINT_COMPLETE), f"{self.state.global_step}\n")

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(
                    f"resume_from_checkpoint=True: no complete checkpoint in {self.args.output_dir} (folders "
                    f"{PREFIX_CHECKPOINT_DIR}-N holding {CHECKPOINT_COMPLETE})"
                )
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        load_indexer(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)

    def _load_best_model(self) -> None:
        load_indexer(self.accelerator.unwrap_model(self.model), self.state.best_model_checkpoint)


def _disable_layer_checkpointing(model: nn.Module) -> None:
    """Undo ``model.gradient_checkpointing_enable()`` (``activation_checkpointing_*`` in newer transformers)."""
    for prefix in ("activation", "gradient"):
        if hasattr(model, f"is_{prefix}_checkpointing"):
            if getattr(model, f"is_{prefix}_checkpointing"):
                getattr(model, f"{prefix}_checkpointing_disable")()
            return


CHECKPOINT_COMPLETE = "checkpoint_complete"


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest ``checkpoint-N`` folder of ``output_dir`` that finished saving (has the marker)."""
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        head, _, step = name.rpartition("-")
        if head == PREFIX_CHECKPOINT_DIR and step.isdigit():
            steps.append(int(step))
    for step in sorted(steps, reverse=True):
        folder = os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        if os.path.isfile(os.path.join(folder, CHECKPOINT_COMPLETE)):
            return folder
        logger.warning("skipping %s: its save did not finish (no %s)", folder, CHECKPOINT_COMPLETE)
    return None


class PackedCollator:
    """Stacks equal-length ``input_ids`` (and ``attention_mask`` if present) into a batch."""

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = {
            "input_ids": torch.stack([torch.as_tensor(f["input_ids"], dtype=torch.long) for f in features])
        }
        if all("attention_mask" in f for f in features):
            batch["attention_mask"] = torch.stack([torch.as_tensor(f["attention_mask"]) for f in features])
        return batch


def pack_tokens(
    token_lists: Iterable[list[int]], seq_len: int, separator: int | None = None
) -> Iterator[list[int]]:
    """Concatenate documents (``separator`` between them) and cut into ``seq_len`` pieces (tail dropped)."""
    buffer: list[int] = []
    for tokens in token_lists:
        buffer.extend(tokens)
        if separator is not None:
            buffer.append(separator)
        while len(buffer) >= seq_len:
            yield buffer[:seq_len]
            buffer = buffer[seq_len:]


class PackedDataset(torch.utils.data.Dataset):
    """Fixed-length training sequences packed from a text corpus.

    ``texts``: any iterable of strings, e.g. ``load_dataset("pg19", split="train")["text"]`` or the
    lines of local files; documents are joined with the tokenizer's EOS token.
    """

    def __init__(self, texts: Iterable[str], tokenizer, seq_len: int, max_sequences: int | None = None):
        eos = tokenizer.eos_token_id
        docs = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts)
        self.sequences = []
        for seq in pack_tokens(docs, seq_len, eos):
            self.sequences.append(seq)
            if max_sequences is not None and len(self.sequences) >= max_sequences:
                break
        if not self.sequences:
            raise ValueError(f"the corpus holds fewer than {seq_len} tokens: nothing to train on")

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return {"input_ids": self.sequences[i]}


class SyntheticRetrievalDataset(torch.utils.data.Dataset):
    """Random-token sequences with planted long-range repeats (for smoke runs and tests).

    Each sequence copies a few random spans from its first half into its second half, so a model
    with induction-like heads attends far back; no corpus or tokenizer needed.
    """

    def __init__(
        self, vocab_size: int, seq_len: int, size: int, spans: int = 4, span_len: int = 16, seed: int = 0
    ):
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randint(3, vocab_size, (size, seq_len), generator=g)
        half = seq_len // 2
        for row in self.data:
            for _ in range(spans):
                src = int(torch.randint(0, max(1, half - span_len), (1,), generator=g))
                dst = int(torch.randint(half, max(half + 1, seq_len - span_len), (1,), generator=g))
                row[dst : dst + span_len] = row[src : src + span_len].clone()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.data[i]}
