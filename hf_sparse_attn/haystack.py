"""The natural-text haystack of the tasks: standard-library prose, shipped compressed in the package.

Extracted once by ``hf_sparse_attn_lab.haystack_text`` (docstrings and comments differ between
Python versions, so the text is a file, not a function of the running interpreter): every machine
generates the same prompts, and the tokenizer's vocabulary covers every word of it.
"""

from __future__ import annotations

import collections
import functools
import lzma
from pathlib import Path

HAYSTACK_PATH = Path(__file__).parent / "assets" / "haystack.txt.xz"


@functools.cache
def sentences() -> tuple[str, ...]:
    """The haystack's sentences in document order: lowercase words and ``, : ?``, each ending in ``.``."""
    with lzma.open(HAYSTACK_PATH, "rt", encoding="utf-8") as f:
        return tuple(line.rstrip("\n") for line in f if line.strip())


@functools.cache
def words() -> tuple[str, ...]:
    """The haystack's distinct words, most frequent first (ties alphabetical)."""
    counts = collections.Counter(w for s in sentences() for w in s.split() if w.isalpha())
    return tuple(sorted(counts, key=lambda w: (-counts[w], w)))
