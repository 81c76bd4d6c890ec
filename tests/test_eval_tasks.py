"""RULER-style task generators, the word-level tokenizer, and the containment scorer."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from hf_sparse_attn.tasks import TASKS, generate, score
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


@pytest.mark.parametrize("task", sorted(TASKS))
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
