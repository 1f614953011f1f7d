"""Mixed-precision helpers: float formats against the libraries, summation, loss scalers vs GradScaler, autocast, fp8 storage."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
from torch import nn

from helpers import mixed_precision as MP
from helpers.metrics import serialized_size
from helpers.models import LeNet5


@pytest.mark.parametrize("name", ["fp16", "bf16", "e4m3fn", "e5m2"])
def test_decode_equals_the_library_on_every_pattern_and_encode_inverts_it(name: str) -> None:
    bits = MP.FORMATS[name].bits
    patterns = np.arange(2**bits, dtype={8: np.uint8, 16: np.uint16}[bits])
    with np.errstate(invalid="ignore"):
        library = patterns.view(MP.numpy_dtype(name)).astype(np.float64)
    ours = MP.decode(patterns, name)
    assert np.array_equal(ours, library, equal_nan=True)
    finite = np.isfinite(ours)
    assert np.array_equal(MP.encode(ours[finite], name), patterns[finite])


@pytest.mark.parametrize("name", ["fp16", "bf16", "e4m3fn", "e5m2"])
def test_encode_rounds_like_the_library(name: str) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(20000) * np.exp2(rng.uniform(-30, 20, 20000))).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        library = x.astype(MP.numpy_dtype(name))
    ours = MP.decode(MP.encode(x, name), name)
    assert np.array_equal(ours, library.astype(np.float64), equal_nan=True)


def test_e4m3fn_overflow_rules_and_limits() -> None:
    x = np.array([464.0, 470.0, np.inf, -1e6, np.nan])
    assert np.array_equal(MP.decode(MP.encode(x, "e4m3fn"), "e4m3fn"), [448.0, np.nan, np.nan, np.nan, np.nan], equal_nan=True)
    assert MP.decode(MP.encode(x, "e4m3fn", saturate=True), "e4m3fn")[:4].tolist() == [448.0, 448.0, 448.0, -448.0]
    assert MP.decode(MP.encode([65520.0, -65520.0], "fp16"), "fp16").tolist() == [np.inf, -np.inf]  # the tie rounds to even: overflow
    for name, info in (
        ("fp16", np.finfo(np.float16)),
        ("bf16", ml_dtypes.finfo(ml_dtypes.bfloat16)),
        ("e5m2", ml_dtypes.finfo(ml_dtypes.float8_e5m2)),
    ):
        lim = MP.format_limits(name)
        assert (lim["max"], lim["min_normal"], lim["min_subnormal"], lim["eps"]) == (
            float(info.max),
            float(info.smallest_normal),
            float(info.smallest_subnormal),
            float(info.eps),
        )


def test_decode_and_encode_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="fmt"):
        MP.decode([0], "fp64")
    with pytest.raises(ValueError, match="bits"):
        MP.decode([256], "e4m3fn")
    with pytest.raises(TypeError, match="bits"):
        MP.decode(np.array([0.5]), "fp16")
    with pytest.raises(ValueError, match="fmt"):
        MP.encode([1.0], "int8")


def test_sums_swamp_and_kahan_fixes() -> None:
    values = np.full(10000, 1e-4, dtype=np.float32)
    assert MP.sequential_sum(values, np.float16) == 0.25  # stalls where half a spacing exceeds 1e-4
    assert abs(MP.kahan_sum(values, np.float16) - 1.0) < 1e-3
    assert abs(MP.sequential_sum(values, np.float32) - 1.0) < 1e-3
    with pytest.raises(ValueError, match="empty"):
        MP.kahan_sum(np.array([]), np.float16)
    with pytest.raises(TypeError, match="numbers"):
        MP.sequential_sum(np.array(["a"]), np.float16)


def test_flushed_fraction() -> None:
    g = np.array([1e-9, 1e-6, 1e-3, 0.0])
    assert MP.flushed_fraction(g, "fp16") == pytest.approx(1 / 3)
    assert MP.flushed_fraction(g, "fp16", scale=2.0**16) == 0.0
    assert MP.flushed_fraction(g, "bf16") == 0.0
    with pytest.raises(ValueError, match="scale"):
        MP.flushed_fraction(g, "fp16", scale=0.0)
    with pytest.raises(ValueError, match="nonzero"):
        MP.flushed_fraction(np.zeros(3), "fp16")


def test_dynamic_scaler_matches_gradscaler_and_validates() -> None:
    options = {"init_scale": 16.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 3}
    infinite = {1, 2, 9}
    weight = nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    reference = torch.amp.GradScaler("cpu", **options)
    ours = MP.DynamicLossScaler(**options)
    for step in range(15):
        optimizer.zero_grad()
        reference.scale(weight.sum()).backward()
        if step in infinite:
            weight.grad.fill_(float("nan"))
        before = weight.detach().clone()
        reference.step(optimizer)
        reference.update()
        assert ours.update(step in infinite) == (not torch.equal(before, weight.detach()))
        assert ours.scale == reference.get_scale()
    assert MP.DynamicLossScaler().scale == MP.gradscaler_defaults()["init_scale"]
    for bad in ({"growth_factor": 1.0}, {"backoff_factor": 1.5}, {"growth_interval": 0}, {"init_scale": -1.0}):
        with pytest.raises(ValueError):
            MP.DynamicLossScaler(**bad)


def test_static_scaler_unscales_in_place_and_detects_inf() -> None:
    scaler = MP.StaticLossScaler(8.0)
    grads = [torch.tensor([8.0, 16.0]), None]
    assert scaler.unscale(grads) and grads[0].tolist() == [1.0, 2.0]
    assert not scaler.unscale([torch.tensor([float("inf")])])
    with pytest.raises(ValueError, match="scale"):
        MP.StaticLossScaler(float("inf"))


def test_autocast_dtypes_and_amp_step_keep_fp32_weights() -> None:
    torch.manual_seed(0)
    model = LeNet5()
    found = MP.autocast_output_dtypes(model, torch.rand(2, 1, 28, 28))
    assert found["conv1"] == found["fc2"] == torch.bfloat16 and set(found) == {"conv1", "pool1", "conv2", "pool2", "fc1", "fc2"}
    assert not any(m._forward_hooks for m in model.modules())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    before = model.fc2.weight.detach().clone()
    loss = MP.amp_train_step(model, optimizer, x, y, dtype=torch.bfloat16)
    assert np.isfinite(loss) and model.fc2.weight.dtype == torch.float32 and not torch.equal(before, model.fc2.weight)
    loss = MP.amp_train_step(model, optimizer, x, y, scaler=torch.amp.GradScaler("cpu"), dtype=torch.bfloat16)
    assert np.isfinite(loss)
    with pytest.raises(TypeError, match="model"):
        MP.autocast_output_dtypes("lenet", x)
    with pytest.raises(ValueError, match="device_type"):
        MP.autocast_output_dtypes(model, x, device_type="tpu")


def test_fp8_storage_bytes_and_roundtrip() -> None:
    torch.manual_seed(0)
    model = LeNet5()
    w = model.fc1.weight.detach()
    codes, scale = MP.fp8_quantize(w, "e4m3fn", per_channel=True)
    assert codes.dtype == torch.float8_e4m3fn and scale.shape == (w.shape[0],)
    assert torch.allclose(codes.float().abs().flatten(1).amax(1), torch.full((w.shape[0],), 448.0))
    back = MP.fp8_dequantize(codes, scale)
    assert ((back - w).abs() <= w.abs() * 2.0**-4 + scale[:, None] * 2.0**-9 + 1e-12).all()  # half a spacing: eps / 2, or subnormal step
    _, s = MP.fp8_quantize(torch.zeros(3, 4), "e5m2", per_channel=False)
    assert s.item() == 1.0
    state = MP.fp8_state_dict(model)
    assert state["fc1.weight"].element_size() == 1 and "fc1.weight_scale" in state and state["fc1.bias"].dtype == torch.float32
    assert 3.8 < serialized_size(model) / serialized_size(state) < 4.0
    with pytest.raises(ValueError, match="fmt"):
        MP.fp8_quantize(w, "e3m4")
    with pytest.raises(TypeError, match="floating"):
        MP.fp8_quantize(torch.ones(2, dtype=torch.int64))
