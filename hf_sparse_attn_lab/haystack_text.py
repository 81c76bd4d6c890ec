"""Extract the proxy's natural-text haystack from the Python standard library's docstrings and comments.

The tasks' "essay" haystack should read like text, not like shuffled filler words, and every machine
must generate the same prompts without a download. Every Python install has the standard library, but
its docstrings differ between versions, so the text is extracted once and shipped compressed
(``hf_sparse_attn/assets/haystack.txt.xz``): one sentence per line, lowercase words and ``, : ?``
separated by spaces, each ending in ``.``.

python -m hf_sparse_attn_lab.haystack_text hf_sparse_attn/assets/haystack.txt.xz
"""

from __future__ import annotations

import ast
import collections
import io
import lzma
import os
import re
import sys
import sysconfig
import tokenize
from pathlib import Path

from hf_sparse_attn.runtime.fileio import atomic_write
from hf_sparse_attn.vocab import FUNCTION_WORDS, pseudo_words

# Packages whose text is mostly test fixtures, generated tables or GUI strings, not prose.
SKIPPED_PACKAGES = {
    "test",
    "tests",
    "idlelib",
    "site-packages",
    "__pycache__",
    "lib2to3",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "distutils",
}
MAX_WORDS = 3000
MIN_SENTENCE_WORDS = 4
MAX_SENTENCE_WORDS = 60
_TOKEN = re.compile(r"[a-z]+|[.,:?]")


def source_texts(stdlib_dir: str | os.PathLike) -> list[str]:
    """Docstrings and comment lines of every module under ``stdlib_dir``, in sorted file order."""
    texts = []
    for directory, subdirs, files in os.walk(stdlib_dir):
        subdirs[:] = sorted(s for s in subdirs if s not in SKIPPED_PACKAGES)
        for name in sorted(f for f in files if f.endswith(".py")):
            try:
                source = Path(directory, name).read_text(encoding="utf-8")
                tree = ast.parse(source)
                comments = [
                    tok.string.lstrip("#").strip()
                    for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                    if tok.type == tokenize.COMMENT
                ]
            except (SyntaxError, UnicodeDecodeError, tokenize.TokenError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        texts.append(doc)
            texts.append("\n".join(comments))
    return texts


def _prose_tokens(text: str) -> list[str]:
    """Lowercase words and ``. , : ?`` of the prose lines (doctest and code-like lines dropped)."""
    lines = [
        line
        for line in text.splitlines()
        if not line.lstrip().startswith((">>>", "...", "$"))
        and sum(c in "()[]{}=<>_/\\*#@%|" for c in line) < 3
    ]
    return _TOKEN.findall("\n".join(lines).lower())


def sentences(texts: list[str], max_words: int = MAX_WORDS) -> list[str]:
    """Deduplicated sentences over the ``max_words`` most frequent words; other words are dropped.

    Single letters (but "a") and the task generators' pseudo-words are dropped too, so a haystack
    never contains a task's key or a word of its value by accident.
    """
    reserved = set(pseudo_words(2060)[:2000])
    streams = [_prose_tokens(t) for t in texts]
    counts = collections.Counter(
        w for s in streams for w in s if w.isalpha() and (len(w) > 1 or w == "a") and w not in reserved
    )
    kept = {w for w, _ in counts.most_common(max_words)} | set(FUNCTION_WORDS)
    out, seen = [], set()
    for stream in streams:
        words: list[str] = []
        for tok in stream + ["."]:
            if tok == ".":
                while words and words[-1] in ",:?":
                    words.pop()
                sentence = " ".join(words)
                n = sum(w.isalpha() for w in words)
                if MIN_SENTENCE_WORDS <= n <= MAX_SENTENCE_WORDS and sentence not in seen:
                    seen.add(sentence)
                    out.append(sentence + " .")
                words = []
            elif tok.isalpha():
                if tok in kept:
                    words.append(tok)
            elif words and words[-1] not in ",:?":
                words.append(tok)
    return out


def write_haystack(path: str | os.PathLike, stdlib_dir: str | os.PathLike | None = None) -> int:
    """Extract, normalize and write the haystack (xz, one sentence per line); returns the sentence count."""
    lines = sentences(source_texts(stdlib_dir or sysconfig.get_paths()["stdlib"]))
    data = lzma.compress(("\n".join(lines) + "\n").encode(), preset=9 | lzma.PRESET_EXTREME)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))
    return len(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m hf_sparse_attn_lab.haystack_text OUTPUT.txt.xz\n\n{__doc__}")
    print(f"{write_haystack(sys.argv[1])} sentences written to {sys.argv[1]}")
