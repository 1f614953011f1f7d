"""Quantization helpers: qparams, rounding, torch agreement, per-channel, calibration, fixed point, integer layers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from helpers import quantization as Q


def test_qranges() -> None:
    assert Q.qrange(8, True) == (-128, 127) and Q.qrange(8, False) == (0, 255) and Q.qrange(4, True) == (-8, 7)
    for bad in (1, 17, 8.0, True):
        with pytest.raises(ValueError, match="bits"):
            Q.qrange(bad)  # type: ignore[arg-type]


def test_qparams_asymmetric_symmetric_and_zero_exact() -> None:
    scale, zp = Q.qparams(-1.0, 3.0, 8)
    assert scale == pytest.approx(4 / 255) and zp == -128 + round(1 / (4 / 255))
    assert Q.dequantize(Q.quantize(np.array([0.0]), scale, zp), scale, zp)[0] == 0.0
    assert Q.qparams(0.5, 2.0, 8, signed=False)[1] == 0  # widened to include 0
    assert Q.qparams(-2.0, -0.5, 8, signed=False)[1] == 255
    s, z = Q.qparams(-1.0, 3.0, 8, symmetric=True)
    assert z == 0 and s == pytest.approx(3 / 127)
    assert Q.qparams(0.0, 0.0) == (1.0, 0)
    assert Q.qparams(2.0, 2.0, signed=False)[0] == pytest.approx(2 / 255)
    with pytest.raises(ValueError, match="x_min must be <= x_max"):
        Q.qparams(1.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        Q.qparams(0.0, float("inf"))
    with pytest.raises(ValueError, match="bits"):
        Q.qparams(0, 1, bits=1)


def test_round_half_to_even_and_clamping() -> None:
    x = np.array([0.25, 0.75, -0.25, -0.75, 1.25, 100.0, -100.0])
    q = Q.quantize(x, 0.5, 0, bits=4)  # x / scale = 0.5, 1.5, -0.5, -1.5, 2.5, 200, -200
    assert q.tolist() == [0, 2, 0, -2, 2, 7, -8]
    assert Q.quantize(torch.tensor(x), 0.5, 0, bits=4).tolist() == q.tolist()


def test_matches_torch_quantize_per_tensor_away_from_ties_and_at_exact_ties() -> None:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal(200_000).astype(np.float32) * 3)
    scale, zp = Q.qparams(float(x.min()), float(x.max()), 8)
    ours = Q.quantize(x, scale, zp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torch.quantize_per_tensor(x, scale, zp, torch.qint8).int_repr().long()
    ratio = (x.double() / scale).numpy()
    away_from_ties = np.abs(ratio - np.floor(ratio) - 0.5) > 1e-3
    assert torch.equal(ours[away_from_ties], theirs[away_from_ties])
    assert (ours != theirs).float().mean() < 1e-3 and (ours - theirs).abs().max() <= 1
    ties = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5]) * 0.25  # exactly k + 0.5 steps of 0.25
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_ties = torch.quantize_per_tensor(ties, 0.25, 0, torch.qint8).int_repr().long()
    assert Q.quantize(ties, 0.25, 0).tolist() == torch_ties.tolist() == [0, 2, 2, 0, -2, -2]


def test_round_trip_error_is_at_most_half_a_step_inside_the_range() -> None:
    x = np.linspace(-2, 5, 1001)
    scale, zp = Q.qparams(x.min(), x.max(), 8, signed=False)
    assert np.abs(Q.fake_quantize(x, scale, zp, 8, False) - x).max() <= scale / 2 + 1e-6


def test_per_channel() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 10)) * np.array([[0.01], [0.1], [1.0], [10.0]])
    scales, zps = Q.qparams_per_channel(w, axis=0)
    assert np.allclose(scales, np.abs(w).max(1) / 127) and (zps == 0).all()
    q = Q.quantize_per_channel(w, scales, zps, axis=0)
    per_channel_error = np.abs(Q.dequantize_per_channel(q, scales, zps, axis=0) - w).max(1)
    s, z = Q.qparams(w.min(), w.max(), symmetric=True)
    per_tensor_error = np.abs(Q.fake_quantize(w, s, z) - w).max(1)
    assert per_channel_error[0] < per_tensor_error[0] / 10  # the small channel gains the most
    wt = torch.from_numpy(w.T.copy())
    s1, z1 = Q.qparams_per_channel(wt, axis=1)
    assert np.allclose(s1, scales)
    with pytest.raises(ValueError, match="axis"):
        Q.qparams_per_channel(w, axis=2)


def test_calibration_ranges_handle_outliers() -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal(100_000), [40.0, -35.0]])
    assert Q.minmax_range(x) == (-35.0, 40.0)
    lo, hi = Q.percentile_range(x, 99.99)
    assert -5 < lo < -3 and 3 < hi < 5
    mse_lo, mse_hi = Q.mse_range(x, bits=8)
    assert hi / 3 < mse_hi < 40 and Q.quantization_mse(x, mse_lo, mse_hi) < Q.quantization_mse(x, -35.0, 40.0)
    relu = np.maximum(x, 0)
    k_lo, k_hi = Q.kl_range(relu, bits=8)
    assert k_lo == 0.0 and 1.0 < k_hi < 40.0
    with pytest.raises(ValueError, match="percentile"):
        Q.percentile_range(x, 20)
    with pytest.raises(ValueError, match="empty"):
        Q.minmax_range(np.array([]))


def _kl_threshold_reference(a: np.ndarray, levels: int, bins: int = 512) -> float:
    """A plain re-implementation of entropy calibration with an explicit number of merged levels."""
    a = np.abs(a[a != 0])
    hist, edges = np.histogram(a, bins=bins, range=(0.0, float(a.max())))
    best, best_i = np.inf, bins
    for i in range(levels, bins + 1):
        p = hist[:i].astype(np.float64)
        p[-1] += hist[i:].sum()
        q = np.zeros(i)
        for chunk in np.array_split(np.arange(i), levels):
            used = hist[chunk] > 0
            if used.any():
                q[chunk[used]] = hist[chunk].sum() / used.sum()
        mask = p > 0
        kl = np.sum(p[mask] / p.sum() * np.log((p[mask] / p.sum()) / np.where(q > 0, q / q.sum(), 1e-12)[mask]))
        if kl < best:
            best, best_i = kl, i
    return float(edges[best_i])


def test_kl_range_merges_into_as_many_levels_as_the_grid_has() -> None:
    rng = np.random.default_rng(5)
    relu = np.maximum(rng.standard_t(3, 20_000), 0)  # one-sided, long tail
    signed = rng.standard_t(3, 20_000)
    # uint8 / uint4 grids have 2**bits levels above 0, int8 / int4 2**(bits - 1) (TensorRT, pytorch-quantization)
    assert Q.kl_range(relu, bits=4, bins=512)[1] == _kl_threshold_reference(relu, 16)
    assert Q.kl_range(relu, bits=4, bins=512, unsigned=False)[1] == _kl_threshold_reference(relu, 8)
    assert Q.kl_range(signed, bits=4, bins=512)[1] == _kl_threshold_reference(signed, 8)
    assert _kl_threshold_reference(relu, 16) != _kl_threshold_reference(relu, 8)  # the test can tell them apart
    lo, hi = Q.kl_range(signed, bits=4, bins=512)
    assert lo == -hi < 0 and Q.kl_range(relu, bits=4, bins=512)[0] == 0.0
    with pytest.raises(ValueError, match="256"):
        Q.kl_range(relu, bits=8, bins=200)  # uint8 needs 256 bins at least
    Q.kl_range(signed, bits=8, bins=200)  # int8 needs 128
    with pytest.raises(ValueError, match="unsigned"):
        Q.kl_range(signed, bits=4, unsigned=True)


def test_sqnr_rises_about_six_db_per_bit() -> None:
    x = np.random.default_rng(3).uniform(-1, 1, 200_000)
    bits = np.arange(4, 13)
    sqnr = [Q.sqnr_db(x, Q.fake_quantize(x, *Q.qparams(-1, 1, int(b)), int(b))) for b in bits]
    slope = np.polyfit(bits, sqnr, 1)[0]
    assert 5.8 < slope < 6.2


def test_quantize_multiplier_and_requantize() -> None:
    rng = np.random.default_rng(4)
    for multiplier in [0.5, 0.999999, 1e-6, 0.0123456, 0.75, 2**-20]:
        m0, shift = Q.quantize_multiplier(multiplier)
        assert 2**30 <= m0 < 2**31 and shift >= 0
        assert m0 * 2.0 ** (-31 - shift) == pytest.approx(multiplier, rel=1e-9)
        acc = rng.integers(-(2**24), 2**24, 10_000)
        out = Q.requantize(acc, m0, shift, zero_point=3, bits=16)
        ideal = np.clip(np.round(acc * multiplier) + 3, -32768, 32767)
        assert np.abs(out - ideal).max() <= 1
    for bad in (0.0, 1.0, -0.5, 2.0):
        with pytest.raises(ValueError, match="multiplier"):
            Q.quantize_multiplier(bad)


def test_fixed_point_primitives() -> None:
    a = np.array([2**30, -(2**30), 3, -3, -(2**31)])
    b = np.array([2**30, 2**30, 2**30, 2**30, -(2**31)])
    assert Q.saturating_rounding_doubling_high_mul(a, b).tolist() == [2**29, -(2**29), 2, -1, 2**31 - 1]  # ties round up
    x = np.array([5, -5, 6, -6, 7, -7, 4, -4])
    assert Q.rounding_right_shift(x, 1).tolist() == [3, -3, 3, -3, 4, -4, 2, -2]  # ties away from zero
    assert Q.rounding_right_shift(np.array([10]), 0).tolist() == [10]
    with pytest.raises(ValueError, match="shift"):
        Q.rounding_right_shift(x, -1)
    with pytest.raises(ValueError, match="int32"):
        Q.requantize(np.array([2**31]), 2**30, 0, 0)


def test_quantized_linear_matches_float_within_one_lsb() -> None:
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 2, (16, 30))
    w = rng.standard_normal((7, 30)) * 0.3
    b = rng.standard_normal(7) * 0.1
    sx, zx = Q.qparams(0, 2, signed=False)
    ws, wz = Q.qparams_per_channel(w)
    y = x @ w.T + b
    sy, zy = Q.qparams(y.min(), y.max(), signed=False)
    qx = Q.quantize(x, sx, zx, signed=False)
    qw = Q.quantize_per_channel(w, ws, wz)
    bias_q = np.round(b / (sx * ws)).astype(np.int64)
    mult = [Q.quantize_multiplier(sx * s / sy) for s in ws]
    m0, shift = np.array([m for m, _ in mult]), np.array([s for _, s in mult])
    qy = Q.quantized_linear(qx, zx, qw, 0, bias_q, m0, shift, zy, 8, False)
    # The float computation on the same integer inputs, rounded once:
    ideal = np.clip(np.round(((qx - zx) @ (qw * 1.0).T * (sx * ws) + bias_q * sx * ws) / sy) + zy, 0, 255)
    assert np.abs(qy - ideal).max() <= 1 and (qy == ideal).mean() > 0.95
    assert np.abs(Q.dequantize(qy, sy, zy) - y).max() < 2 * sy + np.abs(x).sum(1).max() * ws.max()
    with pytest.raises(TypeError, match="integer"):
        Q.quantized_linear(qx * 1.0, zx, qw, 0, None, m0, shift, zy)
    with pytest.raises(ValueError, match="share K"):
        Q.quantized_linear(qx[:, :5], zx, qw, 0, None, m0, shift, zy)


def test_im2col_convolution_in_integers_equals_conv2d() -> None:
    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, (2, 3, 9, 9))
    w = rng.integers(-127, 128, (4, 3, 3, 3))
    out = (Q.im2col(x, 3) @ w.reshape(4, -1).T).reshape(2, 7, 7, 4).transpose(0, 3, 1, 2)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double()).numpy()
    assert np.array_equal(out, ref.astype(np.int64))


def test_groupwise_int4_and_packing() -> None:
    rng = np.random.default_rng(7)
    w = rng.standard_normal((6, 64)).astype(np.float32)
    errors = []
    for group in (8, 16, 64):
        codes, scales = Q.quantize_groupwise(w, 4, group)
        assert codes.min() >= -7 and codes.max() <= 7 and scales.shape == (6, 64 // group)
        errors.append(np.abs(Q.dequantize_groupwise(codes, scales) - w).mean())
    assert errors[0] < errors[1] < errors[2]  # smaller groups, smaller error
    packed = Q.pack_int4(codes)
    assert len(packed) == codes.size // 2 and np.array_equal(Q.unpack_int4(packed, codes.size).reshape(codes.shape), codes)
    assert Q.unpack_int4(Q.pack_int4(np.array([-8, 7, -1])), 3).tolist() == [-8, 7, -1]
    with pytest.raises(ValueError, match="group_size"):
        Q.quantize_groupwise(w, 4, 10)


def test_power_of_two_and_binarize() -> None:
    x = np.array([1.0, -0.3, 0.05, 0.0, 0.7, -2.0])
    p = Q.power_of_two_quantize(x, bits=4)
    nonzero = p[p != 0]
    assert np.allclose(np.log2(np.abs(nonzero)), np.round(np.log2(np.abs(nonzero))))
    assert p[0] == 1.0 and p[5] == -2.0 and p[3] == 0.0
    signs, alpha = Q.binarize(x)
    assert set(np.unique(signs)) <= {-1.0, 1.0} and alpha == pytest.approx(np.abs(x).mean())
