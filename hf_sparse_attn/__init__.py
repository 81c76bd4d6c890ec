"""hf-sparse-attn: trainable block-sparse long-context prefill for frozen Qwen3 / Qwen3.5 models.

Importing the package registers the ``"sparse_prefill"`` attention implementation with transformers.
"""

from .runtime.attention import ATTENTION_NAME, last_selection, register, sparse_prefill_attention
from .runtime.config import SparseAttentionConfig
from .runtime.indexer import Indexer
from .runtime.modeling import attach_indexer, indexers, load_indexer, save_indexer, update_sparse_config
from .runtime.oracle import oracle_block_scores, token_oracle_attention
from .runtime.selection import BlockList, select_blocks

__version__ = "0.1.0"

register()

_LAZY = {"IndexerDistillationTrainer": "distill", "PackedDataset": "distill"}


def __getattr__(name: str):
    """The Trainer classes load transformers' Trainer, so they are imported on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hf_sparse_attn' has no attribute {name!r}")


__all__ = [
    "ATTENTION_NAME",
    "BlockList",
    "Indexer",
    "IndexerDistillationTrainer",
    "PackedDataset",
    "SparseAttentionConfig",
    "attach_indexer",
    "indexers",
    "last_selection",
    "load_indexer",
    "oracle_block_scores",
    "register",
    "save_indexer",
    "select_blocks",
    "sparse_prefill_attention",
    "token_oracle_attention",
    "update_sparse_config",
]
