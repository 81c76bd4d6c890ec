"""Model classes of a published sparse-prefill Hub repo, and the kernel loader of its modeling file.

``hub.bundle`` concatenates this folder (``hf_sparse_attn/runtime``) and the plain-PyTorch
references of ``hf_sparse_attn/ops`` into the repo's ``modeling_sparse_prefill.py``, which works
without hf_sparse_attn installed; there, ``ops`` is a ``HubKernelOps``: on CUDA it runs the kernel repo
pinned in ``config.json`` (``sparse_kernels``: repo + commit + file hashes recorded at publish time),
elsewhere the vectorized CPU ops (the references under autograd). Installed as a library, these classes run ``hf_sparse_attn.ops``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from pathlib import Path

import torch
from transformers import Qwen3ForCausalLM
from transformers.models.qwen3_5 import Qwen3_5ForCausalLM, Qwen3_5ForConditionalGeneration
from transformers.utils import cached_file

from .. import ops
from ..ops.block_sparse_attn.cpu import block_sparse_attention_cpu, fused_cpu_attention_available
from ..ops.block_sparse_attn.naive import block_sparse_attention
from ..ops.common import DENSE_FASTER_ABOVE, needs_grad
from ..ops.decode_mass.naive import decode_block_mass
from ..ops.kcache_quant.naive import dequantize, quantize
from ..ops.pooled_mass.cpu import pooled_attention_mass_cpu
from ..ops.pooled_mass.naive import pooled_attention_mass
from ..ops.probe_mass.naive import row_probe_mass
from ..ops.sparse_decode.naive import sparse_decode_attention
from .attention import register
from .config import CONFIG_NAME, SparseAttentionConfig
from .modeling import WEIGHTS_NAME, attach_indexer, load_indexer

_remote_logger = logging.getLogger("sparse_prefill")
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
COMMIT = re.compile(r"^[0-9a-f]{40}$")


class KernelIntegrityError(RuntimeError):
    """The pinned kernel repo's files differ from the hashes recorded when the model repo was published."""


def kernel_file_hashes(root: str | os.PathLike) -> dict[str, str]:
    """sha256 of every ``.py`` file under a kernel package directory, keyed by relative path."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.py"))
        if "__pycache__" not in p.parts
    }


class HubKernelOps:
    """The ``ops`` entry points of a published modeling file.

    On CUDA, the kernel repo ``pin = {"repo", "revision", "sha256"}`` is fetched at that commit (never
    a branch, so a user's ``revision=<sha>`` pins the GPU code too) and its files are checked against
    the recorded hashes before anything in it runs; that check also covers a ``LOCAL_KERNELS``
    override, which the ``kernels`` package honours. A pin that cannot load (no ``kernels`` package,
    offline, unpinned repo) runs the plain-PyTorch references and says why, once, as a warning; a
    hash mismatch raises ``KernelIntegrityError``.
    """

    def __init__(self) -> None:
        self.pin: dict = {}
        self._module = None
        self._resolved = False
        self._lock = threading.Lock()

    def set_pin(self, pin: dict | None) -> None:
        pin = dict(pin or {})
        if self._resolved and pin != self.pin:
            raise RuntimeError(
                f"this process already loaded sparse_prefill kernels pinned to {self.pin}; a model pinned to "
                f"{pin} cannot share them: load models published with the same kernel pin in one process"
            )
        self.pin = pin

    def _load(self):
        import kernels

        module = kernels.get_kernel(self.pin["repo"], revision=self.pin["revision"])
        expected = self.pin.get("sha256") or {}
        found = kernel_file_hashes(Path(module.__file__).parent)
        if not expected or found != expected:
            changed = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
            raise KernelIntegrityError(
                f"kernel repo {self.pin['repo']}@{self.pin['revision']} (loaded from {Path(module.__file__).parent}) "
                f"does not match the sha256 recorded in config.json 'sparse_kernels': {changed or 'no hashes recorded'}. "
                "Unset LOCAL_KERNELS if it points at other files, or re-publish the model repo."
            )
        return module

    def module(self, t: torch.Tensor):
        """The verified kernel module on CUDA, else None (the references run)."""
        if not t.is_cuda:
            return None
        with self._lock:
            if not self._resolved:
                why = None
                if not self.pin.get("repo") or not COMMIT.match(str(self.pin.get("revision", ""))):
                    why = f"config.json 'sparse_kernels' {self.pin} does not pin a 40-hex commit"
                else:
                    try:
                        self._module = self._load()
                    except KernelIntegrityError:
                        raise
                    except ImportError:
                        why = "the `kernels` package is not installed (pip install kernels)"
                    except Exception as err:  # offline, missing revision, arch mismatch: named below
                        why = f"{type(err).__name__}: {err}"
                if why is not None:
                    _remote_logger.warning(
                        "sparse_prefill: the Triton kernels of %s could not be loaded, so this model runs the "
                        "slow plain-PyTorch reference ops on CUDA (same results, much slower). Reason: %s",
                        self.pin.get("repo"),
                        why,
                    )
                self._resolved = True
        return self._module

    def _op(self, t: torch.Tensor, name: str, reference):
        kern = self.module(t)
        return getattr(kern, name, reference) if kern is not None else reference

    def block_sparse_attention(self, q, k, v, kv_num_blocks, kv_indices, block_size, scale, seq_lens=None):
        if needs_grad(q, k, v):
            fn = block_sparse_attention
        elif q.is_cuda:
            fn = self._op(q, "block_sparse_attention", block_sparse_attention)
        else:
            fn = block_sparse_attention_cpu if fused_cpu_attention_available() else block_sparse_attention
        return fn(q, k, v, kv_num_blocks, kv_indices, block_size, scale, seq_lens)

    def dense_faster_above(self, q, block_size):
        if not q.is_cuda:
            return DENSE_FASTER_ABOVE["cpu" if fused_cpu_attention_available() else "reference"]
        rule = getattr(
            self.module(q), "dense_faster_above", None
        )  # kernel repos before it: dense at 100% only
        return rule(q, block_size) if rule is not None else DENSE_FASTER_ABOVE["reference"]

    def pooled_attention_mass(self, q, k, block_size, scale, groups, seq_lens=None):
        if needs_grad(q, k):
            return pooled_attention_mass(q, k, block_size, scale, groups, seq_lens)
        if not q.is_cuda:
            return pooled_attention_mass_cpu(q, k, block_size, scale, groups, seq_lens)
        return self._op(q, "pooled_attention_mass", pooled_attention_mass)(
            q, k, block_size, scale, groups, seq_lens
        )

    def row_probe_mass(self, q, k, block_size, scale, groups, seq_lens=None):
        return self._op(q, "row_probe_mass", row_probe_mass)(q, k, block_size, scale, groups, seq_lens)

    def decode_block_mass(self, q_idx, k_idx, block_size, scale, key_valid=None):
        return self._op(k_idx, "decode_block_mass", decode_block_mass)(
            q_idx, k_idx, block_size, scale, key_valid
        )

    def quantize_kcache(self, x, fmt="int4", group=16):
        return self._op(x, "quantize_kcache", quantize)(x, fmt, group)

    def dequantize_kcache(self, codes, scales, fmt="int4", group=16, dtype=torch.float32):
        return self._op(codes, "dequantize_kcache", dequantize)(codes, scales, fmt, group, dtype)

    def sparse_decode_attention(
        self, q, k, v, kv_num_blocks, kv_indices, block_size, scale, seq_lens=None, key_mask=None
    ):
        fn = self._op(q, "sparse_decode_attention", sparse_decode_attention)
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
        if isinstance(ops, HubKernelOps):
            ops.set_pin(getattr(config, "sparse_kernels", None))
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


def register_for_pipelines() -> None:
    """``pipeline("text-generation")`` checks the model's class name against the causal-LM mapping's
    values and logs "not supported" for any other; list these classes there (under keys that name no
    model type, so no Auto class ever resolves them)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    for cls in (SparseQwen3ForCausalLM, SparseQwen3_5ForCausalLM, SparseQwen3_5ForConditionalGeneration):
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.setdefault(f"hf_sparse_attn.{cls.__name__}", cls.__name__)


register()
register_for_pipelines()
