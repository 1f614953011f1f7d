"""Post-training quantization: the integer engine, the fake-quant simulation and onnxruntime agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import ptq
from helpers.metrics import serialized_size
from helpers.models import LeNet5, LeNet300


@pytest.mark.parametrize("model_class", [LeNet300, LeNet5])
@pytest.mark.parametrize("act_signed", [False, True])
def test_three_engines_agree_within_one_lsb(model_class: type, act_signed: bool) -> None:
    torch.manual_seed(0)
    model = model_class().eval()
    x = torch.rand(64, 1, 28, 28)
    qmodel = ptq.ptq(model, x[:32], act_signed=act_signed)
    integer = qmodel.run_integer(x)
    assert integer.min() >= (-128 if act_signed else 0) and integer.max() <= (127 if act_signed else 255)
    fake = qmodel.fake_quant(x).double().numpy()
    s, zp = qmodel.output_qparams
    fake_q = np.round(fake / s) + zp
    # Differences come only from the rounding of requantization near ties (fixed point vs float):
    assert np.abs(fake_q - integer).max() <= 1 and (fake_q == integer).mean() > 0.75
    runtime = qmodel.onnx_session(threads=1)(x.numpy()).astype(np.int64)
    assert np.abs(runtime - integer).max() <= 1 and (runtime == integer).mean() > 0.75
    with torch.no_grad():
        float_logits = model(x).numpy()
    assert np.abs(qmodel.dequantize_output(integer) - float_logits).max() < 0.25 * np.abs(float_logits).max() + 4 * s


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
