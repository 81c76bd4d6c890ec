"""`hf-sparse-attn publish`: render a Hub model repo folder from a trained indexer, optionally push it.

Indexer-only repo (default): config.json (base config + ``sparse_attention`` + ``base_model`` +
``auto_map``), indexer.safetensors, sparse_config.json, the generated modeling file, tokenizer
files of the base when available, README.md. Full repo (``model_dir``): the backbone weights too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from string import Template

import hf_sparse_attn

from ..config import CONFIG_NAME, SparseAttentionConfig
from ..modeling import WEIGHTS_NAME
from .bundle import MODELING_FILE, write_modeling_file
from .kernel_repo import DEFAULT_KERNEL_REPO, KERNEL_VERSION

CLASSES = {
    "qwen3": "SparseQwen3ForCausalLM",
    "qwen3_5_text": "SparseQwen3_5ForCausalLM",
    "qwen3_5": "SparseQwen3_5ForConditionalGeneration",
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "generation_config.json",
)


def speed_table(results_dir: Path | None) -> str:
    """Markdown rows read from the kernel benchmark JSON files (never typed in)."""
    files = sorted(results_dir.glob("*_bs64.json")) if results_dir and results_dir.is_dir() else []
    if not files:
        return "(no benchmark results were found when this card was rendered)"
    lines = [
        "| shape | tokens | density | sparse ms | cuDNN dense ms | speedup |",
        "|---|---|---|---|---|---|",
    ]
    for path in files:
        rows = json.loads(path.read_text())["rows"]
        for r in rows:
            if r["method"].startswith("ours") and r["ms"] and r["seq_len"] == max(x["seq_len"] for x in rows):
                dense = next(x for x in rows if x["method"] == "sdpa-cudnn" and x["seq_len"] == r["seq_len"])
                lines.append(
                    f"| {r['shape']} | {r['seq_len'] // 1024}K | {r['density']:.2f} | {r['ms']:.1f} | "
                    f"{dense['ms']:.1f} | {dense['ms'] / r['ms']:.1f}x |"
                )
    return "\n".join(lines)


def render_repo(
    out_dir: str | Path,
    indexer_dir: str | Path,
    base_model: str,
    base_revision: str | None = None,
    model_dir: str | Path | None = None,
    repo_name: str | None = None,
    kernel_repo: str = DEFAULT_KERNEL_REPO,
    kernel_version: int = KERNEL_VERSION,
    license: str = "apache-2.0",
    results_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
) -> Path:
    from transformers import AutoConfig

    out, indexer_dir = Path(out_dir), Path(indexer_dir)
    out.mkdir(parents=True, exist_ok=True)
    sparse = SparseAttentionConfig.from_pretrained(indexer_dir)
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        shutil.copy(indexer_dir / name, out / name)
    source = str(model_dir) if model_dir is not None else base_model
    hub = {"cache_dir": cache_dir, "local_files_only": local_files_only}
    base_config = AutoConfig.from_pretrained(source, revision=None if model_dir else base_revision, **hub)
    cls = CLASSES.get(base_config.model_type)
    if cls is None:
        raise NotImplementedError(
            f"cannot publish for model_type {base_config.model_type!r}; supported: {sorted(CLASSES)}"
        )
    config = base_config.to_dict()
    config.update(
        {
            "architectures": [cls],
            "auto_map": {"AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.{cls}"},
            "sparse_attention": sparse.to_dict(),
            "sparse_kernels": {"repo": kernel_repo, "version": kernel_version},
            "hf_sparse_attn_version": hf_sparse_attn.__version__,
        }
    )
    config.pop("_attn_implementation_autoset", None)
    config["_name_or_path"] = repo_name or base_model  # not the directory it was rendered from
    if model_dir is None:
        config["base_model"] = {"id": base_model, "revision": base_revision or "main"}
    else:
        for path in Path(model_dir).iterdir():
            if path.suffix == ".safetensors" or path.name in (
                "model.safetensors.index.json",
                "generation_config.json",
            ):
                shutil.copy(path, out / path.name)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    _copy_tokenizer(Path(model_dir) if model_dir else None, base_model, base_revision, out, hub)
    _drop_loading_options(out / "tokenizer_config.json")
    write_modeling_file(out)
    name, value = sparse.budget
    card = Template((Path(__file__).parent / "model_card.md").read_text()).substitute(
        base_model=base_model,
        base_revision=base_revision or "main",
        license=license,
        repo_name=repo_name or out.name,
        indexer_heads=sparse.indexer_heads,
        indexer_dim=sparse.indexer_dim,
        block_size=sparse.block_size,
        min_sparse_len=sparse.min_sparse_len,
        budget=f"{name}={value}",
        sink_blocks=sparse.sink_blocks,
        local_blocks=sparse.local_blocks,
        kernel_repo=kernel_repo,
        kernel_version=kernel_version,
        version=hf_sparse_attn.__version__,
        speed_table=speed_table(Path(results_dir) if results_dir else None),
        repo_kind="This repo holds the indexer only; the frozen weights load from the base repo."
        if model_dir is None
        else "This repo holds the full weights.",
    )
    (out / "README.md").write_text(card)
    return out


TOKENIZER_LOADING_OPTIONS = ("is_local", "local_files_only", "cache_dir", "force_download", "token")


def _copy_tokenizer(
    model_dir: Path | None, base_model: str, base_revision: str | None, out: Path, hub: dict
) -> None:
    if model_dir is not None:
        for name in TOKENIZER_FILES:
            if (model_dir / name).exists():
                shutil.copy(model_dir / name, out / name)
        return
    from transformers import AutoTokenizer
    from transformers.utils import cached_file

    present = cached_file(
        base_model,
        "tokenizer_config.json",
        revision=base_revision,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **hub,
    )
    if present is None:
        print(
            f"note: no tokenizer found for {base_model}; the rendered repo has none (users load the base's)"
        )
        return
    AutoTokenizer.from_pretrained(base_model, revision=base_revision, **hub).save_pretrained(out)


def _drop_loading_options(path: Path) -> None:
    """Remove the options of the load that produced a tokenizer_config.json (an offline load writes
    ``local_files_only: true``, which would stop the published repo's users from downloading)."""
    if not path.exists():
        return
    config = json.loads(path.read_text())
    kept = {k: v for k, v in config.items() if k not in TOKENIZER_LOADING_OPTIONS}
    if kept != config:
        path.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n")


def push(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None) -> str:
    """Upload ``folder`` with huggingface_hub (token from HF_TOKEN / `hf auth login`)."""
    from huggingface_hub import create_branch, create_repo, upload_folder

    create_repo(repo_id, private=private, exist_ok=True)
    if revision:
        create_branch(repo_id, branch=revision, exist_ok=True)
    info = upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        revision=revision,
        commit_message=f"hf-sparse-attn {hf_sparse_attn.__version__} publish",
    )
    return str(info)
