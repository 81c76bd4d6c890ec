"""Block-oracle sparse attention with gradients, for training the proxy backbone sparse-aware.

A pretrained LLM's long-context attention is concentrated (Oracle-Guided Sparse Prefill: the attention-mass oracle stays
within 1 point of dense on Qwen-family models; RTPurbo: full-attention LLMs are intrinsically
sparse). A 5M-parameter model trained only on the task
suite spreads it instead: a proxy trained dense only lost 20 points from dense to the block oracle at 17.5% kept
blocks, so no selector could be judged on it. Running part of the training steps with
each layer restricted to the blocks its own dense attention ranks highest (the eval's
``block_oracle`` selection, as natively sparse models are trained) teaches the proxy to keep what it
needs in those blocks. The selection problem stays: the indexer must still find them from its own
projections, and streaming / random blocks still miss them.

The selection runs through the package's block-sparse attention (``ops.block_sparse_attention``): on
CUDA the Triton kernel and its backward, so a step costs the kept blocks, not S x S (a token mask
handed to SDPA held [B, H, S, S] per layer for the backward: 8 GiB a layer at 4 x 16384 tokens);
off CUDA the differentiable reference.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from hf_sparse_attn.ops import block_sparse_attention
from hf_sparse_attn.ops.common import num_blocks
from hf_sparse_attn.runtime.attention import softmax_scale
from hf_sparse_attn.runtime.config import SparseAttentionConfig
from hf_sparse_attn.runtime.modeling import attention_layers
from hf_sparse_attn.runtime.oracle import oracle_block_scores
from hf_sparse_attn.runtime.selection import BlockList, select_blocks

ATTENTION_NAME = "oracle_sparse_training"


@torch.no_grad()
def oracle_selection(
    q: torch.Tensor,
    k: torch.Tensor,
    config: SparseAttentionConfig,
    scale: float,
    seq_lens: torch.Tensor | None = None,
) -> BlockList:
    """The blocks ``config`` selects by the dense attention mass (``selector="random"``: by uniform
    random scores, from torch's global generator).

    ``seq_lens`` [B] are the rows' lengths before right padding (None: unpadded): the dense tail is
    each row's own last block."""
    B, _, S, _ = q.shape
    lens = torch.full((B,), S, device=q.device, dtype=torch.long) if seq_lens is None else seq_lens
    if config.selector == "random":
        nb = num_blocks(S, config.block_size)
        scores = torch.rand(B, config.indexer_heads, nb, nb, device=q.device)
    else:
        scores = oracle_block_scores(q, k, config.block_size, scale, config.indexer_heads, lens)
    return select_blocks(scores, config, lens, check_lengths=False)


def set_training_sparsity(
    model: torch.nn.Module, config: SparseAttentionConfig | None, seq_lens: torch.Tensor | None = None
) -> None:
    """Run every attention layer of ``model`` block-oracle sparse under ``config`` (None: dense) on
    rows of ``seq_lens`` tokens before right padding (None: unpadded)."""
    for module in attention_layers(model):
        module.training_sparsity = config
        module.training_seq_lens = seq_lens


def oracle_sparse_training_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """``AttentionInterface`` function: sdpa, or block-sparse attention over the block oracle's
    selection when the module's ``training_sparsity`` is set and the input is a prefill of at least
    its ``min_sparse_len`` tokens (right padding's query rows come out 0)."""
    config = getattr(module, "training_sparsity", None)
    q_len, kv_len = query.shape[2], key.shape[2]
    if config is None or q_len != kv_len or q_len < config.min_sparse_len:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if attention_mask is not None:
        raise ValueError(
            "oracle-sparse training takes right-padded rows without an attention mask (causal attention "
            "never reads the padding of a right-padded row); call the model without attention_mask"
        )
    if dropout > 0.0:
        raise ValueError(
            "oracle-sparse training does not support attention dropout; set config.attention_dropout = 0"
        )
    scale = softmax_scale(query, scaling)
    seq_lens = getattr(module, "training_seq_lens", None)
    blocks = oracle_selection(query, key, config, scale, seq_lens)
    out, _ = block_sparse_attention(
        query, key, value, blocks.kv_num_blocks, blocks.kv_indices, config.block_size, scale, seq_lens
    )
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register ``"oracle_sparse_training"`` (attention + the stock sdpa mask). Idempotent."""
    AttentionInterface.register(ATTENTION_NAME, oracle_sparse_training_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
