"""RULER-style task generators, the word-level tokenizer, and the containment scorer."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from hf_sparse_attn.tasks import HELD_OUT_TASKS, TASKS, generate, score
from hf_sparse_attn.vocab import build_tokenizer, save_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_tokenizer_round_trips_through_save_and_auto_tokenizer(tmp_path, tok):
    save_tokenizer(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "one of the special magic numbers for bada is : 4712345 ."
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert tok.unk_token_id not in tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("task", sorted(TASKS) + sorted(HELD_OUT_TASKS))
def test_every_task_hits_its_length_has_answers_and_no_unknown_tokens(task, tok):
    sample = generate(task, tok, 1000, seed=3)
    ids = tok(sample.prompt, add_special_tokens=False)["input_ids"]
    assert 850 <= len(ids) <= 1250, len(ids)
    assert tok.unk_token_id not in ids
    assert sample.answers and all(a for a in sample.answers)
    assert score(" ".join(sample.answers), sample.answers, tok) == 1.0
    assert generate(task, tok, 1000, seed=3).prompt == sample.prompt
    assert generate(task, tok, 1000, seed=4).prompt != sample.prompt


def test_needles_sit_in_the_context_and_at_their_depth(tok):
    sample = generate("niah_single_2", tok, 2000, seed=1)
    value = sample.answers[0]
    assert value in sample.prompt
    position = sample.prompt.index(value) / len(sample.prompt)
    assert abs(position - sample.depths[0]) < 0.1


def test_variable_tracking_chain_is_answerable(tok):
    sample = generate("vt", tok, 800, seed=2)
    assert len(sample.answers) == 5
    for name in sample.answers[1:]:
        assert f"var {name} = var " in sample.prompt


def test_scorer_is_containment_over_tokens(tok):
    assert score("the answer is 4 7 1 2 3 4 5 .", ["4712345"], tok) == 1.0
    assert score("the answer is 4712346", ["4712345"], tok) == 0.0
    assert score("bada kobe", ["bada", "kobe"], tok) == 1.0
    assert score("bada", ["bada", "kobe"], tok) == 0.0
    with pytest.raises(ValueError, match="unknown task"):
        generate("nope", tok, 100)


def test_held_out_grammar_is_what_it_says_and_never_trained(tok):
    from hf_sparse_attn_lab.cli import _task_list
    from hf_sparse_attn_lab.eval.runner import answer_budget
    from hf_sparse_attn_lab.proxy import TASK_WEIGHTS

    assert not set(HELD_OUT_TASKS) & (set(TASKS) | set(TASK_WEIGHTS))  # proxy training never draws them
    assert _task_list("heldout") == list(HELD_OUT_TASKS) and _task_list("all") is None
    for hops in (2, 3, 5, 6):
        sample = generate(f"vt_hops{hops}", tok, 1000, seed=5)
        assert sample.task == f"vt_hops{hops}" and len(sample.answers) == hops + 1
        assert sample.prompt.count("var ") == 2 * hops + 1  # first assignment + one "var X = var Y" per hop
        assert answer_budget(sample.task) >= len(tok(" ".join(sample.answers))["input_ids"]) + hops
    for asked in (2, 4):
        sample = generate(f"niah_multiquery_{asked}of6", tok, 1000, seed=5)
        assert len(sample.answers) == asked and sample.prompt.count("special magic numbers for") == 7
    sample = generate("niah_prefix_distractor", tok, 1000, seed=5)
    (value,) = sample.answers
    decoys = [
        v for v in sample.prompt.replace(" .", "").split() if v.isdigit() and len(v) == 7 and v != value
    ]
    assert len(decoys) == 1 and decoys[0][:3] == value[:3]
    sample = generate("niah_repeated_key", tok, 1000, seed=5)
    assert sample.prompt.count(f": {sample.answers[0]} .") == 3


def test_prompts_are_pinned(tok):
    """Every stored eval (results/) was scored on these exact prompts: a generator change that alters
    them must be deliberate (and re-run the evals it invalidates), never a side effect of a refactor."""
    import hashlib

    digest = hashlib.sha256()
    for task in sorted(TASKS) + sorted(HELD_OUT_TASKS):
        sample = generate(task, tok, 600, seed=11)
        digest.update((sample.prompt + "|" + "|".join(sample.answers)).encode())
    assert digest.hexdigest()[:16] == "ca944522e4f01eb6"


def test_essay_haystack_is_running_standard_library_text_every_word_in_the_vocabulary(tok):
    from hf_sparse_attn import haystack

    sentences = haystack.sentences()
    assert len(sentences) > 10_000 and all(s.endswith(" .") for s in sentences)
    vocab = tok.get_vocab()
    assert all(w in vocab for w in haystack.words())
    sample = generate("niah_single_2", tok, 2000, seed=1)
    start = sample.prompt.split(" . ")[0] + " ."
    i = sentences.index(start)
    assert sentences[i + 1] in sample.prompt  # consecutive sentences: text, not shuffled filler


def test_haystack_extraction_keeps_prose_and_drops_code_keys_and_rare_words(tmp_path):
    from hf_sparse_attn_lab.haystack_text import sentences, source_texts

    (tmp_path / "mod.py").write_text(
        '"""Read the file, then return its lines.\n\n>>> read(path)\nbada kobe appear in the text here."""\n'
        "# Seek to the start of the buffer before reading.\nx = 1  # f(x) = y[0] * {z}\n"
    )
    out = sentences(source_texts(tmp_path), max_words=100)
    # "file" is a task pseudo-word, "bada kobe" are task keys, ">>>" lines are doctests, "f(x) = ..." is code
    assert out == [
        "read the , then return its lines .",
        "appear in the text here .",
        "seek to the start of the buffer before reading .",
    ]
    assert "to the of the ." in sentences(source_texts(tmp_path), max_words=5)  # rare words dropped
