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
