"""4-bit indexer K-cache formats: packing, error bounds, and selection agreement on the bundled proxy."""

from __future__ import annotations

import pytest
import torch

from hf_sparse_attn.ops.kcache_quant.naive import FP4_VALUES, bytes_per_vector, dequantize, quantize


@pytest.mark.parametrize("fmt", ["int4", "fp4"])
def test_round_trip_is_exact_on_representable_values_and_packs_two_per_byte(fmt):
    grid = torch.arange(-7, 8).float() if fmt == "int4" else torch.cat([-FP4_VALUES.flip(0)[:-1], FP4_VALUES])
    largest = 7.0 if fmt == "int4" else 6.0
    x = grid[torch.randint(0, len(grid), (4, 3, 32), generator=torch.Generator().manual_seed(0))]
    x[..., 0::16] = largest  # every group's scale is exactly 1
    codes, scales = quantize(x, fmt, group=16)
    assert codes.dtype == torch.uint8 and codes.shape == (4, 3, 16) and scales.shape == (4, 3, 2)
    torch.testing.assert_close(dequantize(codes, scales, fmt, group=16), x, rtol=0, atol=0)


@pytest.mark.parametrize("fmt,half_step", [("int4", 0.5), ("fp4", 1.0)])
def test_error_is_bounded_by_half_a_step_of_the_group_scale(fmt, half_step):
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1)) * torch.logspace(-2, 2, 64)[:, None]
    codes, scales = quantize(x, fmt)
    y = dequantize(codes, scales, fmt)
    scale = scales.view(torch.float8_e4m3fn).float()
    largest = 7.0 if fmt == "int4" else 6.0
    clip = (x.abs().amax(-1, keepdim=True) - largest * scale).clamp(min=0)
    assert bool(((x - y).abs() <= half_step * scale + clip + 1e-6).all())
    assert bytes_per_vector(16) == 9 and 32 / bytes_per_vector(16) > 3.5


def test_bad_format_and_group_raise():
    with pytest.raises(ValueError, match="format must be one of"):
        quantize(torch.randn(2, 16), "int8")
    with pytest.raises(ValueError, match="multiple of the"):
        quantize(torch.randn(2, 12), "int4", group=16)


def test_selection_agreement_on_the_bundled_proxy():
    from hf_sparse_attn_lab.eval.kcache_agreement import kcache_selection_agreement
    from hf_sparse_attn_lab.eval.runner import calibration_prompts
    from hf_sparse_attn_lab.proxy import PROXY_DIR, load_proxy

    model, tok = load_proxy(PROXY_DIR)
    result = kcache_selection_agreement(
        model, calibration_prompts(tok, 2048, tasks=["niah_multivalue", "vt"])
    )
    for fmt in ("int4", "fp4"):
        assert 0.85 < result[fmt]["agreement"] < 1.0, result
        assert result[fmt]["agreement"] < result[fmt]["mass_recall"] < 1.0, result  # the flips are near-ties
        assert result[fmt]["compression"] == pytest.approx(32 / 9)
    # finer roundings flip fewer near-ties: bf16 > FP8 E4M3 > 4-bit
    assert result["bf16"]["agreement"] > result["fp8_e4m3"]["agreement"] > result["int4"]["agreement"], result
    assert result["bf16"]["compression"] == 1.0 and result["fp8_e4m3"]["compression"] == 2.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fmt", ["int4", "fp4"])
@pytest.mark.parametrize("group,shape", [(16, (3, 2, 130, 16)), (8, (300, 32)), (16, (1, 1, 1, 64))])
def test_triton_kernels_are_bit_identical_to_the_reference(fmt, group, shape, dtype):
    """Codes and scale bytes equal the reference's; the magnitudes span FP8 subnormal scales (amax
    down to 1e-4), ties at exact half steps and values past the largest code after scale rounding."""
    pytest.importorskip("triton")
    from hf_sparse_attn.ops.kcache_quant.triton import dequantize_triton, quantize_triton

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(7)
    x = torch.randn(*shape, generator=g) * torch.logspace(-4, 3, shape[-2] if len(shape) > 1 else 1)[:, None]
    x.view(-1, shape[-1])[: min(4, x.numel() // shape[-1]), :4] = torch.tensor([7.0, 3.5, -2.5, 0.25])
    x = x.to(device=device, dtype=dtype)
    ref_codes, ref_scales = quantize(x, fmt, group)
    codes, scales = quantize_triton(x, fmt, group)
    assert torch.equal(scales, ref_scales) and torch.equal(codes, ref_codes)
    for dtype in (torch.float32, torch.float16):
        ref = dequantize(codes, scales, fmt, group, dtype=dtype)
        assert torch.equal(dequantize_triton(codes, scales, fmt, group, dtype=dtype), ref)


def test_triton_kernels_reject_sizes_they_cannot_run():
    pytest.importorskip("triton")
    from hf_sparse_attn.ops.kcache_quant.triton import dequantize_triton, quantize_triton

    with pytest.raises(ValueError, match="power-of-two dims"):
        quantize_triton(torch.randn(2, 24), "int4", group=12)
    with pytest.raises(ValueError, match="do not match group"):
        dequantize_triton(
            torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(2, 2, dtype=torch.uint8), "int4", 16
        )


@pytest.mark.slow
def test_kcache_agreement_cli_writes_a_table(tmp_path, capsys, monkeypatch):
    import json

    import hf_sparse_attn_lab.eval.kcache_agreement as agreement
    from hf_sparse_attn_cli import main

    assert main(["kcache-agreement", "--length", "512", "--groups", "16", "--out", str(tmp_path)]) == 2
    assert "use longer prompts" in capsys.readouterr().err
    captures = []
    real = agreement.capture_indexer_qk
    monkeypatch.setattr(agreement, "capture_indexer_qk", lambda *a: captures.append(1) or real(*a))
    assert main(["kcache-agreement", "--length", "2048", "--groups", "16,8", "--out", str(tmp_path)]) == 0
    assert captures == [1]  # one model forward per prompt serves both group sizes
    rows = json.loads((tmp_path / "kcache_agreement.json").read_text())["rows"]
    assert [(r["format"], r["group"], r["prompts"]) for r in rows] == [
        ("int4", 16, 11),
        ("fp4", 16, 11),
        ("bf16 (reference rounding)", "-", 11),
        ("fp8_e4m3 (reference rounding)", "-", 11),
        ("int4", 8, 11),
        ("fp4", 8, 11),
    ]
    assert rows[4]["bytes_per_key"] > rows[0]["bytes_per_key"]  # a scale per 8 values instead of 16
    assert all(0.5 < r["agreement"] <= r["mass_recall"] <= 1.0 for r in rows)
    assert "mass_recall" in (tmp_path / "kcache_agreement.md").read_text()
