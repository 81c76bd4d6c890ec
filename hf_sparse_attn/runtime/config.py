"""SparseAttentionConfig: every knob of the sparse prefill path, validated and JSON-serializable."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .fileio import atomic_write_text

CONFIG_NAME = "sparse_config.json"
SELECTORS = ("indexer", "oracle", "patterns", "random")
CACHE_FORMATS = ("native", "int4", "fp4")
FORMAT_VERSION = 1


@dataclass
class SparseAttentionConfig:
    """How each full-attention layer picks and attends to key blocks during prefill.

    Budget: exactly one of ``top_k`` (blocks per query block), ``density`` (fraction of the causal
    blocks of each query block) or ``top_p`` (smallest set of the non-forced candidate blocks holding
    this share of their selector mass: see ``selection``). With none given, ``density=0.1``. Sink
    and local blocks are always kept on top of the budget rule and count towards it, as are all
    causal blocks of the last ``dense_tail_blocks`` query blocks of each sequence: the prompt's final
    positions produce the first generated token, and computing them densely costs one block row (1/n
    of the causal blocks at n blocks; 0.1% at 128K with blocks of 64). ``layer_top_p`` (with
    ``top_p``) adds SpotAttention's per-layer rule: see ``selection.select_blocks``.

    Selectors: ``"indexer"`` (trained), ``"oracle"`` (the dense attention's own block mass: a
    diagnostic), ``"patterns"`` (training-free vertical + slash estimate from the last
    ``probe_queries`` queries), ``"random"`` (uniform random scores, seeded per layer: the baseline that
    shows a task needs retrieval).

    ``retrieval_heads`` (RTPurbo): ``[layer, kv_head]`` pairs whose kv group attends to every causal
    block while the layer's other heads go sparse, in the same kernel launch; found on calibration
    prompts by ``retrieval_heads.find_retrieval_heads``. ``horizontal_threshold`` (the decomposition paper's
    horizontal component): a query block whose last query keeps less than this share of its dense
    attention mass inside its selected blocks attends to every causal block (see ``patterns``).

    ``sparse_decode`` (RTPurbo / SpotAttention, off by default): each decode step scores the cached key
    blocks with the indexer's K-cache and attends to the budget's blocks (sink and local blocks
    forced) instead of the whole KV cache; see ``decode``. ``indexer_cache_format`` stores that
    K-cache in the model dtype (``"native"``) or in 4 bits (``"int4"`` / ``"fp4"``, FP8 scale per 16
    values: 3.56x smaller than bf16 at the default 16 dims).
    """

    indexer_heads: int = 1
    indexer_dim: int = 16
    block_size: int = 64
    top_k: int | None = None
    density: float | None = None
    top_p: float | None = None
    layer_top_p: float | None = None
    sink_blocks: int = 1
    local_blocks: int = 2
    dense_tail_blocks: int = 0
    min_sparse_len: int = 4096
    dense_layers: list[int] = field(default_factory=list)
    retrieval_heads: list[list[int]] = field(default_factory=list)
    horizontal_threshold: float | None = None
    selector: str = "indexer"
    probe_queries: int = 64
    sparse_decode: bool = False
    indexer_cache_format: str = "native"

    def __post_init__(self) -> None:
        if self.top_k is None and self.density is None and self.top_p is None:
            self.density = 0.1
        self.dense_layers = _layer_indices("dense_layers", self.dense_layers)
        pairs = self.retrieval_heads
        if not isinstance(pairs, (list, tuple)) or any(
            not isinstance(p, (list, tuple)) or len(p) != 2 or not all(map(_is_index, p)) for p in pairs
        ):
            raise ValueError(
                f"retrieval_heads must be [layer, kv_head] pairs of whole numbers, got {pairs!r}"
            )
        self.retrieval_heads = [list(pair) for pair in sorted({(layer, head) for layer, head in pairs})]
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field out of its allowed range."""
        _check_int("indexer_heads", self.indexer_heads, 1, 256)
        _check_int("indexer_dim", self.indexer_dim, 1, 1024)
        _check_int("block_size", self.block_size, 16, 256)
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two in [16, 256], got {self.block_size}")
        budgets = [n for n in ("top_k", "density", "top_p") if getattr(self, n) is not None]
        if len(budgets) != 1:
            raise ValueError(f"set exactly one budget rule of top_k / density / top_p, got {budgets}")
        if self.top_k is not None:
            _check_int("top_k", self.top_k, 1, 1 << 30)
        if self.density is not None:
            _check_fraction("density", self.density)
        if self.top_p is not None:
            _check_fraction("top_p", self.top_p)
        if self.layer_top_p is not None:
            _check_fraction("layer_top_p", self.layer_top_p)
            if self.top_p is None:
                raise ValueError("layer_top_p (dual top-p) needs the per-query top_p budget as well")
        if self.horizontal_threshold is not None:
            _check_fraction("horizontal_threshold", self.horizontal_threshold)
        _check_int("probe_queries", self.probe_queries, 1, 1 << 20)
        _check_int("sink_blocks", self.sink_blocks, 0, 1 << 20)
        _check_int("local_blocks", self.local_blocks, 1, 1 << 20)
        _check_int("dense_tail_blocks", self.dense_tail_blocks, 0, 1 << 20)
        _check_int("min_sparse_len", self.min_sparse_len, 1, 1 << 40)
        for i in self.dense_layers:
            _check_int("dense_layers[...]", i, 0, 1 << 20)
        for layer, head in self.retrieval_heads:
            _check_int("retrieval_heads[...][0] (layer)", layer, 0, 1 << 20)
            _check_int("retrieval_heads[...][1] (kv head)", head, 0, 1 << 20)
        if self.selector not in SELECTORS:
            raise ValueError(f"selector must be one of {SELECTORS}, got {self.selector!r}")
        if not isinstance(self.sparse_decode, bool):
            raise ValueError(f"sparse_decode must be true or false, got {self.sparse_decode!r}")
        if self.indexer_cache_format not in CACHE_FORMATS:
            raise ValueError(
                f"indexer_cache_format must be one of {CACHE_FORMATS}, got {self.indexer_cache_format!r}"
            )
        dim = self.indexer_dim
        if self.indexer_cache_format != "native" and (dim < 16 or dim & (dim - 1)):
            raise ValueError(
                f"a 4-bit indexer K-cache quantizes groups of 16 values with power-of-two kernels: "
                f"indexer_dim ({dim}) must be a power of two >= 16 (16, 32, 64, ...)"
            )
        if self.sparse_decode and self.selector != "indexer":
            raise ValueError(
                f"sparse_decode scores the KV cache with the trained indexer's K-cache; selector "
                f"{self.selector!r} has none. Use selector='indexer' or sparse_decode=False (dense decode)"
            )
        if self.sparse_decode and self.retrieval_heads:
            raise NotImplementedError(
                "sparse_decode with retrieval_heads is not supported: set sparse_decode=False (dense decode) "
                "or drop retrieval_heads"
            )

    @property
    def budget(self) -> tuple[str, float]:
        """The active budget rule as (name, value)."""
        for name in ("top_k", "density", "top_p"):
            if getattr(self, name) is not None:
                return name, getattr(self, name)
        raise AssertionError("validated config has a budget")

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparseAttentionConfig:
        if not isinstance(data, dict):
            raise ValueError(f"a sparse config must be a JSON object of fields, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("format_version", FORMAT_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"sparse config format_version must be a positive integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"sparse config format_version {version} is newer than this hf-sparse-attn understands "
                f"({FORMAT_VERSION}); upgrade hf-sparse-attn"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown sparse config fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        os.makedirs(directory, exist_ok=True)
        return str(write_config(self, os.path.join(directory, CONFIG_NAME)))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> SparseAttentionConfig:
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"no {CONFIG_NAME} in {directory}: save one with save_indexer(model, dir)"
            )
        try:
            with open(path) as f:
                return cls.from_dict(json.load(f))
        except (ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
            raise ValueError(f"{path}: {err}") from None


def write_config(config: SparseAttentionConfig, path: str | os.PathLike):
    """``config`` as JSON at ``path``, through a temp file and a rename."""
    return atomic_write_text(path, json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _layer_indices(name: str, values: Any) -> list[int]:
    if not isinstance(values, (list, tuple)) or not all(map(_is_index, values)):
        raise ValueError(f"{name} must be a list of layer indices (whole numbers), got {values!r}")
    return sorted(set(values))


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if not _is_index(value) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def _check_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
