"""Selection methods compared by `hf-sparse-attn eval`, each a change of the sparse config.

Every sparse method runs the same path a user gets (``attn_implementation="sparse_prefill"``:
selector -> ``select_blocks`` -> block-sparse kernel); only the token-level oracle, a diagnostic
that is not block-sparse, runs its own attention function (``token_oracle_attention`` on the
prefill, stock sdpa on decode steps).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from hf_sparse_attn.ops.common import num_blocks
from hf_sparse_attn.runtime.attention import ATTENTION_NAME, _is_compact, dense_attention, sparse_prefill_mask
from hf_sparse_attn.runtime.config import SparseAttentionConfig
from hf_sparse_attn.runtime.oracle import token_oracle_attention
from hf_sparse_attn.runtime.padding import PaddingLayout
from hf_sparse_attn.runtime.selection import budget_kept_fraction

TOKEN_ORACLE_ATTENTION = "sparse_prefill_token_oracle"

METHODS = {
    "dense": "stock sdpa, no selection",
    "token_oracle": "per query, the keys holding the most dense attention mass (token granularity)",
    "block_oracle": "the blocks holding the most dense attention mass (selector='oracle')",
    "indexer": "the distilled indexer, a fixed share of each query block's causal blocks (top-k)",
    "indexer_sparse_decode": "the distilled indexer (density) on the prefill and on every decode step "
    "(sparse_decode=True: the answer's tokens attend to indexer-picked cache blocks too)",
    "indexer_topp": "the distilled indexer, smallest block set reaching mass p per query block (top_p)",
    "indexer_dual_topp": "the distilled indexer, per-query top_p and per-layer layer_top_p (SpotAttention)",
    "retrieval_heads": "the distilled indexer (density) with the calibrated retrieval kv heads kept dense",
    "patterns": "training-free vertical + slash estimate from the last queries (selector='patterns')",
    "patterns_horizontal": "patterns plus the decomposition paper's horizontal rows: query blocks whose probe keeps < "
    "horizontal_threshold of its mass go dense",
    "streaming": "sink + local blocks only, window keeping what top-k at the density keeps (no retrieval)",
    "random": "sink + local + uniformly random blocks at the density (selector='random')",
}


ADAPTIVE = ("indexer_topp", "indexer_dual_topp", "retrieval_heads", "patterns_horizontal")


@dataclass
class Method:
    name: str
    changes: dict = field(default_factory=dict)
    target_density: float | None = None
    matched_to: str | None = None  # label of the method whose kept density this top-k row matches
    indexer: tuple[str, str] | None = None  # (name, directory) of another indexer run in the model's place

    @property
    def label(self) -> str:
        values = dict(self.changes)
        if self.name == "streaming" and self.target_density is not None:
            values["density"] = self.target_density
        keys = ("density", "top_p", "layer_top_p", "horizontal_threshold", "block_size")
        label = " ".join([self.name] + [f"{k}={values[k]:g}" for k in keys if k in values])
        if self.indexer is not None:
            label += f" [{self.indexer[0]}]"
        return label if self.matched_to is None else f"{label} (kept of {self.matched_to})"


def density_for_kept(config: SparseAttentionConfig, kept: float, seq_len: int) -> float:
    """The ``density`` target whose kept density at ``seq_len`` reaches ``kept`` (bisection; the
    forced blocks make kept > density). Below the forced blocks' share: the smallest target."""
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        at_mid = budget_kept_fraction(
            replace(config, density=mid, top_k=None, top_p=None, layer_top_p=None), seq_len
        )
        lo, hi = (mid, hi) if at_mid < kept else (lo, mid)
    return max(1e-4, round(hi, 4))


def matched_topk_methods(
    summary: dict[tuple[str, int], dict], config: SparseAttentionConfig
) -> dict[int, list[Method]]:
    """Per length, an indexer top-k method at the kept density each adaptive method measured
    (``runner.macro`` of its rows), so that top-p, dual top-p, retrieval heads and horizontal rows are
    compared with top-k at equal cost. A method run at another block size is matched at that size."""
    out: dict[int, list[Method]] = {}
    for (label, length), s in summary.items():
        if s["method"] not in ADAPTIVE or s["density"] is None:
            continue
        bs = s.get("block_size") or config.block_size
        d = density_for_kept(replace(config, block_size=bs), s["density"], length)
        extra = {} if bs == config.block_size else {"block_size": bs}
        out.setdefault(length, []).append(
            Method("indexer", {"selector": "indexer", "density": d, **extra}, d, matched_to=label)
        )
    if not out:
        raise ValueError(f"matched top-k rows need at least one adaptive method among {ADAPTIVE}")
    return out


def build_methods(
    names: list[str],
    densities: list[float],
    top_ps: list[float],
    layer_top_p: float | None = None,
    block_sizes: list[int] | None = None,
    retrieval_heads: list[list[int]] | None = None,
    horizontal_threshold: float = 0.8,
    other_indexers: dict[str, str] | None = None,
) -> list[Method]:
    """Expand method names over their budgets: density-budgeted ones per density, top-p ones per p.

    ``other_indexers`` (name -> directory): after the named methods, the ``indexer`` method again per
    density with each of these indexers in the model's place, so indexers are compared on one run's
    prompts and paired against its dense rows."""
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown eval methods {unknown}; known: {sorted(METHODS)}")
    out: list[Method] = []
    for name in names:
        for bs in block_sizes or [None]:
            extra = {} if bs is None else {"block_size": bs}
            if name == "dense":
                if bs is None or bs == block_sizes[0]:
                    out.append(Method("dense"))
            elif name == "token_oracle":  # token granularity: the block size does not enter
                if bs is None or bs == block_sizes[0]:
                    out += [Method(name, {"selector": "indexer", "density": d}, d) for d in densities]
            elif name == "indexer_topp":
                out += [Method(name, {"selector": "indexer", "top_p": p, **extra}) for p in top_ps]
            elif name == "indexer_dual_topp":
                if layer_top_p is None:
                    raise ValueError("indexer_dual_topp needs --layer-top-p")
                out += [
                    Method(name, {"selector": "indexer", "top_p": p, "layer_top_p": layer_top_p, **extra})
                    for p in top_ps
                ]
            elif name == "retrieval_heads":
                if not retrieval_heads:
                    raise ValueError(
                        "the retrieval_heads method needs calibrated heads (--retrieval-heads N > 0)"
                    )
                out += [
                    Method(
                        name,
                        {"selector": "indexer", "density": d, "retrieval_heads": retrieval_heads, **extra},
                        d,
                    )
                    for d in densities
                ]
            elif name == "indexer_sparse_decode":
                out += [
                    Method(name, {"selector": "indexer", "density": d, "sparse_decode": True, **extra}, d)
                    for d in densities
                ]
            elif name == "patterns_horizontal":
                out += [
                    Method(
                        name,
                        {
                            "selector": "patterns",
                            "density": d,
                            "horizontal_threshold": horizontal_threshold,
                            **extra,
                        },
                        d,
                    )
                    for d in densities
                ]
            else:
                selector = {"block_oracle": "oracle", "patterns": "patterns", "random": "random"}.get(
                    name, "indexer"
                )
                out += [Method(name, {"selector": selector, "density": d, **extra}, d) for d in densities]
    for label, directory in (other_indexers or {}).items():
        out += [
            Method("indexer", {"selector": "indexer", "density": d}, d, indexer=(label, directory))
            for d in densities
        ]
    return out


def streaming_changes(method: Method, seq_len: int, config: SparseAttentionConfig) -> dict:
    """Sink + the local window whose kept density (forced blocks included) is closest to what top-k
    at the method's density keeps under ``config``: the same cost as the selectors, nothing retrieved.

    Sizing the window as density x blocks of the prompt instead gave streaming more kept blocks than
    top-k (about twice at 128K), so the rows were not at equal cost.
    """
    budget = {"density": None, "top_k": None, "top_p": None, "layer_top_p": None}
    target = budget_kept_fraction(replace(config, **(budget | {"density": method.target_density})), seq_len)

    def changes(window: int) -> dict:
        return {"top_k": config.sink_blocks + window, "local_blocks": window, "selector": "indexer"}

    def kept(window: int) -> float:
        return budget_kept_fraction(replace(config, **(budget | changes(window))), seq_len)

    lo, hi = 1, num_blocks(seq_len, config.block_size)
    while lo < hi:  # smallest window keeping at least the target
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if kept(mid) < target else (lo, mid)
    window = lo if lo == 1 or kept(lo) - target <= target - kept(lo - 1) else lo - 1
    return changes(window)


def token_oracle_prefill(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Prefill: ``token_oracle_attention`` at the layer's configured density; otherwise stock sdpa."""
    indexer = getattr(module, "indexer", None)
    q_len, kv_len = query.shape[2], key.shape[2]
    if (
        indexer is None
        or q_len != kv_len
        or q_len < indexer.config.min_sparse_len
        or (attention_mask is not None and not _is_compact(attention_mask, q_len))
    ):
        return dense_attention(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    layout = PaddingLayout.from_attention_mask(attention_mask, query)
    q, k, v = layout.to_right(query), layout.to_right(key), layout.to_right(value)
    out, _ = token_oracle_attention(
        q,
        k,
        v,
        scaling if scaling is not None else query.shape[-1] ** -0.5,
        density=indexer.config.density,
        groups=indexer.config.indexer_heads,
    )
    return layout.to_original(out).transpose(1, 2).contiguous(), None


def register_token_oracle() -> None:
    AttentionInterface.register(TOKEN_ORACLE_ATTENTION, token_oracle_prefill)
    AttentionMaskInterface.register(TOKEN_ORACLE_ATTENTION, sparse_prefill_mask)


def attention_name(method: Method) -> str:
    return {"dense": "sdpa", "token_oracle": TOKEN_ORACLE_ATTENTION}.get(method.name, ATTENTION_NAME)
