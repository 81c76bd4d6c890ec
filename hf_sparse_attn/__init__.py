"""hf-sparse-attn: trainable block-sparse long-context prefill for frozen Qwen3 / Qwen3.5 models.

Importing the package registers the ``"sparse_prefill"`` attention implementation with transformers.
"""

from .attention import ATTENTION_NAME, last_selection, register, sparse_prefill_attention
from .config import SparseAttentionConfig
from .indexer import Indexer
from .modeling import attach_indexer, indexers, load_indexer, save_indexer, update_sparse_config
from .oracle import oracle_block_scores, token_oracle_attention
from .selection import BlockList, select_blocks

__version__ = "0.1.0"

register()

__all__ = [
    "ATTENTION_NAME",
    "BlockList",
    "Indexer",
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
