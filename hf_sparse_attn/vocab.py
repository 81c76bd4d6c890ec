"""A readable closed word-level vocabulary and a `tokenizers` tokenizer for it.

Pseudo-words are built from consonant-vowel syllables (deterministic, no downloads): the tasks'
keys and values. Every word of the natural-text haystack (``haystack.words``) follows them; digits
are single tokens (numbers tokenize digit by digit), plus punctuation and special tokens. The
tokenizer is a real `tokenizers` WordLevel model saved as ``tokenizer.json`` and loadable with
``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

import functools
import itertools
import os

SPECIAL = ["<pad>", "<unk>", "<bos>", "<eos>"]
PUNCT = [".", ",", ":", "?", "=", "-", "'"]
DIGITS = [str(i) for i in range(10)]
FUNCTION_WORDS = [
    "the",
    "a",
    "of",
    "for",
    "is",
    "are",
    "one",
    "special",
    "magic",
    "number",
    "numbers",
    "word",
    "words",
    "key",
    "value",
    "what",
    "all",
    "mentioned",
    "in",
    "this",
    "text",
    "answer",
    "question",
    "var",
    "and",
    "to",
    "it",
    "which",
    "variables",
    "hold",
    "most",
    "common",
    "frequent",
    "list",
    "grass",
    "green",
    "sky",
    "blue",
    "sun",
    "yellow",
    "here",
    "we",
    "go",
    "there",
    "back",
    "again",
    "document",
    "passage",
    "title",
    "about",
    "above",
]
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def pseudo_words(n: int) -> list[str]:
    """``n`` distinct lowercase two- and three-syllable words, deterministic."""
    return list(_pseudo_words(n))


@functools.cache
def _pseudo_words(n: int) -> tuple[str, ...]:  # every task sample draws from them: built once
    syllables = [c + v for c, v in itertools.product(_CONSONANTS, _VOWELS)]
    words = []
    for length in (2, 3):
        for combo in itertools.product(syllables, repeat=length):
            words.append("".join(combo))
            if len(words) == n:
                return tuple(words)
    raise ValueError(f"at most {len(words)} pseudo-words available")


def vocabulary(num_words: int = 2000) -> list[str]:
    """Special tokens, punctuation, digits, function words, 200 upper-case names, pseudo-words, text."""
    from .haystack import words as haystack_words

    words = [w for w in pseudo_words(num_words + len(FUNCTION_WORDS)) if w not in FUNCTION_WORDS][:num_words]
    base = SPECIAL + PUNCT + DIGITS + FUNCTION_WORDS + [w.upper() for w in words[:200]] + words
    taken = set(base)
    return base + [w for w in haystack_words() if w not in taken]


def build_tokenizer(num_words: int = 2000):
    """A ``PreTrainedTokenizerFast`` over ``vocabulary(num_words)`` (digits and punctuation split)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocabulary(num_words)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def save_tokenizer(directory: str | os.PathLike, num_words: int = 2000) -> None:
    build_tokenizer(num_words).save_pretrained(directory)
