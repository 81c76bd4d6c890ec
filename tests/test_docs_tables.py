"""The README's and docs' tables are the ones rendered from results/*.json."""

from __future__ import annotations

from hf_sparse_attn_lab import docs_tables


def test_docs_tables_match_the_results_json():
    assert docs_tables.stale_docs() == [], "run `hf-sparse-attn docs-tables` and commit the docs"


def test_every_generated_table_is_used_and_a_hand_edit_is_caught():
    text = "\n".join(p.read_text() for p in docs_tables.doc_paths())
    for name in docs_tables.TABLES:
        assert f"<!-- table: {name} -->" in text
    readme = (docs_tables.ROOT / "README.md").read_text()
    dense_cell = docs_tables.quality_table().splitlines()[2].split("|")[2].strip()  # the dense row
    edited = readme.replace(dense_cell, "99.9 ± 0.1")
    assert edited != readme and docs_tables.render(edited) == readme


def test_macro_interval_shrinks_with_prompts():
    from hf_sparse_attn_lab.eval.runner import macro_interval

    assert macro_interval([(0.8, 10)] * 4) > macro_interval([(0.8, 100)] * 4) > 0


def test_outside_a_checkout_the_error_says_so(monkeypatch, tmp_path):
    import pytest

    monkeypatch.setattr(docs_tables, "ROOT", tmp_path)
    with pytest.raises(FileNotFoundError, match="source checkout"):
        docs_tables.stale_docs()


def test_runs_merge_into_one_table_only_when_their_shared_rows_agree(monkeypatch, tmp_path):
    """A table merges runs on the same prompts (a budget sweep beside the served budget's run): each
    (label, length, task) cell is kept once, and a dense row that differs between runs is refused,
    since pairing against it would then mean nothing."""
    import json

    import pytest

    def row(label, correct):
        return {
            "label": label,
            "method": label.split()[0],
            "length": 4096,
            "task": "qa",
            "correct": correct,
            "accuracy": sum(correct) / len(correct),
            "samples": len(correct),
            "density": None,
        }

    monkeypatch.setattr(docs_tables, "ROOT", tmp_path)
    for name, rows in {
        "a.json": [row("dense", [1, 1, 0]), row("indexer density=0.1", [1, 0, 0])],
        "b.json": [row("dense", [1, 1, 0]), row("indexer density=0.2", [1, 1, 0])],
        "c.json": [row("dense", [1, 0, 0])],
    }.items():
        (tmp_path / name).write_text(json.dumps({"rows": rows}))
    merged = docs_tables._rows(["a.json", "b.json"])
    assert sorted(r["label"] for r in merged) == ["dense", "indexer density=0.1", "indexer density=0.2"]
    with pytest.raises(ValueError, match="c.json.*differs from an earlier run"):
        docs_tables._rows(["a.json", "c.json"])
