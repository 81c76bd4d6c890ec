"""Model classes of a published sparse-prefill Hub repo.

``hub.bundle`` appends this file to hf_sparse_attn's runtime sources to make the repo's
``modeling_sparse_prefill.py``, which works without hf_sparse_attn installed: importing it
registers ``attn_implementation="sparse_prefill"``. Kernels come from the Hub kernel repo pinned in
``config.json`` (``sparse_kernels``) through the ``kernels`` package on CUDA; elsewhere, or without
``kernels``, the plain-PyTorch references run (warned once).
"""

from __future__ import annotations

import logging
import os

import torch
from transformers import Qwen3ForCausalLM
from transformers.models.qwen3_5 import Qwen3_5ForCausalLM, Qwen3_5ForConditionalGeneration
from transformers.utils import cached_file

from hf_sparse_attn.attention import register
from hf_sparse_attn.config import CONFIG_NAME, SparseAttentionConfig
from hf_sparse_attn.modeling import WEIGHTS_NAME, attach_indexer, load_indexer
from hf_sparse_attn.ops.block_sparse_attn.naive import block_sparse_attention
from hf_sparse_attn.ops.decode_mass.naive import decode_block_mass
from hf_sparse_attn.ops.kcache_quant.naive import dequantize, quantize
from hf_sparse_attn.ops.pooled_mass.naive import pooled_attention_mass
from hf_sparse_attn.ops.probe_mass.naive import row_probe_mass
from hf_sparse_attn.ops.sparse_decode.naive import sparse_decode_attention

_remote_logger = logging.getLogger("sparse_prefill")
_reference_block_sparse_attention = block_sparse_attention
_reference_decode_block_mass = decode_block_mass
_reference_pooled_attention_mass = pooled_attention_mass
_reference_row_probe_mass = row_probe_mass
_reference_sparse_decode_attention = sparse_decode_attention
_KERNEL_PIN: dict = {}
_kernel_state: dict = {}
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


def _hub_kernels(t: torch.Tensor):
    """The pinned Hub kernel module on CUDA, else None (reference path, warned once)."""
    if "module" not in _kernel_state:
        module, why = None, None
        if not t.is_cuda:
            why = "not on CUDA"
        else:
            try:
                import kernels

                module = kernels.get_kernel(_KERNEL_PIN["repo"], version=_KERNEL_PIN["version"])
            except Exception as err:  # any failure to fetch / import the kernel repo -> reference path
                why = (
                    f"kernel repo {_KERNEL_PIN.get('repo')} v{_KERNEL_PIN.get('version')} unavailable: {err}"
                )
        if module is None:
            _remote_logger.warning("sparse_prefill: using the plain-PyTorch reference ops (%s)", why)
        _kernel_state["module"] = module
    return _kernel_state["module"]


def block_sparse_attention(q, k, v, kv_num_blocks, kv_indices, block_size, scale, seq_lens=None):  # noqa: F811
    kern = _hub_kernels(q)
    fn = kern.block_sparse_attention if kern is not None else _reference_block_sparse_attention
    return fn(q, k, v, kv_num_blocks, kv_indices, block_size, scale, seq_lens)


def pooled_attention_mass(q, k, block_size, scale, groups, seq_lens=None):  # noqa: F811
    kern = _hub_kernels(q)
    fn = kern.pooled_attention_mass if kern is not None else _reference_pooled_attention_mass
    return fn(q, k, block_size, scale, groups, seq_lens)


def _newer_op(t: torch.Tensor, name: str, reference):
    """An op added to the kernel repo after its first version: the pinned repo's if it has it, else
    the reference (an older pin keeps working)."""
    kern = _hub_kernels(t)
    return getattr(kern, name, reference) if kern is not None else reference


def row_probe_mass(q, k, block_size, scale, groups, seq_lens=None):  # noqa: F811
    return _newer_op(q, "row_probe_mass", _reference_row_probe_mass)(
        q, k, block_size, scale, groups, seq_lens
    )


def decode_block_mass(q_idx, k_idx, block_size, scale, key_valid=None):  # noqa: F811
    return _newer_op(k_idx, "decode_block_mass", _reference_decode_block_mass)(
        q_idx, k_idx, block_size, scale, key_valid
    )


def quantize_kcache(x, fmt="int4", group=16):
    return _newer_op(x, "quantize_kcache", quantize)(x, fmt, group)


def dequantize_kcache(codes, scales, fmt="int4", group=16, dtype=torch.float32):
    return _newer_op(codes, "dequantize_kcache", dequantize)(codes, scales, fmt, group, dtype)


def sparse_decode_attention(  # noqa: F811
    q, k, v, kv_num_blocks, kv_indices, block_size, scale, seq_lens=None, key_mask=None
):
    fn = _newer_op(q, "sparse_decode_attention", _reference_sparse_decode_attention)
    if key_mask is None:
        return fn(q, k, v, kv_num_blocks, kv_indices, block_size, scale, seq_lens)
    return fn(q, k, v, kv_num_blocks, kv_indices, block_size, scale, seq_lens, key_mask)


class SparsePrefillMixin:
    """Stock model class + indexers from the repo's ``indexer.safetensors``.

    ``config.base_model = {"id", "revision"}`` marks an indexer-only repo: the frozen weights come
    from that base repo, the indexer from this one. Indexers are always loaded strictly.
    """

    _keys_to_ignore_on_load_missing = [r"\.indexer\."]

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        if not getattr(config, "sparse_attention", None):
            raise ValueError("config.json has no 'sparse_attention' entry: this is not a sparse-prefill repo")
        _KERNEL_PIN.update(getattr(config, "sparse_kernels", None) or {})
        attach_indexer(self, SparseAttentionConfig.from_dict(config.sparse_attention), replace=True)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
        hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        if config is None:
            config = cls.config_class.from_pretrained(pretrained_model_name_or_path, **hub)
        base = getattr(config, "base_model", None)
        if base:
            base_kwargs = {**kwargs, "revision": base.get("revision")}
            try:
                model = super().from_pretrained(base["id"], *args, config=config, **base_kwargs)
            except OSError as err:
                raise OSError(
                    f"the base model {base['id']} (revision {base.get('revision')}) of this indexer-only repo could "
                    f"not be loaded: {err}\nDownload it first (`hf download {base['id']}`) or make it available "
                    "in the cache before loading offline."
                ) from err
        else:
            model = super().from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)
        weights = cached_file(pretrained_model_name_or_path, WEIGHTS_NAME, **hub)
        cached_file(pretrained_model_name_or_path, CONFIG_NAME, **hub)
        load_indexer(model, os.path.dirname(weights))
        model.eval()
        return model


class SparseQwen3ForCausalLM(SparsePrefillMixin, Qwen3ForCausalLM):
    pass


class SparseQwen3_5ForCausalLM(SparsePrefillMixin, Qwen3_5ForCausalLM):
    pass


class SparseQwen3_5ForConditionalGeneration(SparsePrefillMixin, Qwen3_5ForConditionalGeneration):
    pass


register()
