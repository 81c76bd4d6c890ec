"""`hf-sparse-attn publish`: render a Hub model repo folder from a trained indexer, optionally push it.

Indexer-only repo (default): config.json (base config + ``sparse_attention`` + ``base_model`` +
``auto_map``), indexer.safetensors, sparse_config.json, the generated modeling file, tokenizer
files of the base when available, README.md. Full repo (``model_dir``): the backbone weights too.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from string import Template

import hf_sparse_attn

from ..runtime.config import CONFIG_NAME, SparseAttentionConfig
from ..runtime.fileio import atomic_write, atomic_write_dir, atomic_write_text
from ..runtime.modeling import REPO_ID, WEIGHTS_NAME
from ..runtime.remote_model import COMMIT, kernel_file_hashes
from .bundle import MODELING_FILE, write_modeling_file
from .kernel_repo import DEFAULT_KERNEL_REPO, VARIANT, build_kernel_repo

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


def kernel_pin(repo: str, revision: str | None) -> dict:
    """``config.json``'s ``sparse_kernels``: the kernel repo at one commit + the sha256 of each file of
    its build, rendered here from the installed ``hf_sparse_attn/ops`` (what that commit must hold)."""
    if revision is not None and not COMMIT.match(revision):
        raise ValueError(
            f"--kernel-revision {revision!r} is not a 40-hex commit sha: a branch or tag can move, so pin the "
            f"commit of {repo} that `hf-sparse-attn build-kernels` was uploaded as"
        )
    with tempfile.TemporaryDirectory() as tmp:
        build_kernel_repo(tmp)
        hashes = kernel_file_hashes(Path(tmp) / "build" / VARIANT)
    return {"repo": repo, "revision": revision, "sha256": hashes}


def resolve_revision(repo_id: str, revision: str | None, what: str, flag: str) -> str:
    """A commit sha for ``repo_id`` at ``revision`` (default main), looked up on the Hub."""
    if revision is not None and COMMIT.match(revision):
        return revision
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ValueError(
            f"{flag} must be a 40-hex commit sha when offline (HF_HUB_OFFLINE is set): the {what} {repo_id} at "
            f"{revision or 'main'} cannot be resolved to a commit without the Hub"
        )
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(repo_id, revision=revision or "main").sha
    except Exception as err:
        raise ValueError(
            f"could not resolve the {what} {repo_id}@{revision or 'main'} to a commit ({type(err).__name__}: "
            f"{err}); pass {flag} <40-hex commit sha>"
        ) from None


def _copy_file(src: Path, dst: Path) -> None:
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def _unlisted(folder: Path) -> list[str]:
    """Entries of ``folder`` that its render manifest does not list (all of them without one)."""
    listed = _manifest_files(folder)
    return sorted(p.name for p in folder.iterdir() if p.name not in listed)


def check_out_dir(out: Path, inputs: list[Path]) -> None:
    """Refuse an output folder that is an input or holds files this render would not write (they would be
    uploaded with it)."""
    for source in inputs:
        if out.resolve() == source.resolve():
            raise ValueError(f"--out {out} is the input folder {source}: render into a new, empty folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: pass a folder to render the repo into")
    if out.exists():
        stray = _unlisted(out)
        if stray:
            raise ValueError(
                f"--out {out} already holds files that are not part of a rendered repo ({', '.join(stray)}); "
                "they would be uploaded with it: render into a new, empty folder"
            )


def _manifest_files(out: Path) -> set[str]:
    manifest = out / MANIFEST
    if not manifest.is_file():
        return set()
    return set(json.loads(manifest.read_text())["files"]) | {MANIFEST}


MANIFEST = ".hf_sparse_attn_render.json"


def render_repo(
    out_dir: str | Path,
    indexer_dir: str | Path,
    base_model: str,
    base_revision: str | None = None,
    model_dir: str | Path | None = None,
    repo_name: str | None = None,
    kernel_repo: str = DEFAULT_KERNEL_REPO,
    kernel_revision: str | None = None,
    license: str = "apache-2.0",
    results_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    with_modeling_file: bool = True,
    extra_files: Sequence[str | Path] = (),
) -> Path:
    """Render the repo folder. ``base_revision`` must be a commit sha for an indexer-only repo (see
    ``resolve_revision``); the files are listed in a manifest that ``push`` uploads exactly. The
    folder is rendered beside ``out_dir`` and swapped in whole: a render that fails part-way leaves
    the previous render (or nothing), never new weights beside an old config and manifest.
    ``extra_files`` are copied in under their own names and listed (e.g. training summaries)."""
    from transformers import AutoConfig

    out, indexer_dir = Path(out_dir), Path(indexer_dir)
    if not REPO_ID.match(base_model) or Path(base_model).exists():
        raise ValueError(
            f"--base-model {base_model!r} must be the Hub id (ORG/NAME) the weights come from, not a local path: "
            "it is written into the published config and card; pass a local checkpoint with --full DIR"
        )
    if model_dir is None and (base_revision is None or not COMMIT.match(base_revision)):
        raise ValueError(
            f"base revision {base_revision!r} of {base_model} is not a 40-hex commit sha: an indexer-only repo must "
            "pin the exact base weights (hf-sparse-attn publish resolves --base-revision to a commit)"
        )
    if model_dir is not None and not Path(model_dir).is_dir():
        raise ValueError(
            f"--full {model_dir}: no such directory; pass the local checkpoint whose weights to ship"
        )
    extras = [Path(p) for p in extra_files]
    missing = [str(p) for p in extras if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"extra_files: no such file {', '.join(missing)}")
    sparse = SparseAttentionConfig.from_pretrained(indexer_dir)
    inputs = [indexer_dir] + ([Path(model_dir)] if model_dir is not None else [])
    check_out_dir(out, inputs)

    def render(out: Path) -> None:  # a staging folder, swapped in whole once every file is written
        written: list[str] = []

        def copy(src: Path, name: str) -> None:
            _copy_file(src, out / name)
            written.append(name)

        for name in (WEIGHTS_NAME, CONFIG_NAME):
            copy(indexer_dir / name, name)
        source = str(model_dir) if model_dir is not None else base_model
        hub = {"cache_dir": cache_dir, "local_files_only": local_files_only}
        try:
            base_config = AutoConfig.from_pretrained(
                source, revision=None if model_dir else base_revision, **hub
            )
        except OSError as err:
            raise ValueError(
                f"the config of the base model {source} could not be loaded ({err}); an indexer-only render reads it "
                "from the Hub or the local HF cache: download it first (`hf download "
                f"{base_model} config.json`), or pass --full MODEL_DIR to render from a local checkpoint"
            ) from None
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
                "sparse_kernels": kernel_pin(kernel_repo, kernel_revision),
                "hf_sparse_attn_version": hf_sparse_attn.__version__,
            }
        )
        config.pop("_attn_implementation_autoset", None)
        config["_name_or_path"] = repo_name or base_model  # not the directory it was rendered from
        if model_dir is None:
            config["base_model"] = {"id": base_model, "revision": base_revision}
        else:
            for path in sorted(Path(model_dir).iterdir()):
                if path.suffix == ".safetensors" or path.name in (
                    "model.safetensors.index.json",
                    "generation_config.json",
                ):
                    copy(path, path.name)
        atomic_write_text(out / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
        written.append("config.json")
        written += _copy_tokenizer(
            Path(model_dir) if model_dir else None, base_model, base_revision, out, hub
        )
        _drop_loading_options(out / "tokenizer_config.json")
        if with_modeling_file:
            write_modeling_file(out)
            written.append(MODELING_FILE)
        name, value = sparse.budget
        card = Template((Path(__file__).parent / "model_card.md").read_text()).substitute(
            base_model=base_model,
            base_revision=base_revision or "main",
            license=license,
            repo_name=repo_name or Path(out_dir).name,
            indexer_heads=sparse.indexer_heads,
            indexer_dim=sparse.indexer_dim,
            block_size=sparse.block_size,
            min_sparse_len=sparse.min_sparse_len,
            budget=f"{name}={value}",
            sink_blocks=sparse.sink_blocks,
            local_blocks=sparse.local_blocks,
            kernel_repo=kernel_repo,
            kernel_revision=kernel_revision or "(not pinned: the reference ops run)",
            version=hf_sparse_attn.__version__,
            speed_table=speed_table(Path(results_dir) if results_dir else None),
            repo_kind="This repo holds the indexer only; the frozen weights load from the base repo."
            if model_dir is None
            else "This repo holds the full weights.",
        )
        atomic_write_text(out / "README.md", card)
        written.append("README.md")
        for path in extras:
            if path.name in written:
                raise ValueError(f"extra_files: {path} would replace the rendered {path.name}")
            copy(path, path.name)
        atomic_write_text(out / MANIFEST, json.dumps({"files": sorted(set(written))}, indent=2) + "\n")

    return atomic_write_dir(out, render)


TOKENIZER_LOADING_OPTIONS = ("is_local", "local_files_only", "cache_dir", "force_download", "token")


def _copy_tokenizer(
    model_dir: Path | None, base_model: str, base_revision: str | None, out: Path, hub: dict
) -> list[str]:
    """The tokenizer files written into ``out``."""
    if model_dir is not None:
        names = [name for name in TOKENIZER_FILES if (model_dir / name).exists()]
        for name in names:
            _copy_file(model_dir / name, out / name)
        return names
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
        return []
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        AutoTokenizer.from_pretrained(base_model, revision=base_revision, **hub).save_pretrained(tmp)
        names = sorted(p.name for p in Path(tmp).iterdir() if p.is_file())
        for name in names:
            os.replace(Path(tmp) / name, out / name)
    return names


def _drop_loading_options(path: Path) -> None:
    """Remove the options of the load that produced a tokenizer_config.json (an offline load writes
    ``local_files_only: true``, which would stop the published repo's users from downloading)."""
    if not path.exists():
        return
    config = json.loads(path.read_text())
    kept = {k: v for k, v in config.items() if k not in TOKENIZER_LOADING_OPTIONS}
    if kept != config:
        atomic_write_text(path, json.dumps(kept, indent=2, sort_keys=True) + "\n")


def push(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None) -> str:
    """Upload exactly the files ``render_repo`` listed in ``folder``'s manifest (token from HF_TOKEN /
    `hf auth login`); any other file there is refused."""
    from huggingface_hub import create_branch, create_repo, upload_folder

    folder = Path(folder)
    files = sorted(_manifest_files(folder) - {MANIFEST})
    if not files:
        raise ValueError(
            f"{folder} has no render manifest ({MANIFEST}): render it with `hf-sparse-attn publish`"
        )
    stray = _unlisted(folder)
    if stray:
        raise ValueError(
            f"{folder} holds files that were not rendered ({', '.join(stray)}): remove them first"
        )

    create_repo(repo_id, private=private, exist_ok=True)
    if revision:
        create_branch(repo_id, branch=revision, exist_ok=True)
    info = upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        allow_patterns=files,
        revision=revision,
        commit_message=f"hf-sparse-attn {hf_sparse_attn.__version__} publish",
    )
    return str(info)
