"""helpers.deploy: export to onnxruntime and ExecuTorch, load, verify, bound memory, filter by a budget."""

from __future__ import annotations

import importlib.util
import os
import re

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from helpers import deploy as DP
from helpers.models import LeNet5, LeNet300

from .conftest import ROOT

HAVE_EXECUTORCH = importlib.util.find_spec("executorch") is not None


@pytest.fixture(scope="module")
def small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return LeNet5(channels=(4, 8), hidden=16).eval()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((40, 1, 28, 28), dtype=np.float32)


# ----------------------------------------------------------------------------- agreement, predict


def test_agreement_counts_same_argmax_and_largest_absolute_difference() -> None:
    a = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, -5.0]])
    b = np.array([[0.0, 1.0, 0.5], [0.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    top1, diff = DP.agreement(a, b)
    assert top1 == pytest.approx(1 / 3) and diff == pytest.approx(6.0)  # rows 2 and 3 change class (row 3: 0 vs 2)


def test_agreement_ties_go_to_the_first_index_and_torch_is_accepted() -> None:
    tie = torch.tensor([[1.0, 1.0, 0.0]])
    assert DP.agreement(tie, torch.tensor([[2.0, 0.0, 0.0]]))[0] == 1.0
    assert DP.agreement(tie, torch.tensor([[0.0, 2.0, 0.0]]))[0] == 0.0


@pytest.mark.parametrize(
    ("a", "b"), [(np.zeros((2, 3)), np.zeros((3, 2))), (np.zeros(3), np.zeros(3)), (np.zeros((0, 3)), np.zeros((0, 3)))]
)
def test_agreement_rejects_bad_shapes(a: np.ndarray, b: np.ndarray) -> None:
    with pytest.raises(ValueError, match="same shape"):
        DP.agreement(a, b)


def test_predict_in_batches_equals_one_call(images: np.ndarray) -> None:
    def fn(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1)[:, :10] * 2

    assert np.array_equal(DP.predict(fn, images, batch=7), fn(images))
    with pytest.raises(ValueError, match="batch"):
        DP.predict(fn, images, batch=0)
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        DP.predict(fn, images[:, :, :10])
    with pytest.raises(TypeError, match="numpy array"):
        DP.predict(fn, images.tolist())


# ----------------------------------------------------------------------------- activation bound


def test_activation_bytes_matches_a_hand_count_for_lenet5() -> None:
    values = 20 * 24 * 24 + 20 * 12 * 12 + 50 * 8 * 8 + 50 * 4 * 4 + 500 + 10
    bound = DP.activation_bytes(LeNet5(), batch=2, bytes_per_value=4)
    assert bound == {"input": 2 * 784 * 4, "largest": 2 * 20 * 24 * 24 * 4, "all": 2 * values * 4}
    assert DP.activation_bytes(LeNet300(), batch=1, bytes_per_value=1)["all"] == 300 + 100 + 10


def test_activation_bytes_skips_identity_so_a_folded_batchnorm_is_not_counted_twice() -> None:
    from helpers.architectures import fold_batchnorm

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    per_layer = 4 * 26 * 26
    assert DP.activation_bytes(model, bytes_per_value=1)["all"] == 3 * per_layer  # conv, batch norm, relu: three tensors
    folded = fold_batchnorm(model)
    assert isinstance(folded[1], torch.nn.Identity)
    assert DP.activation_bytes(folded, bytes_per_value=1)["all"] == 2 * per_layer  # the Identity hands its input on


@pytest.mark.parametrize(
    ("kwargs", "error"), [({"batch": 0}, ValueError), ({"bytes_per_value": 3}, ValueError), ({"batch": True}, ValueError)]
)
def test_activation_bytes_rejects_bad_arguments(kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        DP.activation_bytes(LeNet5(), **kwargs)
    with pytest.raises(TypeError, match="nn.Module"):
        DP.activation_bytes("lenet5")


# ----------------------------------------------------------------------------- budget


def test_meets_budget_accepts_values_at_the_limit_and_needs_all_three() -> None:
    budget = DP.Budget(flash_bytes=100, ram_bytes=200, latency_ms=1.0)
    rows = [
        {"bytes": 100, "ram_bytes": 200, "latency_ms": 1.0},
        {"bytes": 101, "ram_bytes": 10, "latency_ms": 0.1},
        {"bytes": 10, "ram_bytes": 201, "latency_ms": 0.1},
        {"bytes": 10, "ram_bytes": 10, "latency_ms": 1.01},
    ]
    assert DP.meets_budget(rows, budget) == [True, False, False, False]
    assert DP.meets_budget([], budget) == []


def test_budget_and_meets_budget_reject_bad_input() -> None:
    for bad in (
        {"flash_bytes": 0, "ram_bytes": 1, "latency_ms": 1},
        {"flash_bytes": 1, "ram_bytes": -1, "latency_ms": 1},
        {"flash_bytes": 1, "ram_bytes": 1, "latency_ms": "1"},
    ):
        with pytest.raises(ValueError, match="positive number"):
            DP.Budget(**bad)
    with pytest.raises(TypeError, match="Budget"):
        DP.meets_budget([], (1, 2, 3))
    with pytest.raises(ValueError, match="ram_bytes"):
        DP.meets_budget([{"name": "x", "bytes": 1, "latency_ms": 1}], DP.Budget(1, 1, 1))


# ----------------------------------------------------------------------------- onnxruntime


def test_onnx_fp32_round_trip_with_a_dynamic_batch(tmp_path, small_cnn, images) -> None:
    path = DP.export_onnx(small_cnn, tmp_path / "m.onnx")
    deployed = DP.load("ort-fp32", path, threads=1)
    assert deployed.bytes == os.path.getsize(path) and deployed.load_ms > 0
    with torch.inference_mode():
        expected = small_cnn(torch.from_numpy(images)).numpy()
    for batch in (1, 7, 40):
        got = DP.predict(deployed, images, batch=batch)
        assert np.abs(got - expected).max() < 1e-4


def test_quantize_static_writes_7_bit_per_channel_weights_and_agrees(tmp_path, small_cnn, images) -> None:
    fp32 = DP.export_onnx(small_cnn, tmp_path / "m.onnx")
    int8 = DP.quantize_onnx_int8(fp32, tmp_path / "m.int8.onnx", images)
    graph = onnx.load(int8).graph
    weights = [numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith("weight_quantized")]  # not the zero points
    assert len(weights) == 4 and all(w.dtype == np.int8 and -64 <= w.min() and w.max() <= 64 for w in weights)
    assert os.path.getsize(int8) < os.path.getsize(fp32)
    with torch.inference_mode():
        expected = small_cnn(torch.from_numpy(images)).numpy()
    top1, _ = DP.agreement(DP.predict(DP.load("ort-int8", int8), images), expected)
    assert top1 >= 0.9


def test_quantize_onnx_int8_rejects_bad_input(tmp_path, images) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        DP.quantize_onnx_int8(tmp_path / "missing.onnx", tmp_path / "out.onnx", images)
    with pytest.raises(ValueError, match="calibration"):
        DP.quantize_onnx_int8(tmp_path / "missing.onnx", tmp_path / "out.onnx", images[:, 0])
    with pytest.raises(TypeError, match="reduce_range"):
        DP.quantize_onnx_int8(tmp_path / "missing.onnx", tmp_path / "out.onnx", images, reduce_range=1)


def test_load_and_export_reject_bad_input(tmp_path) -> None:
    with pytest.raises(ValueError, match="runtime must be one of"):
        DP.load("tflite", tmp_path / "m.tflite")
    with pytest.raises(ValueError, match="does not exist"):
        DP.load("ort-fp32", tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="threads"):
        DP.load("ort-fp32", tmp_path / "missing.onnx", threads=0)
    with pytest.raises(TypeError, match="nn.Module"):
        DP.export_onnx("model", tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="max_batch"):
        DP.export_pte(LeNet5(), tmp_path / "m.pte", max_batch=1)
    with pytest.raises(ValueError, match="calibration"):
        DP.export_pte(LeNet5(), tmp_path / "m.pte", int8=True)


def test_pytorch_file_round_trip(tmp_path, small_cnn, images) -> None:
    deployed = DP.load("pytorch", DP.save_pytorch(small_cnn, tmp_path / "m.pt"), module=LeNet5(channels=(4, 8), hidden=16))
    with torch.inference_mode():
        assert np.array_equal(deployed(images), small_cnn(torch.from_numpy(images)).numpy())
    assert DP.pytorch_bytes(small_cnn) > 4 * sum(p.numel() for p in small_cnn.parameters())
    with pytest.raises(TypeError, match="module="):
        DP.load("pytorch", tmp_path / "m.pt")


# ----------------------------------------------------------------------------- ExecuTorch


@pytest.mark.skipif(not HAVE_EXECUTORCH, reason="executorch is not installed (pip install --no-deps -r requirements-executorch.txt)")
def test_pte_fp32_and_int8_run_batches_up_to_the_bound(tmp_path, small_cnn, images) -> None:
    with torch.inference_mode():
        expected = small_cnn(torch.from_numpy(images)).numpy()
    for int8 in (False, True):
        path = DP.export_pte(small_cnn, tmp_path / f"m{int(int8)}.pte", int8=int8, calibration=images, max_batch=32)
        deployed = DP.load("et-int8" if int8 else "et-fp32", path, threads=1)
        got = np.concatenate([deployed(images[:1]), deployed(images[1:33])])
        top1, diff = DP.agreement(got, expected[:33])
        assert (diff < 1e-4) if not int8 else (top1 >= 0.9)
        with DP.quiet_native_stderr(), pytest.raises(RuntimeError):
            deployed(images[:33])  # over the exported bound


def test_quiet_native_stderr_silences_file_descriptor_2(capfd) -> None:
    os.write(2, b"before\n")
    with DP.quiet_native_stderr():
        os.write(2, b"hidden\n")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "before" in err and "after" in err and "hidden" not in err


# ----------------------------------------------------------------------------- the course's models and the install


def test_course_models_are_builders_with_a_chapter() -> None:
    assert {"dense LeNet-5", "pruned LeNet-5", "distilled CNN", "low-rank LeNet-300-100"} <= set(DP.COURSE_MODELS)
    for entry in DP.COURSE_MODELS.values():
        assert isinstance(entry, DP.CourseModel) and callable(entry.build) and re.fullmatch(r"\d\d", entry.chapter)


def test_compact_mobilenet_is_chapter_09s_net_with_batchnorm_folded(monkeypatch, tmp_path, images) -> None:
    from helpers import train
    from helpers.architectures import MobileNetMNIST

    torch.manual_seed(0)
    trained = MobileNetMNIST(width=1.0)
    with torch.no_grad():  # batch-norm statistics that are not the identity, so a missed fold would show
        for m in trained.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
    trained.eval()
    monkeypatch.setattr(train, "pretrained", lambda name, progress=True: trained if name == "mobilenet" else None)
    model = DP.compact_mobilenet()
    assert DP.COURSE_MODELS["compact MobileNet"].chapter == "09" and DP.COURSE_MODELS["compact MobileNet"].build is DP.compact_mobilenet
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    with torch.inference_mode():
        reference, logits = trained(torch.from_numpy(images)), model(torch.from_numpy(images))
    assert torch.allclose(logits, reference, atol=1e-4), (logits - reference).abs().max()
    deployed = DP.load("ort-fp32", DP.export_onnx(model, tmp_path / "m.onnx"))
    assert np.allclose(DP.predict(deployed, images), reference.numpy(), atol=1e-4)


def test_deep_compressed_lenet300_follows_chapter_06s_recipe_and_round_trips_its_file(monkeypatch, tmp_cache, tmp_path) -> None:
    from helpers import encoding as E
    from helpers import train

    torch.manual_seed(0)
    dense = LeNet300().eval()
    monkeypatch.setattr(train, "pretrained", lambda name, progress=True: dense if name == "lenet300" else None)
    epochs = []
    monkeypatch.setattr(train, "train", lambda model, loader, n, **kwargs: epochs.append(n))  # no training: the structure only
    model = DP.deep_compressed_lenet300()
    assert epochs == [2, 2, 2, 6, 2], epochs  # three pruning steps, the last one, the centroids
    layers = {name: m for name, m in model.named_modules() if isinstance(m, E.SharedLayer)}
    assert sorted(layers) == ["fc1", "fc2", "fc3"] and all(m.centroids.numel() == 31 for m in layers.values())
    kept = {name: float(m.mask.float().mean()) for name, m in layers.items()}
    assert abs(kept["fc1"] - 0.08) < 0.005 and abs(kept["fc2"] - 0.08) < 0.005 and abs(kept["fc3"] - 0.30) < 0.01, kept
    path = tmp_path / "m.dcmp"
    assert E.save_model(model, str(path), "lenet300") == os.path.getsize(path) < 0.05 * DP.pytorch_bytes(dense)
    images = torch.rand(8, 1, 28, 28)
    with torch.inference_mode():
        assert torch.allclose(E.load_model(str(path))(images), model(images), atol=1e-5)
    cached = DP.deep_compressed_lenet300()  # the second call reads the cache: no training
    assert epochs == [2, 2, 2, 6, 2] and all(torch.equal(a, b) for a, b in zip(cached.state_dict().values(), model.state_dict().values()))


def test_executorch_is_pinned_and_installed_without_its_dependencies() -> None:
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements-executorch.txt").read_text().splitlines()]
    pins = [ln for ln in lines if ln]
    assert pins == ["executorch==1.5.1"], pins
    assert "--no-deps -r requirements-executorch.txt" in (ROOT / "Makefile").read_text()
    if HAVE_EXECUTORCH:
        from importlib.metadata import version

        assert version("executorch") == "1.5.1"
