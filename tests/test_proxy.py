"""The proxy backbone: training data and loss, a smoke run of the loop, and the bundled checkpoint."""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from hf_sparse_attn.tasks import generate
from hf_sparse_attn.vocab import build_tokenizer
from hf_sparse_attn_lab.proxy import (
    PROXY_DIR,
    ProxyTrainingConfig,
    TaskBatches,
    answer_text,
    encode_example,
    load_proxy,
    proxy_loss,
    train_proxy,
    warm_start,
)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_answer_text_orders_answers_by_first_occurrence(tok):
    sample = generate("niah_multivalue", tok, 400, seed=3)
    text = answer_text(sample)
    positions = [sample.prompt.find(a) for a in text.strip(" .").split(" , ")]
    assert positions == sorted(positions) and min(positions) >= 0
    assert sorted(text.strip(" .").split(" , ")) == sorted(sample.answers)


def test_counted_answers_come_most_frequent_first_in_a_prompt_seeded_order(tok):
    from collections import Counter

    fwe = generate("fwe", tok, 1500, seed=2)
    counts = Counter(fwe.prompt.split())
    words = answer_text(fwe).strip(" .").split(" , ")
    assert sorted(words) == sorted(fwe.answers) and [counts[w] for w in words] == sorted(
        (counts[w] for w in words), reverse=True
    )
    cwe = [generate("cwe", tok, 1200, seed=s) for s in range(6)]
    orders = [answer_text(s).strip(" .").split(" , ") for s in cwe]
    assert all(sorted(o) == sorted(s.answers) for o, s in zip(orders, cwe, strict=True))
    assert [answer_text(s) for s in cwe] == [answer_text(s) for s in cwe]  # a function of the prompt
    firsts = [sorted(s.answers, key=s.prompt.find) for s in cwe]
    assert sum(o == f for o, f in zip(orders, firsts, strict=True)) < len(cwe)  # not first-occurrence


@pytest.fixture(scope="module")
def small_vocab_proxy(tok, tmp_path_factory):
    """A proxy trained before the vocabulary grew: the current tokenizer's first 2272 tokens."""
    from transformers import AutoModelForCausalLM

    from hf_sparse_attn_lab.proxy import proxy_config

    out = tmp_path_factory.mktemp("small_vocab")
    spec = json.loads(tok.backend_tokenizer.to_str())
    spec["model"]["vocab"] = {w: i for w, i in spec["model"]["vocab"].items() if i < 2272}
    (out / "tokenizer.json").write_text(json.dumps(spec))
    config = proxy_config(tok)
    config.vocab_size = 2272
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return out


def test_warm_start_keeps_the_trained_rows_and_draws_the_added_words(tok, small_vocab_proxy):
    from safetensors.torch import load_file

    model = warm_start(small_vocab_proxy, tok)
    trained = load_file(str(small_vocab_proxy / "model.safetensors"))["model.embed_tokens.weight"]
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == len(tok) > trained.shape[0] == 2272 and model.config.vocab_size == len(tok)
    assert torch.equal(emb[: len(trained)], trained)
    assert model.lm_head.weight.data_ptr() == emb.data_ptr()  # still tied
    added = emb[len(trained) :]
    assert added.std(0).mean() > 0.5 * trained.std(0).mean()  # distinct words, not one mean row


def test_warm_start_refuses_a_proxy_whose_token_ids_moved(tok, tmp_path):
    vocab = json.loads((PROXY_DIR / "tokenizer.json").read_text())
    model_vocab = vocab["model"]["vocab"]
    a, b = sorted(model_vocab, key=model_vocab.get)[100:102]
    model_vocab[a], model_vocab[b] = model_vocab[b], model_vocab[a]
    (tmp_path / "tokenizer.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match="other ids.*drop --init-from"):
        warm_start(tmp_path, tok)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        warm_start(tmp_path / "missing", tok)


def test_encode_example_labels_only_the_answer_and_eos(tok):
    sample = generate("qa", tok, 300, seed=1)
    ids, labels = encode_example(tok, sample)
    n_answer = sum(label != -100 for label in labels)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert labels[-n_answer:] == ids[-n_answer:] and all(x == -100 for x in labels[:-n_answer])
    assert ids[-n_answer:-1] == tok(answer_text(sample), add_special_tokens=False)["input_ids"]


def test_task_batches_depend_only_on_seed_and_step(tok):
    cfg = ProxyTrainingConfig(train_len=256, min_len=128, steps=4, tokens_per_step=1024)
    a, b = TaskBatches(tok, cfg).batch(3), TaskBatches(tok, cfg).batch(3)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(TaskBatches(tok, cfg).batch(2)["input_ids"][:1, :50], a["input_ids"][:1, :50])
    assert a["input_ids"].numel() <= 2 * 1024 + a["input_ids"].shape[0] * 64


def test_length_curriculum_reaches_train_len_at_70_percent():
    import random

    cfg = ProxyTrainingConfig(train_len=4096, min_len=128)
    rng = random.Random(0)
    assert max(cfg.length_at(0.0, rng) for _ in range(200)) == 128
    assert max(cfg.length_at(0.35, rng) for _ in range(500)) <= int(128 * 32**0.5)
    assert max(cfg.length_at(0.7, rng) for _ in range(2000)) > 4000


def test_proxy_loss_is_answer_ce_plus_weighted_prompt_ce(tok):
    from transformers import AutoModelForCausalLM

    from hf_sparse_attn_lab.proxy import proxy_config

    torch.manual_seed(0)
    cfg = proxy_config(tok)
    cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = 1, 64, 64
    cfg.layer_types = ["full_attention"]
    model = AutoModelForCausalLM.from_config(cfg)
    batch = TaskBatches(tok, ProxyTrainingConfig(train_len=200, min_len=150, tokens_per_step=400)).batch(0)
    total, answer = proxy_loss(model, batch, tok.pad_token_id, 0.5)
    logits = model(input_ids=batch["input_ids"]).logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    is_answer = batch["labels"][:, 1:] != -100
    is_prompt = (targets != tok.pad_token_id) & ~is_answer
    ref_answer = F.cross_entropy(logits[is_answer], targets[is_answer])
    ref_prompt = F.cross_entropy(logits[is_prompt], targets[is_prompt])
    torch.testing.assert_close(answer, ref_answer, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(total, ref_answer + 0.5 * ref_prompt, rtol=1e-5, atol=1e-5)
    only, _ = proxy_loss(model, batch, tok.pad_token_id, 0.0)
    torch.testing.assert_close(only, ref_answer, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_train_proxy_smoke_writes_hub_layout(tmp_path):
    cfg = ProxyTrainingConfig(train_len=192, min_len=128, steps=3, tokens_per_step=512, warmup_steps=1)
    summary = train_proxy(tmp_path, cfg, device="cpu", num_workers=0, log_every=1)
    assert summary["steps_done"] == 3
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    log = [json.loads(line) for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3] and all(e["loss"] > e["answer_loss"] > 0 for e in log)
    assert all(0 < e["data_wait_share"] <= 1 for e in log)  # no workers: batches are built in the loop
    with pytest.raises(FileNotFoundError, match="distill_proxy.py"):
        load_proxy(tmp_path)


def test_bundled_proxy_is_a_small_bf16_hub_repo_with_its_indexer():
    files = {p.name: p.stat().st_size for p in PROXY_DIR.iterdir()}
    assert sum(files.values()) <= 16 * 2**20
    for name in (
        "config.json",
        "model.safetensors",
        "indexer.safetensors",
        "sparse_config.json",
        "tokenizer.json",
        "README.md",
    ):
        assert name in files, name
    assert "modeling_sparse_prefill.py" not in files  # rendered by the demo into its cache, never stored
    config = json.loads((PROXY_DIR / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].endswith("SparseQwen3ForCausalLM")
    with safe_open(str(PROXY_DIR / "model.safetensors"), "pt") as f:
        assert all(f.get_slice(k).get_dtype() == "BF16" for k in f.keys())  # noqa: SIM118 (safe_open is not iterable)
    summary = json.loads((PROXY_DIR / "training_summary.json").read_text())
    assert summary["config"]["train_len"] == 16384 and summary["config"]["sparse_fraction"] > 0


ROOT = Path(__file__).resolve().parents[1]


def test_distill_proxy_recipe_defaults_are_the_bundled_serving_config():
    """recipes/distill_proxy.py must reproduce the bundle's sparse_config (selection rules and indexer
    shape), so rerunning it gives an indexer for the config the shipped numbers were measured at."""
    from hf_sparse_attn.recipe import build_parser

    spec = importlib.util.spec_from_file_location("distill_proxy", ROOT / "recipes" / "distill_proxy.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    args = build_parser("qwen3").parse_args(recipe.DEFAULTS)
    bundled = json.loads((PROXY_DIR / "sparse_config.json").read_text())
    for field in (
        "block_size",
        "density",
        "dense_tail_blocks",
        "indexer_heads",
        "indexer_dim",
        "min_sparse_len",
    ):
        assert getattr(args, field) == bundled[field], field
    assert args.tasks and args.seq_len == 4096 and args.kl_blocks == "candidates"


@pytest.mark.slow
def test_resumed_training_matches_the_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    cfg = ProxyTrainingConfig(train_len=160, min_len=128, steps=4, tokens_per_step=384, warmup_steps=1)
    train_proxy(tmp_path / "whole", cfg, device="cpu", num_workers=0)
    first = train_proxy(tmp_path / "split", cfg, device="cpu", num_workers=0, log_every=1, stop_at_step=2)
    assert first["steps_done"] == 2 and not first["finished"] and (tmp_path / "split" / "resume.pt").exists()
    second = train_proxy(tmp_path / "split", cfg, device="cpu", num_workers=0, log_every=1, resume=True)
    assert (
        second["steps_done"] == 4 and second["finished"] and not (tmp_path / "split" / "resume.pt").exists()
    )
    assert [e["step"] for e in second["log"]] == [1, 2, 3, 4]
    whole, split = (
        load_file(tmp_path / "whole" / "model.safetensors"),
        load_file(tmp_path / "split" / "model.safetensors"),
    )
    for name, tensor in whole.items():
        torch.testing.assert_close(split[name], tensor, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train_proxy(tmp_path / "whole", cfg, device="cpu", num_workers=0, resume=True)


class _Payload:
    """Stands for arbitrary pickled code in a tampered resume file."""


def test_resume_loads_weights_only(tmp_path):
    cfg = ProxyTrainingConfig(train_len=160, min_len=128, steps=4, tokens_per_step=384, warmup_steps=1)
    tmp_path.mkdir(exist_ok=True)
    torch.save({"model": {}, "payload": _Payload()}, tmp_path / "resume.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train_proxy(tmp_path, cfg, device="cpu", num_workers=0, resume=True)


def test_training_grammar_never_draws_the_held_out_forms(tok):
    import random

    from hf_sparse_attn_lab.proxy import HELD_OUT_QUERIES, VT_HOPS, niah_grammar, training_sample

    assert not set(VT_HOPS) & {2, 3, 5, 6}
    rng = random.Random(0)
    draws = [niah_grammar(rng) for _ in range(20_000)]
    assert not {(d["num_keys"], d["num_queries"]) for d in draws} & HELD_OUT_QUERIES
    assert {d["repeats"] for d in draws} == {1, 2, 4} and {d["decoy_prefix"] for d in draws} == {
        0,
        1,
        2,
        4,
        5,
        6,
    }
    assert {(d["num_keys"], d["num_queries"]) for d in draws} >= {(6, 1), (6, 3), (6, 5), (6, 6), (5, 2)}
    for seed in range(6):
        sample = training_sample("vt_varied", tok, 600, seed=seed)
        assert len(sample.answers) - 1 in VT_HOPS
