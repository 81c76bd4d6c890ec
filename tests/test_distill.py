"""Indexer distillation: KL / recall terms, the Trainer subclass, checkpoints, peft."""

from __future__ import annotations

import copy
import hashlib
import os

import pytest
import torch
from conftest import build, qwen3_config
from transformers import AutoModelForCausalLM, Qwen3Config, TrainingArguments

import hf_sparse_attn as hsa
from hf_sparse_attn import SparseAttentionConfig, attach_indexer, load_indexer
from hf_sparse_attn.distill import (
    IndexerDistillationTrainer,
    PackedCollator,
    SyntheticRetrievalDataset,
    distillation_loss,
    kl_divergence,
    pack_tokens,
)
from hf_sparse_attn.runtime.selection import block_masks

PLANTED = SparseAttentionConfig(block_size=16, top_k=2, sink_blocks=0, local_blocks=1, min_sparse_len=16)


def planted_model(seed: int = 0):
    """Tiny MHA Qwen3 whose heads attend to earlier copies of the current token at any distance.

    k_proj = q_proj, sharpened q/k norms, and only RoPE's slow dimensions used (fast pairs zeroed),
    so with SyntheticRetrievalDataset's copied spans the dense attention puts real mass on far blocks.
    """
    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 1e9},
    )
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    for layer in model.model.layers:
        attn = layer.self_attn
        attn.q_proj.weight.data.view(4, 16, 64)[:, [0, 1, 2, 8, 9, 10]] = 0
        attn.k_proj.weight.data.copy_(attn.q_proj.weight.data)
        attn.q_norm.weight.data *= 3
        attn.k_norm.weight.data *= 3
    return model


def _randomize(model):
    for indexer in hsa.indexers(model).values():
        torch.nn.init.normal_(indexer.q_proj.weight, std=0.05)
        torch.nn.init.normal_(indexer.k_proj.weight, std=0.05)


def _backbone_hash(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if ".indexer." not in name:
            h.update(name.encode())
            h.update(t.detach().float().numpy().tobytes())
    return h.hexdigest()


def test_kl_is_zero_when_indexer_equals_teacher():
    cfg = qwen3_config(num_heads=1, num_kv_heads=1, head_dim=16, layers=1)
    model = attach_indexer(
        build(cfg), SparseAttentionConfig(block_size=16, indexer_dim=16, min_sparse_len=16)
    )
    indexer = hsa.indexers(model)[0]
    with torch.no_grad():
        indexer.q_proj.weight.copy_(torch.eye(16))
        indexer.k_proj.weight.copy_(torch.eye(16))
    loss, terms = distillation_loss(model, torch.randint(0, 128, (2, 100)))
    assert abs(float(loss.detach())) < 1e-5
    t = torch.softmax(torch.randn(1, 1, 4, 4), -1)
    assert float(kl_divergence(t, t, torch.tensor([64]), 16)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_divergence(t, t.flip(-1), torch.tensor([64]), 16)) > 0.01


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (torch.xlogy(p, p) - p * torch.log(q.clamp(min=1e-12))).sum(-1)


def test_candidate_kl_is_the_chain_rule_term_the_selection_depends_on():
    """KL over all blocks = KL of the (candidate, forced) split + m * KL over the renormalized
    candidates + (1 - m) * KL over the renormalized forced blocks; kl_blocks="candidates" keeps the
    middle term, so a student that differs from the teacher only on the forced blocks costs nothing."""
    cfg = SparseAttentionConfig(block_size=16, density=0.3, sink_blocks=1, local_blocks=2)
    nq, lens = 9, torch.tensor([144, 121])
    causal, forced = block_masks(cfg, lens, nq, nq)
    cand = causal & ~forced
    gen = torch.Generator().manual_seed(0)

    def dist(*shape):
        x = torch.rand(*shape, generator=gen) * causal[:, None]
        return x / x.sum(-1, keepdim=True).clamp(min=1e-12)

    teacher, student = dist(2, 2, nq, nq), dist(2, 2, nq, nq)
    got = kl_divergence(teacher, student, lens, 16, cand)
    full = kl_divergence(teacher, student, lens, 16)

    def part(p, mask):
        mass = (p * mask).sum(-1, keepdim=True)
        return mass[..., 0], torch.where(mask.bool(), p / mass.clamp(min=1e-12), 0.0)

    m_t, t_c = part(teacher, cand[:, None])
    m_s, s_c = part(student, cand[:, None])
    _, t_f = part(teacher, forced[:, None])
    _, s_f = part(student, forced[:, None])
    split = _kl(torch.stack([m_t, 1 - m_t], -1), torch.stack([m_s, 1 - m_s], -1))
    valid = (torch.arange(nq) < torch.tensor([9, 8])[:, None])[:, None].expand(2, 2, nq)
    middle = (m_t * _kl(t_c, s_c))[valid].mean()
    rest = (split + (1 - m_t) * _kl(t_f, s_f))[valid].mean()
    torch.testing.assert_close(got, middle, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full, middle + rest, rtol=1e-5, atol=1e-6)
    assert float(got) > 0.01

    reweighted = teacher * torch.where(forced[:, None], 3.0, 1.0)
    reweighted = reweighted / reweighted.sum(-1, keepdim=True)
    assert float(kl_divergence(teacher, reweighted, lens, 16, cand)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_divergence(teacher, reweighted, lens, 16)) > 0.01


def test_candidate_kl_trains_and_names_bad_choices(tmp_path):
    model = attach_indexer(planted_model(), PLANTED)
    ids = torch.randint(0, 1024, (1, 96))
    loss_all, _ = distillation_loss(model, ids)
    loss_cand, terms = distillation_loss(model, ids, kl_blocks="candidates")
    assert 0 < float(loss_cand.detach()) < float(loss_all.detach())
    loss_cand.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if ".indexer." in n)
    with pytest.raises(ValueError, match="kl_blocks must be one of"):
        distillation_loss(model, ids, kl_blocks="forced")
    with pytest.raises(ValueError, match="kl_blocks must be one of"):
        IndexerDistillationTrainer(model=model, args=_args(tmp_path), train_dataset=[], kl_blocks="sink")


def test_recall_rises_on_planted_long_range_dependency():
    model = attach_indexer(planted_model(), PLANTED)
    _randomize(model)
    data = SyntheticRetrievalDataset(1024, 256, 16, spans=6)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    recalls, losses = [], []
    for step in range(30):
        ids = torch.stack([data[(2 * step + i) % 16]["input_ids"] for i in range(2)])
        loss, terms = distillation_loss(model, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        recalls.append(float(torch.stack([t.recall for t in terms]).mean()))
    start, end = sum(recalls[:3]) / 3, sum(recalls[-5:]) / 5
    assert end > start + 0.04, (start, end)
    assert losses[-1] < losses[0] / 10


def test_backbone_gets_no_gradient_graph():
    model = attach_indexer(planted_model(), PLANTED)
    loss, _ = distillation_loss(model, torch.randint(0, 1024, (1, 64)))
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if ".indexer." not in n)
    assert all(p.grad is not None for n, p in model.named_parameters() if ".indexer." in n)


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=6,
        per_device_train_batch_size=2,
        learning_rate=2e-2,
        logging_steps=2,
        save_steps=3,
        report_to="none",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    base.update(kw)
    return TrainingArguments(**base)


def test_trainer_trains_saves_only_indexers_and_resumes(tmp_path):
    model = planted_model()
    before = _backbone_hash(model)
    data = SyntheticRetrievalDataset(1024, 128, 12, spans=3)
    trainer = IndexerDistillationTrainer(
        model=model, args=_args(tmp_path), train_dataset=data, sparse_config=PLANTED
    )
    result = trainer.train()
    assert _backbone_hash(model) == before
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert logged and all("recall/layer_0" in e and "kl/layer_1" in e and "recall" in e for e in logged)
    ckpt = tmp_path / "out" / "checkpoint-3"
    files = set(os.listdir(ckpt))
    assert {"indexer.safetensors", "sparse_config.json", "optimizer.pt", "trainer_state.json"} <= files
    assert not any(f.startswith(("model", "pytorch_model")) for f in files)
    assert os.path.getsize(ckpt / "indexer.safetensors") < 200_000
    trainer.save_model()
    reloaded = load_indexer(planted_model(), tmp_path / "out")
    ids = torch.randint(0, 1024, (1, 96))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)

    resumed_model = planted_model()
    resumed = IndexerDistillationTrainer(
        model=resumed_model,
        args=_args(tmp_path, output_dir=str(tmp_path / "resumed")),
        train_dataset=data,
        sparse_config=PLANTED,
    )
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.state.global_step == 6
    for a, b in zip(hsa.indexers(resumed_model).values(), hsa.indexers(model).values(), strict=True):
        torch.testing.assert_close(a.q_proj.weight, b.q_proj.weight, rtol=1e-5, atol=1e-6)
    assert result.training_loss > 0


def test_trainer_requires_indexers(tmp_path):
    with pytest.raises(ValueError, match="no indexers"):
        IndexerDistillationTrainer(model=planted_model(), args=_args(tmp_path), train_dataset=[])


def test_gradient_accumulation_matches_larger_batch(tmp_path):
    data = SyntheticRetrievalDataset(1024, 128, 8, spans=3)
    weights = []
    for bs, acc in ((4, 1), (2, 2)):
        model = planted_model()
        trainer = IndexerDistillationTrainer(
            model=model,
            train_dataset=data,
            sparse_config=PLANTED,
            args=_args(
                tmp_path,
                max_steps=1,
                per_device_train_batch_size=bs,
                gradient_accumulation_steps=acc,
                save_steps=100,
                learning_rate=1e-2,
            ),
        )
        trainer.train()
        weights.append(hsa.indexers(model)[0].q_proj.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-6)


def test_peft_lora_backbone_keeps_its_adapter(tmp_path):
    peft = pytest.importorskip("peft")
    base = planted_model()
    lora = peft.get_peft_model(
        base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    )
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    adapter_before = {n: p.detach().clone() for n, p in lora.named_parameters() if "lora_" in n}
    attach_indexer(lora, PLANTED)
    assert sorted(hsa.indexers(lora)) == [0, 1]
    data = SyntheticRetrievalDataset(1024, 128, 4, spans=3)
    trainer = IndexerDistillationTrainer(
        model=lora, args=_args(tmp_path, max_steps=2, save_steps=100), train_dataset=data
    )
    trainer.train()
    for n, p in lora.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, adapter_before[n])
    trainer.save_model(str(tmp_path / "idx"))
    fresh = load_indexer(planted_model(), tmp_path / "idx")
    for a, b in zip(hsa.indexers(fresh).values(), hsa.indexers(lora).values(), strict=True):
        torch.testing.assert_close(a.k_proj.weight, b.k_proj.weight.to(a.k_proj.weight.dtype))


def test_packing_and_collator():
    packed = list(pack_tokens([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4, separator=0))
    assert packed == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    batch = PackedCollator()([{"input_ids": [1, 2]}, {"input_ids": [3, 4]}])
    assert batch["input_ids"].tolist() == [[1, 2], [3, 4]] and "attention_mask" not in batch
    data = SyntheticRetrievalDataset(100, 64, 2, spans=1, span_len=8, seed=1)
    row = data[0]["input_ids"]
    assert row.shape == (64,) and int(row.min()) >= 3


def test_packed_dataset_from_text_with_a_real_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from hf_sparse_attn.distill import PackedDataset

    words = ["alpha", "beta", "gamma", "delta", "[EOS]"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[EOS]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="[EOS]")
    ds = PackedDataset(["alpha beta gamma", "delta alpha", "beta beta beta beta"], tokenizer, seq_len=4)
    assert [s for s in ds.sequences] == [[0, 1, 2, 4], [3, 0, 4, 1], [1, 1, 1, 4]]
    with pytest.raises(ValueError, match="fewer than 100 tokens"):
        PackedDataset(["alpha"], tokenizer, seq_len=100)
    assert copy.deepcopy(ds[0]) == {"input_ids": [0, 1, 2, 4]}


@pytest.mark.parametrize("setup", ["args_reentrant", "args_non_reentrant", "model_enabled"])
def test_gradient_checkpointing_request_trains_like_without_it(tmp_path, setup):
    """The frozen backbone keeps no activations for backward, so the trainer turns layer checkpointing
    off (with a warning) instead of failing on the indexer's graph."""
    data = SyntheticRetrievalDataset(1024, 128, 8, spans=3)
    losses = []
    for checkpointing in (False, True):
        model = planted_model()
        kw = {"max_steps": 2, "save_strategy": "no", "output_dir": str(tmp_path / str(checkpointing))}
        if checkpointing and setup.startswith("args"):
            kw |= {
                "gradient_checkpointing": True,
                "gradient_checkpointing_kwargs": {"use_reentrant": setup == "args_reentrant"},
            }
        if checkpointing and setup == "model_enabled":
            model.gradient_checkpointing_enable()
        trainer = IndexerDistillationTrainer(
            model=model, args=_args(tmp_path, **kw), train_dataset=data, sparse_config=PLANTED
        )
        losses.append(trainer.train().training_loss)
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
