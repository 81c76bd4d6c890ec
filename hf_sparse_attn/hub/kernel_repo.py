"""Build the Hub kernel repo (the layout `kernels.get_kernel` / `get_local_kernel` load) from `hf_sparse_attn/ops`.

The build is a generated copy of the ops package, never edited by hand: each file gets a header
naming its source, and the `torch.library` namespace is renamed so the kernel package and an
installed hf_sparse_attn can live in one process.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import hf_sparse_attn
from hf_sparse_attn.runtime.fileio import atomic_write_dir, atomic_write_text

OPS_DIR = Path(hf_sparse_attn.__file__).parent / "ops"
KERNEL_NAME = "sparse-prefill-kernels"
KERNEL_VERSION = 1
DEFAULT_KERNEL_REPO = f"hf-sparse-attn/{KERNEL_NAME}"
VARIANT = "torch-universal"
OP_NAMESPACE = "sparse_prefill_kernels"


def _sources() -> list[Path]:
    return sorted(p for p in OPS_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def source_hash() -> str:
    h = hashlib.sha256()
    for path in _sources():
        h.update(str(path.relative_to(OPS_DIR)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def build_kernel_repo(out_dir: str | Path, version: int = KERNEL_VERSION) -> Path:
    """Write ``<out_dir>/build/torch-universal/`` (package + metadata.json) and the repo README.

    The variant is written to a staging folder beside it and swapped in whole, so an interrupted build
    leaves the previous one, never a mix of old and new files."""
    out = Path(out_dir)
    atomic_write_dir(out / "build" / VARIANT, lambda variant: _write_variant(variant, version))
    atomic_write_text(
        out / "README.md",
        f"---\nlicense: apache-2.0\ntags:\n- kernels\n- sparse-attention\n---\n\n# {KERNEL_NAME} v{version}\n\n"
        "Block-sparse causal GQA attention (prefill and split-KV decode), block-pooled attention mass, the\n"
        "row probe of the training-free selector and 4-bit indexer K-cache quantization (Triton; plain-PyTorch\n"
        "references run off CUDA), built from hf-sparse-attn's `hf_sparse_attn/ops` by `hf-sparse-attn build-kernels`.\n\n"
        "```python\nimport kernels\n"
        f'ops = kernels.get_kernel("{DEFAULT_KERNEL_REPO}", version={version})\n'
        "out, lse = ops.block_sparse_attention(q, k, v, kv_num_blocks, kv_indices, block_size, scale)\n```\n",
    )
    return out


def _write_variant(variant: Path, version: int) -> None:
    """The kernel package (ops sources, renamed namespace, provenance header) and its metadata.json."""
    digest = source_hash()
    header = f"# Generated from hf_sparse_attn/ops/{{}} (hf-sparse-attn {hf_sparse_attn.__version__}, ops {digest}); do not edit.\n"
    for path in _sources():
        rel = path.relative_to(OPS_DIR)
        text = path.read_text().replace('"hf_sparse_attn::', f'"{OP_NAMESPACE}::')
        (variant / rel).parent.mkdir(parents=True, exist_ok=True)
        (variant / rel).write_text(header.format(rel) + text)
    metadata = {
        "id": f"_sparse_prefill_{digest}",
        "name": KERNEL_NAME,
        "version": version,
        "license": "Apache-2.0",
        "python-depends": [],
        "backend": {"type": "cuda"},
    }
    (variant / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
