"""RULER-style synthetic long-context tasks, generated offline from a seed (facts: notes/RULER.md).

Every generator returns a ``Sample`` (prompt text, the answers, the needle depths used) whose
prompt has about ``length`` tokens under the project tokenizer; ``score`` is RULER's containment
rule (all answers must appear in the output), compared on token sequences so spacing of digits
does not matter. Values are 7-digit numbers or word pairs; UUID values are not generated (the
closed word-level vocabulary has no hex tokens). The "essay" haystack is natural text (standard-library
prose, ``haystack``), read in order from a random sentence on, as RULER reads its essays.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from . import haystack as text
from .vocab import pseudo_words

REPEAT_NOISE = (
    "the grass is green . the sky is blue . the sun is yellow . here we go . there and back again ."
)


@dataclass
class Sample:
    task: str
    prompt: str
    answers: list[str]
    depths: list[float] = field(default_factory=list)


class TaskBuilder:
    """Shared pieces: word pools, noise, needle insertion at depths, token budgeting."""

    def __init__(self, tokenizer, seed: int = 0):
        self.tok = tokenizer
        self.rng = random.Random(seed)
        words = pseudo_words(2000 + 60)
        self.nouns, self.adjs = words[:1000], words[1000:2000]
        self.words = self.nouns + self.adjs

    def n_tokens(self, text: str) -> int:
        return self.token_counts([text])[0]

    def token_counts(self, texts: list[str]) -> list[int]:
        """Token counts of many texts in one tokenizer call (the Rust tokenizer directly where there is
        one: the Python wrapper's per-call work was a fifth of proxy training's data time)."""
        backend = getattr(self.tok, "backend_tokenizer", None)
        if backend is not None:
            return [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]
        return [len(ids) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]]

    def number(self) -> str:
        return str(self.rng.randint(1_000_000, 9_999_999))

    def word_pair(self) -> str:
        return f"{self.rng.choice(self.adjs)} {self.rng.choice(self.nouns)}"

    def essay_sentence(self) -> str:
        return self.rng.choice(text.sentences())

    def haystack(self, kind: str, budget: int, needle_maker: Callable[[], str] | None = None) -> list[str]:
        """Sentences totalling about ``budget`` tokens: repeated noise, running text, or made needles."""
        sentences, used = [], 0
        if kind == "repeat":
            per = self.n_tokens(REPEAT_NOISE)
            return [REPEAT_NOISE] * -(-budget // per) if budget > 0 else []
        if kind == "essay":  # running text from a random sentence on
            corpus, start = text.sentences(), self.rng.randrange(len(text.sentences()))

            def next_batch() -> list[str]:
                return [corpus[(start + len(sentences) + i) % len(corpus)] for i in range(64)]
        else:

            def next_batch() -> list[str]:
                return [needle_maker() for _ in range(max(8, (budget - used) // 12))]

        while used < budget:
            batch = next_batch()
            for s, n in zip(batch, self.token_counts(batch), strict=True):
                if used >= budget:
                    break
                sentences.append(s)
                used += n
        return sentences

    def insert(
        self, sentences: list[str], needles: list[str], depths: list[float] | None = None
    ) -> list[float]:
        depths = depths or [self.rng.choice([i / 39 for i in range(40)]) for _ in needles]
        for needle, depth in sorted(zip(needles, depths, strict=True), key=lambda x: -x[1]):
            sentences.insert(round(depth * len(sentences)), needle)
        return depths

    def assemble(
        self,
        task: str,
        length: int,
        kind: str,
        needles: list[str],
        question: str,
        answers: list[str],
        needle_maker=None,
        depths=None,
    ) -> Sample:
        fixed = self.n_tokens(" ".join(needles) + " " + question)
        sentences = self.haystack(kind, max(0, length - fixed), needle_maker)
        depths = self.insert(sentences, needles, depths)
        return Sample(task, " ".join(sentences) + " " + question, answers, depths)


def _needle(key: str, value: str, kind: str = "numbers") -> str:
    return f"one of the special magic {kind} for {key} is : {value} ."


def niah(
    b: TaskBuilder,
    length: int,
    haystack: str = "essay",
    num_keys: int = 1,
    num_values: int = 1,
    num_queries: int = 1,
    value_kind: str = "numbers",
    task: str = "niah",
    repeats: int = 1,
    decoy_prefix: int = 0,
) -> Sample:
    """Needles "one of the special magic {value_kind} for KEY is : VALUE ."; the first ``num_queries``
    keys are asked. Each needle is stated ``repeats`` times; ``decoy_prefix`` > 0 adds a needle for an
    unasked key whose number shares that many leading digits with the first asked value."""
    keys = b.rng.sample(b.nouns, num_keys + (decoy_prefix > 0))
    make = b.number if value_kind == "numbers" else b.word_pair
    values = {k: [make() for _ in range(num_values)] for k in keys}
    if decoy_prefix:
        value, decoy_key = values[keys[0]][0], keys.pop()
        values[decoy_key] = [value]
        while values[decoy_key][0] == value:
            values[decoy_key] = [value[:decoy_prefix] + b.number()[decoy_prefix:]]
        keys.append(decoy_key)
    needles = [_needle(k, v, value_kind) for k in keys for v in values[k] for _ in range(repeats)]
    asked = keys[:num_queries]
    question = (
        f"what are all the special magic {value_kind} for {' and '.join(asked)} mentioned in this text ? "
        "answer :"
    )
    answers = [v for k in asked for v in values[k]]
    filler = (lambda: _needle(b.rng.choice(b.nouns), make(), value_kind)) if haystack == "needle" else None
    return b.assemble(task, length, haystack, needles, question, answers, filler)


def variable_tracking(
    b: TaskBuilder, length: int, hops: int = 4, chains: int = 1, task: str = "vt"
) -> Sample:
    upper = [w for w in b.tok.get_vocab() if w.isupper() and len(w) > 2]
    names = b.rng.sample(sorted(upper), (hops + 1) * chains)
    needles, answers = [], []
    for c in range(chains):
        chain = names[c * (hops + 1) : (c + 1) * (hops + 1)]
        value = b.number()
        needles.append(f"var {chain[0]} = {value} .")
        needles += [f"var {chain[i]} = var {chain[i - 1]} ." for i in range(1, len(chain))]
        if c == 0:
            answers, asked = chain, value
    depths = sorted(b.rng.random() for _ in needles)
    question = f"which variables hold the value {asked} ? answer :"
    return b.assemble(task, length, "repeat", needles, question, answers, depths=depths)


def common_words(
    b: TaskBuilder, length: int, top: int = 10, freq_common: int = 30, freq_rare: int = 3
) -> Sample:
    common = b.rng.sample(b.nouns, top)
    pool = [w for w in b.nouns if w not in common]
    freq = max(
        freq_rare + 2, min(freq_common, length // (4 * top))
    )  # common words fill at most half the list
    words = [w for w in common for _ in range(freq)]
    while 2 * len(words) + 30 < length:  # each entry is "word ,"
        words += [b.rng.choice(pool)] * freq_rare
    b.rng.shuffle(words)
    listing = " ".join(f"{w} ," for w in words)
    question = f"what are the {top} most common words in the list above ? answer :"
    return Sample("cwe", f"{listing} {question}", common)


def frequent_words(b: TaskBuilder, length: int, top: int = 3, alpha: float = 2.0) -> Sample:
    ranked = b.rng.sample(b.nouns, 200)
    weights = [1.0 / (i + 1) ** alpha for i in range(len(ranked))]
    words, used = [], 0
    while used < length - 30:
        batch = b.rng.choices(ranked, weights, k=64)
        words += batch
        used += sum(b.token_counts(batch))
    counts = {w: words.count(w) for w in set(words)}
    answers = sorted(counts, key=lambda w: -counts[w])[:top]
    question = f"what are the {top} most frequent words in the text above ? answer :"
    return Sample("fwe", " ".join(words) + " " + question, answers)


def qa_retrieval(b: TaskBuilder, length: int, distractors_per_doc: int = 3) -> Sample:
    """Documents of facts 'the X of T is V'; one asked, the others (same attribute) distract."""
    attr = b.rng.choice(b.nouns)
    docs, titles, used = [], [], 0
    while used < length - 40:
        title = b.rng.choice(b.nouns)
        value = b.word_pair()
        body = " ".join(b.essay_sentence() for _ in range(distractors_per_doc))
        docs.append(f"document title : {title} . {body} the {attr} of {title} is {value} .")
        titles.append((title, value))
        used += b.n_tokens(docs[-1])
    title, answer = b.rng.choice(titles)
    question = f"question : what is the {attr} of {title} ? answer :"
    return Sample("qa", " ".join(docs) + " " + question, [answer])


TASKS: dict[str, Callable[[TaskBuilder, int], Sample]] = {
    "niah_single_1": lambda b, n: niah(b, n, "repeat", task="niah_single_1"),
    "niah_single_2": lambda b, n: niah(b, n, "essay", task="niah_single_2"),
    "niah_single_3": lambda b, n: niah(b, n, "essay", value_kind="words", task="niah_single_3"),
    "niah_multikey_1": lambda b, n: niah(b, n, "essay", num_keys=4, task="niah_multikey_1"),
    "niah_multikey_2": lambda b, n: niah(b, n, "needle", task="niah_multikey_2"),
    "niah_multivalue": lambda b, n: niah(b, n, "essay", num_values=4, task="niah_multivalue"),
    "niah_multiquery": lambda b, n: niah(b, n, "essay", num_keys=4, num_queries=4, task="niah_multiquery"),
    "vt": variable_tracking,
    "cwe": common_words,
    "fwe": frequent_words,
    "qa": qa_retrieval,
}


def _variable_tracking_hops(hops: int) -> Callable[[TaskBuilder, int], Sample]:
    return lambda b, n: variable_tracking(b, n, hops=hops, task=f"vt_hops{hops}")


def _multiquery(keys: int, asked: int) -> Callable[[TaskBuilder, int], Sample]:
    task = f"niah_multiquery_{asked}of{keys}"
    return lambda b, n: niah(b, n, "essay", num_keys=keys, num_queries=asked, task=task)


# Variants of the tasks' grammar that proxy training never produces (``TASKS`` is what it trains on):
# other hop counts, k-of-n queries, a distractor value sharing the asked value's prefix, a repeated key.
# An evaluation's "held-out grammar" rows: they tell a model that learned a task from one that learned
# its surface form.
HELD_OUT_TASKS: dict[str, Callable[[TaskBuilder, int], Sample]] = {
    "vt_hops2": _variable_tracking_hops(2),
    "vt_hops3": _variable_tracking_hops(3),
    "vt_hops5": _variable_tracking_hops(5),
    "vt_hops6": _variable_tracking_hops(6),
    "niah_multiquery_2of6": _multiquery(6, 2),
    "niah_multiquery_4of6": _multiquery(6, 4),
    "niah_prefix_distractor": lambda b, n: niah(b, n, decoy_prefix=3, task="niah_prefix_distractor"),
    "niah_repeated_key": lambda b, n: niah(b, n, repeats=3, task="niah_repeated_key"),
}


def generate(task: str, tokenizer, length: int, seed: int = 0) -> Sample:
    make = TASKS.get(task) or HELD_OUT_TASKS.get(task)
    if make is None:
        raise ValueError(
            f"unknown task {task!r}; known: {sorted(TASKS)}, held-out grammar: {sorted(HELD_OUT_TASKS)}"
        )
    return make(TaskBuilder(tokenizer, seed), length)


def score(output: str, answers: list[str], tokenizer) -> float:
    """1.0 if every answer's token sequence occurs in the output's, else 0.0 (RULER containment)."""
    out = tokenizer(output, add_special_tokens=False)["input_ids"]
    for answer in answers:
        ans = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not any(out[i : i + len(ans)] == ans for i in range(len(out) - len(ans) + 1)):
            return 0.0
    return 1.0
