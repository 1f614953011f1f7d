"""Post-training quantization: the integer engine, the fake-quant simulation and onnxruntime agree.

Why the onnxruntime agreement does not depend on the CPU's instruction set. x86 uint8 x int8
kernels without VNNI (SSE4.1, AVX2, AVX-512 before Cascade Lake) add pairs of products in a
saturating int16 (``vpmaddubsw``); VNNI and ARM accumulate in int32. Three tests pin this down:

- ``helpers.ptq.u8s8_saturating_matmul`` models the saturating kernel in numpy; the test under
  ``qemu-x86_64 -cpu Haswell`` (an emulated AVX2 CPU without VNNI) shows that it reproduces
  onnxruntime's plain output there within 1 LSB, while the exact engine is up to tens of LSB off;
- the same test shows that ``Int8Model.onnx_session()`` (``precise=True``: onnxruntime's
  ``session.x64quantprecision``, an exact U8U8 kernel) agrees with the exact engine within 1 LSB there,
  as it does natively on any CPU (the engine-agreement test below);
- with ``reduce_range=True`` (7-bit weights) the saturation model equals the exact engine bit for
  bit, so no kernel can saturate.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import ptq
from helpers.metrics import serialized_size
from helpers.models import LeNet5, LeNet300


def random_lenet(model_class: type) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return model_class().eval(), torch.rand(64, 1, 28, 28)


@pytest.mark.parametrize("model_class", [LeNet300, LeNet5])
@pytest.mark.parametrize("act_signed", [False, True])
def test_three_engines_agree_within_one_lsb(model_class: type, act_signed: bool) -> None:
    model, x = random_lenet(model_class)
    qmodel = ptq.ptq(model, x[:32], act_signed=act_signed)
    integer = qmodel.run_integer(x)
    lo, hi = (-128, 127) if act_signed else (0, 255)
    assert integer.min() >= lo and integer.max() <= hi, f"integer logits in [{integer.min()}, {integer.max()}], expected [{lo}, {hi}]"
    fake = qmodel.fake_quant(x).double().numpy()
    s, zp = qmodel.output_qparams
    fake_q = np.round(fake / s) + zp
    # Differences come only from the rounding of requantization near ties (fixed point vs float):
    d = np.abs(fake_q - integer)
    assert d.max() <= 1 and (d == 0).mean() > 0.75, f"fake quant vs integer: max {d.max()} LSB, identical {(d == 0).mean():.1%}"
    # onnxruntime with its exact path (the default, precise=True): the same on every CPU (see the module docstring)
    runtime = qmodel.onnx_session(threads=1)(x.numpy()).astype(np.int64)
    d = np.abs(runtime - integer)
    assert d.max() <= 1 and (d == 0).mean() > 0.75, f"onnxruntime vs integer: max {d.max()} LSB, identical {(d == 0).mean():.1%}"
    with torch.no_grad():
        float_logits = model(x).numpy()
    error = np.abs(qmodel.dequantize_output(integer) - float_logits).max()
    assert error < 0.25 * np.abs(float_logits).max() + 4 * s, f"dequantized logits off by {error:.3f}"


def test_saturating_kernel_model_on_small_cases() -> None:
    a = np.array([[255, 255, 255, 255, 7]])
    w = np.array([[127, 127, -128, -128, 3], [127, -128, 127, -128, 3]])
    # pair (0, 1): 2 * 255 * 127 = 64770 -> 32767; pair (2, 3): -65280 -> -32768; the odd 5th is alone
    assert ptq.u8s8_saturating_matmul(a, w).tolist() == [[32767 - 32768 + 21, 255 * (127 - 128 + 127 - 128) + 21]]
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (50, 301))
    w7 = rng.integers(-64, 65, (20, 301))  # 7-bit weights: 2 * 255 * 64 = 32640 fits in int16
    assert np.array_equal(ptq.u8s8_saturating_matmul(a, w7), a @ w7.T)
    w8 = rng.integers(-128, 128, (20, 301))
    assert not np.array_equal(ptq.u8s8_saturating_matmul(a, w8), a @ w8.T)
    with pytest.raises(ValueError, match="uint8"):
        ptq.u8s8_saturating_matmul(a - 1, w8)
    with pytest.raises(ValueError, match="int8"):
        ptq.u8s8_saturating_matmul(a, w8 * 2)
    with pytest.raises(ValueError, match="share K"):
        ptq.u8s8_saturating_matmul(a, w8[:, :-1])
    with pytest.raises(TypeError, match="integer"):
        ptq.u8s8_saturating_matmul(a.astype(float), w8)


@pytest.mark.parametrize("model_class", [LeNet300, LeNet5])
def test_saturation_needs_8bit_weights_and_reduce_range_removes_it(model_class: type) -> None:
    model, x = random_lenet(model_class)
    full = ptq.ptq(model, x[:32])
    d = np.abs(full.run_integer(x, kernel="u8s8_int16") - full.run_integer(x))
    assert d.max() > 4, f"8-bit weights on [0, 1] images should saturate int16 pair sums; max change only {d.max()} LSB"
    reduced = ptq.ptq(model, x[:32], reduce_range=True)
    assert reduced.weight_bits == 7 and max(np.abs(layer.q_w).max() for layer in reduced.layers) <= 64
    assert np.array_equal(reduced.run_integer(x, kernel="u8s8_int16"), reduced.run_integer(x)), "7-bit weights cannot saturate"
    # and the 7-bit model still computes the same network
    agree = (reduced.run_integer(x).argmax(1) == full.run_integer(x).argmax(1)).mean()
    assert agree > 0.9, f"reduce_range changed {1 - agree:.0%} of the predictions"
    with pytest.raises(ValueError, match="kernel"):
        full.run_integer(x, kernel="avx2")
    with pytest.raises(ValueError, match="reduce_range"):
        ptq.ptq(model, x[:32], bits=2, reduce_range=True)
    with pytest.raises(ValueError, match="act_signed"):
        ptq.ptq(model, x[:32], act_signed=True).run_integer(x, kernel="u8s8_int16")


QEMU_SCRIPT = textwrap.dedent(
    """
    import sys

    import numpy as np
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    OPTION, folder = sys.argv[1], sys.argv[2]
    for name in sys.argv[3:]:
        x = np.load(f"{folder}/{name}_x.npy")
        for precise in (False, True):
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            if precise:
                options.add_session_config_entry(OPTION, "1")
            with open(f"{folder}/{name}.onnx", "rb") as f:
                session = ort.InferenceSession(f.read(), options, providers=["CPUExecutionProvider"])
            np.save(f"{folder}/{name}_{precise}.npy", session.run(["q_logits"], {"images": x})[0])
    """
)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="emulates an x86 CPU with this x86 Python")
@pytest.mark.skipif(
    shutil.which("qemu-x86_64") is None, reason="qemu-x86_64 not installed (apt-get install qemu-user): no emulated AVX2 CPU without VNNI"
)
def test_onnxruntime_on_emulated_avx2_saturates_and_precise_mode_fixes_it(tmp_path: Path) -> None:
    # Real onnxruntime on an emulated Haswell (AVX2, no VNNI, no AVX-512), whatever this CPU has.
    # The sessions are built with the option that Int8Model.onnx_session sets (checked natively here):
    assert ptq.ort_session_options(1).get_session_config_entry(ptq.ORT_PRECISION_OPTION) == "1"
    models, inputs = {}, {}
    for model_class in (LeNet300, LeNet5):
        name = model_class.__name__
        model, inputs[name] = random_lenet(model_class)
        models[name] = ptq.ptq(model, inputs[name][:32])
        (tmp_path / f"{name}.onnx").write_bytes(models[name].to_onnx())
        np.save(tmp_path / f"{name}_x.npy", inputs[name].numpy())
    (tmp_path / "run.py").write_text(QEMU_SCRIPT)
    result = subprocess.run(
        ["qemu-x86_64", "-cpu", "Haswell", sys.executable, str(tmp_path / "run.py"), ptq.ORT_PRECISION_OPTION, str(tmp_path), *models],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"onnxruntime under qemu failed:\n{result.stderr[-2000:]}"
    for name, qmodel in models.items():
        exact = qmodel.run_integer(inputs[name])
        saturating = qmodel.run_integer(inputs[name], kernel="u8s8_int16")
        plain = np.load(tmp_path / f"{name}_False.npy").astype(np.int64)
        precise = np.load(tmp_path / f"{name}_True.npy").astype(np.int64)
        assert np.abs(plain - exact).max() > 1, f"{name}: plain onnxruntime on emulated AVX2 should saturate; it matches the exact engine"
        d = np.abs(plain - saturating)
        assert d.max() <= 1 and (d == 0).mean() > 0.75, f"{name}: the saturation model misses onnxruntime's AVX2 output by {d.max()} LSB"
        d = np.abs(precise - exact)
        assert d.max() <= 1 and (d == 0).mean() > 0.75, f"{name}: precise mode on emulated AVX2 is {d.max()} LSB off the exact engine"


def test_weights_and_biases_have_the_documented_types() -> None:
    torch.manual_seed(1)
    qmodel = ptq.ptq(LeNet300().eval(), torch.rand(16, 1, 28, 28))
    for layer in qmodel.layers:
        assert layer.q_w.dtype == np.int8 and np.abs(layer.q_w).max() <= 127
        assert layer.bias_q.dtype == np.int32
        assert (layer.m0 >= 2**30).all() and (layer.m0 < 2**31).all()
    assert [layer.relu for layer in qmodel.layers] == [True, True, False]


def test_int8_artifact_is_about_four_times_smaller() -> None:
    model = LeNet300().eval()
    qmodel = ptq.ptq(model, torch.rand(16, 1, 28, 28))
    ratio = serialized_size(ptq.fp32_onnx(model)) / serialized_size(qmodel.to_onnx())
    assert 3.5 < ratio < 4.0


def test_fp32_onnx_matches_torch() -> None:
    import onnxruntime as ort

    torch.manual_seed(2)
    model = LeNet5().eval()
    x = torch.rand(8, 1, 28, 28)
    session = ort.InferenceSession(ptq.fp32_onnx(model), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert np.allclose(session.run(None, {"images": x.numpy()})[0], model(x).numpy(), atol=1e-4)


def test_calibrate_and_validation() -> None:
    model = LeNet5().eval()
    ranges = ptq.calibrate(model, torch.rand(8, 1, 28, 28))
    assert len(ranges) == 1 + 4 and ranges[0][0] >= 0.0
    assert ranges[3][0] >= 0.0  # fc1 is followed by a ReLU
    with pytest.raises(ValueError, match="method"):
        ptq.calibrate(model, torch.rand(2, 1, 28, 28), method="kl")
    with pytest.raises(TypeError, match="LeNet"):
        ptq.lenet_ops(torch.nn.Linear(3, 3))


def test_int_matmul_is_the_exact_integer_product() -> None:
    from helpers import quantization as Q

    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 256, (40, 513)), rng.integers(-128, 128, (7, 513))
    assert np.array_equal(Q.int_matmul(a, b), a @ b.T)  # float64 path
    big_a, big_b = rng.integers(-(2**40), 2**40, (3, 9)), rng.integers(-(2**20), 2**20, (2, 9))
    assert np.array_equal(Q.int_matmul(big_a, big_b), big_a @ big_b.T)  # beyond 2**53: the int64 path
