"""GPU tier (run on the device: `pytest -m gpu`): bf16 kernels vs references at 4K-32K, and the model path."""

from __future__ import annotations

import pytest
import torch

from hf_sparse_attn import SparseAttentionConfig, attach_indexer, select_blocks
from hf_sparse_attn.ops.block_sparse_attn.naive import block_sparse_attention as bsa_ref
from hf_sparse_attn.ops.block_sparse_attn.triton import block_sparse_attention_triton
from hf_sparse_attn.ops.pooled_mass.naive import pooled_attention_mass as mass_ref
from hf_sparse_attn.ops.pooled_mass.triton import pooled_attention_mass_triton

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
BF16_REL = 1.6e-2


def rel_err(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


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
