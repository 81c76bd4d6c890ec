"""GPU tier (run on the device: `pytest -m gpu`): bf16 kernels vs references at 4K-32K, and the model path."""

from __future__ import annotations

import pytest
import torch
from conftest import rel_err

from hf_sparse_attn import SparseAttentionConfig, attach_indexer, select_blocks
from hf_sparse_attn.ops.block_sparse_attn.naive import block_sparse_attention as bsa_ref
from hf_sparse_attn.ops.block_sparse_attn.triton import block_sparse_attention_triton
from hf_sparse_attn.ops.pooled_mass.naive import pooled_attention_mass as mass_ref
from hf_sparse_attn.ops.pooled_mass.triton import pooled_attention_mass_triton

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
BF16_REL = 1.6e-2


@pytest.mark.parametrize("S", [4096, 16384, 32768])
@pytest.mark.parametrize("Hq,Hkv,D,bs", [(32, 8, 128, 64), (32, 8, 128, 128), (16, 4, 256, 64)])
def test_block_sparse_bf16(S, Hq, Hkv, D, bs):
    torch.manual_seed(S)
    q, k, v = (torch.randn(1, h, S, D, device="cuda", dtype=torch.bfloat16) for h in (Hq, Hkv, Hkv))
    nb = (S + bs - 1) // bs
    blocks = select_blocks(
        torch.rand(1, 1, nb, nb, device="cuda"), SparseAttentionConfig(block_size=bs, density=0.1)
    )
    ref, ref_lse = bsa_ref(q, k, v, blocks.kv_num_blocks, blocks.kv_indices, bs, D**-0.5)
    out, lse = block_sparse_attention_triton(q, k, v, blocks.kv_num_blocks, blocks.kv_indices, bs, D**-0.5)
    assert rel_err(out, ref) < BF16_REL
    torch.testing.assert_close(lse, ref_lse, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("S", [4096, 16384])
@pytest.mark.parametrize("H,Hk,D,G", [(32, 8, 128, 1), (16, 4, 256, 4), (1, 1, 16, 1)])
def test_pooled_mass_bf16(S, H, Hk, D, G):
    torch.manual_seed(S)
    q, k = (torch.randn(1, h, S, D, device="cuda", dtype=torch.bfloat16) for h in (H, Hk))
    ref = mass_ref(q, k, 64, D**-0.5, G)
    out = pooled_attention_mass_triton(q, k, 64, D**-0.5, G)
    assert rel_err(out, ref) < BF16_REL
    torch.testing.assert_close(out.sum(-1), torch.ones_like(out.sum(-1)), rtol=1e-3, atol=1e-3)


@torch.no_grad()
def test_model_full_density_matches_sdpa_on_cuda():
    from conftest import build, qwen3_config, twin

    dense = build(qwen3_config(num_heads=8, num_kv_heads=2, head_dim=64)).cuda().to(torch.bfloat16)
    sparse = attach_indexer(twin(dense), SparseAttentionConfig(block_size=64, density=1.0, min_sparse_len=16))
    ids = torch.randint(0, 128, (2, 3000), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :500] = 0
    ref = dense(ids, attention_mask=mask).logits.float()
    out = sparse(ids, attention_mask=mask).logits.float()
    assert rel_err(out[0], ref[0]) < BF16_REL and rel_err(out[1, 500:], ref[1, 500:]) < BF16_REL


@pytest.mark.parametrize("L", [4096, 32768, 131072])
@pytest.mark.parametrize("B,Hq,Hkv,D", [(1, 32, 8, 128), (8, 32, 8, 128), (1, 16, 4, 256)])
def test_sparse_decode_bf16(L, B, Hq, Hkv, D):
    from hf_sparse_attn.ops.sparse_decode.naive import sparse_decode_attention as ref_fn
    from hf_sparse_attn.ops.sparse_decode.triton import sparse_decode_attention_triton
    from hf_sparse_attn.runtime.selection import select_decode_blocks

    torch.manual_seed(L + B)
    q = torch.randn(B, Hq, 1, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, Hkv, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    cfg = SparseAttentionConfig(block_size=64, density=0.1)
    num, idx = select_decode_blocks(torch.rand(B, 1, L // 64, device="cuda"), cfg)
    ref, ref_lse = ref_fn(q, k, v, num, idx, 64, D**-0.5)
    out, lse = sparse_decode_attention_triton(q, k, v, num, idx, 64, D**-0.5)
    assert rel_err(out, ref) < BF16_REL
    torch.testing.assert_close(lse, ref_lse, rtol=1e-2, atol=1e-2)


@torch.no_grad()
def test_attention_path_never_waits_on_the_host():
    """Sparse prefill and sparse decode of one layer under CUDA's sync debug mode set to error."""
    from conftest import build, qwen3_config

    from hf_sparse_attn.runtime.attention import sparse_prefill_attention

    model = build(qwen3_config(num_heads=8, num_kv_heads=2, head_dim=64)).cuda().to(torch.bfloat16)
    cfg = SparseAttentionConfig(block_size=64, density=0.1, min_sparse_len=1024, sparse_decode=True)
    module = attach_indexer(model, cfg).model.layers[0].self_attn
    q, k, v = (torch.randn(1, h, 4096, 64, device="cuda", dtype=torch.bfloat16) for h in (8, 2, 2))
    sparse_prefill_attention(module, q, k, v, None)
    sparse_prefill_attention(module, q[:, :, -1:], k, v, None)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sparse_prefill_attention(module, q, k, v, None)
        k2, v2 = torch.cat([k, k[:, :, :1]], 2), torch.cat([v, v[:, :, :1]], 2)
        sparse_prefill_attention(module, q[:, :, -1:], k2, v2, None)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@torch.no_grad()
def test_sparse_decode_generate_full_density_matches_dense_on_cuda():
    from conftest import build, qwen3_config, twin

    dense = build(qwen3_config(num_heads=8, num_kv_heads=2, head_dim=64)).cuda().to(torch.bfloat16)
    cfg = SparseAttentionConfig(block_size=64, density=1.0, min_sparse_len=1024, sparse_decode=True)
    sparse = attach_indexer(twin(dense), cfg)
    ids = torch.randint(0, 128, (2, 3000), device="cuda")
    kw = {"max_new_tokens": 8, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    a, b = dense.generate(ids, **kw), sparse.generate(ids, **kw)
    assert rel_err(torch.stack(b.logits), torch.stack(a.logits)) < BF16_REL
    assert sparse.model.layers[0].self_attn.indexer.kcache.length == 3000 + 7


@torch.no_grad()
def test_model_compiles_fullgraph_with_inductor():
    """Sparse prefill and a decode step under torch.compile(fullgraph=True) (inductor) match eager.

    Under compile, transformers materializes the decode step's causal mask instead of skipping it, so
    that step takes the dense path (documented in ``attention``); here density 1.0 makes sparse and
    dense decode agree, so the check holds for either path.
    """
    from conftest import build, qwen3_config
    from transformers import DynamicCache

    model = build(qwen3_config(num_heads=8, num_kv_heads=2, head_dim=64)).cuda().to(torch.bfloat16)
    cfg = SparseAttentionConfig(block_size=64, density=0.2, min_sparse_len=1024, sparse_decode=True)
    attach_indexer(model, cfg)
    model.set_attn_implementation("sparse_prefill")
    ids = torch.randint(0, 128, (1, 4000), device="cuda")
    nxt = torch.tensor([[5]], device="cuda")
    ref_prefill = model(ids, logits_to_keep=1).logits
    compiled = torch.compile(model, fullgraph=True)
    assert rel_err(compiled(ids, logits_to_keep=1).logits, ref_prefill) < BF16_REL
    for indexer in (layer.self_attn.indexer for layer in model.model.layers):
        indexer.config.density = 1.0
    cache = DynamicCache(config=model.config)
    model(ids, past_key_values=cache)
    ref_step = model(nxt, past_key_values=cache).logits
    cache = DynamicCache(config=model.config)
    model(ids, past_key_values=cache)
    assert rel_err(compiled(nxt, past_key_values=cache).logits, ref_step) < BF16_REL


def _fa4_or_skip():
    from hf_sparse_attn.ops.block_sparse_attn import fa4

    if not fa4.fa4_installed() or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("needs flash-attn-4 on an sm90 GPU")
    return fa4


@pytest.mark.parametrize("S", [4096, 16384])
@pytest.mark.parametrize(
    "Hq,Hkv,D,bs,G",
    [
        (32, 8, 128, 64, 1),
        (32, 8, 128, 128, 1),
        (32, 8, 128, 128, 8),
        (16, 4, 256, 64, 1),
        (16, 4, 256, 128, 4),
    ],
)
def test_fa4_block_sparse_bf16(S, Hq, Hkv, D, bs, G):
    """FA4 on our block lists (shared and per kv group; D 256 with 128-key blocks split in two) matches
    the reference, with right padding; and is not dense attention (its sm80 failure mode)."""
    fa4 = _fa4_or_skip()
    torch.manual_seed(S + G)
    q, k, v = (torch.randn(2, h, S, D, device="cuda", dtype=torch.bfloat16) for h in (Hq, Hkv, Hkv))
    nb = (S + bs - 1) // bs
    lens = torch.tensor([S, S - 1000], device="cuda")
    blocks = select_blocks(
        torch.rand(2, G, nb, nb, device="cuda"),
        SparseAttentionConfig(block_size=bs, density=0.1, indexer_heads=G),
        lens,
    )
    args = (q, k, v, blocks.kv_num_blocks, blocks.kv_indices, bs, D**-0.5, lens)
    ref, ref_lse = bsa_ref(*args)
    out, lse = fa4.block_sparse_attention_fa4(*args)
    assert rel_err(out, ref) < BF16_REL
    if S == 4096:  # the other way of masking the diagonal gives the same result
        other, _ = fa4.block_sparse_attention_fa4(*args, mask_mod=not fa4.CAUSAL_BY_MASK_MOD)
        assert rel_err(other, ref) < BF16_REL
    valid = torch.isfinite(ref_lse)
    assert torch.equal(valid, torch.isfinite(lse))
    torch.testing.assert_close(lse[valid], ref_lse[valid], rtol=1e-2, atol=1e-2)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert rel_err(out[0], dense[0]) > 10 * BF16_REL


def test_auto_backend_picks_fa4_where_it_runs(monkeypatch):
    fa4 = _fa4_or_skip()
    from hf_sparse_attn import ops

    calls = []
    real = fa4.block_sparse_attention_fa4
    monkeypatch.setattr(fa4, "block_sparse_attention_fa4", lambda *a: calls.append(a[5]) or real(*a))
    monkeypatch.setenv("HF_SPARSE_ATTN_BACKEND", "auto")
    for bs in (32, 64, 128):
        q, k, v = (torch.randn(1, h, 1024, 128, device="cuda", dtype=torch.bfloat16) for h in (8, 2, 2))
        nb = 1024 // bs
        blocks = select_blocks(
            torch.rand(1, 1, nb, nb, device="cuda"), SparseAttentionConfig(block_size=bs, density=0.3)
        )
        ops.block_sparse_attention(q, k, v, blocks.kv_num_blocks, blocks.kv_indices, bs, 0.1)
    assert calls == [128]  # block 32: FA4 has no 32-key tile; block 64: Triton is faster


@pytest.mark.parametrize(
    "Hq,Hkv,D,bs,G", [(32, 8, 128, 64, 1), (16, 4, 256, 128, 4), (8, 8, 64, 64, 2), (8, 2, 32, 32, 2)]
)
def test_triton_backward_bf16(Hq, Hkv, D, bs, G):
    """The Triton backward on CUDA against autograd through the fp32 reference, with padding."""
    from hf_sparse_attn.ops.block_sparse_attn.triton import block_sparse_attn_fwd

    torch.manual_seed(D + G)
    S = 4096
    q, k, v = (torch.randn(2, h, S, D, device="cuda", dtype=torch.bfloat16) for h in (Hq, Hkv, Hkv))
    nb = S // bs
    lens = torch.tensor([S, S - 777], device="cuda")
    blocks = select_blocks(
        torch.rand(2, G, nb, nb, device="cuda"),
        SparseAttentionConfig(block_size=bs, density=0.1, indexer_heads=G),
        lens,
    )
    grad_out = torch.randn(2, Hq, S, D, device="cuda", dtype=torch.bfloat16)

    def grads(fn, dtype):
        leaves = [t.to(dtype).requires_grad_(True) for t in (q, k, v)]
        out, _ = fn(*leaves)
        return torch.autograd.grad((out.float() * grad_out.float()).sum(), leaves)

    want = grads(
        lambda a, b, c: bsa_ref(a, b, c, blocks.kv_num_blocks, blocks.kv_indices, bs, D**-0.5, lens),
        torch.float32,
    )
    got = grads(
        lambda a, b, c: block_sparse_attn_fwd(
            a, b, c, blocks.kv_num_blocks, blocks.kv_indices, lens, bs, D**-0.5
        ),
        torch.bfloat16,
    )
    for name, g, w in zip("qkv", got, want, strict=True):
        assert rel_err(g, w) < 2 * BF16_REL, name


def test_oracle_sparse_training_attention_runs_the_triton_kernel_with_its_backward():
    """Sparse-aware proxy training at the proxy's shape (8 / 2 heads of 32, blocks of 32, 2 groups,
    right padding) in bf16 against the fp32 reference; random blocks from one seed, so both runs
    attend to the same selection."""
    import os
    from types import SimpleNamespace

    from hf_sparse_attn_lab.sparse_training import oracle_sparse_training_attention

    torch.manual_seed(0)
    S, lens = 4096, torch.tensor([4096, 3001], device="cuda")
    q, k, v = (torch.randn(2, h, S, 32, device="cuda") for h in (8, 2, 2))
    cfg = SparseAttentionConfig(
        selector="random", block_size=32, density=0.1, indexer_heads=2, dense_tail_blocks=0, min_sparse_len=64
    )
    module = SimpleNamespace(training=True, training_sparsity=cfg, training_seq_lens=lens)
    valid = (torch.arange(S, device="cuda")[None, :] < lens[:, None])[..., None, None]

    def run(dtype):
        leaves = [t.to(dtype).requires_grad_(True) for t in (q, k, v)]
        torch.manual_seed(1)
        out, _ = oracle_sparse_training_attention(module, *leaves, None, scaling=32**-0.5)
        loss = (out.float() * valid).square().sum()
        return (out.float() * valid, *torch.autograd.grad(loss, leaves))

    got = run(torch.bfloat16)
    os.environ["HF_SPARSE_ATTN_BACKEND"] = "reference"
    try:
        want = run(torch.float32)
    finally:
        del os.environ["HF_SPARSE_ATTN_BACKEND"]
    for name, g, w in zip(("out", "q", "k", "v"), got, want, strict=True):
        assert torch.isfinite(g).all() and rel_err(g, w) < 2 * BF16_REL, name


def test_sparse_model_trains_on_cuda():
    """A LoRA-style step through sparse prefill on CUDA: loss.backward() runs the Triton backward and
    the gradients match the differentiable reference path."""
    import os

    from conftest import build, qwen3_config

    model = build(qwen3_config(num_heads=8, num_kv_heads=2, head_dim=64)).cuda()
    attach_indexer(model, SparseAttentionConfig(block_size=64, density=0.3, min_sparse_len=256))
    ids = torch.randint(0, 128, (2, 1024), device="cuda")
    grads = {}
    for backend in ("auto", "reference"):
        os.environ["HF_SPARSE_ATTN_BACKEND"] = backend
        try:
            model.zero_grad(set_to_none=True)
            for p in model.model.layers[0].self_attn.q_proj.parameters():
                p.requires_grad_(True)
            model(ids, labels=ids).loss.backward()
            grads[backend] = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
        finally:
            del os.environ["HF_SPARSE_ATTN_BACKEND"]
    assert rel_err(grads["auto"], grads["reference"]) < 1e-3
