"""Exact published shapes of the full-size models the benchmarks build with random weights."""

from __future__ import annotations

from transformers import Qwen3Config
from transformers.models.qwen3_5 import Qwen3_5TextConfig


def qwen3_8b_config() -> Qwen3Config:
    """Qwen/Qwen3-8B's config.json values (36 layers, 32 q / 8 kv heads, head_dim 128)."""
    return Qwen3Config(
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=False,
        attention_bias=False,
    )


def qwen3_5_9b_config() -> Qwen3_5TextConfig:
    """Qwen/Qwen3.5-9B's text shape (32 layers, every 4th full attention with 16 q / 4 kv heads of 256,
    gated delta-net layers with 16 key / 32 value heads of 128), which ``Qwen3_5TextConfig`` defaults to."""
    return Qwen3_5TextConfig(max_position_embeddings=262144)


CONFIGS = {"qwen3-8b": qwen3_8b_config, "qwen3.5-9b": qwen3_5_9b_config}
