"""Deployment: export a compressed PyTorch model to an on-device runtime, and measure it there.

Two export paths a practitioner uses today, each in fp32 and int8:

- ONNX -> onnxruntime: :func:`export_onnx` (the TorchScript-based exporter, dynamic batch) and
  :func:`quantize_onnx_int8` (onnxruntime's own ``quantize_static``, QDQ format, per-channel int8
  weights, uint8 activations calibrated on a few hundred images, 7-bit weights by default).
- ``torch.export`` -> ExecuTorch: :func:`export_pte` (a ``.pte`` program lowered to the XNNPACK
  delegate; int8 through XNNPACK's quantizer and ``prepare_pt2e`` / ``convert_pt2e``), with a batch
  dimension that is dynamic up to ``max_batch``.

:func:`load` opens a file in its runtime and returns a :class:`Deployed` (a numpy-in, numpy-out
callable, the file's size on disk and the load time). :func:`agreement` compares its logits with
PyTorch's; :func:`activation_bytes` bounds the RAM a forward pass needs; :func:`meets_budget`
filters measured rows by a device budget.

:data:`COURSE_MODELS` lists the best model of each earlier chapter, each built (and cached, when it
needs training) by a function of this module. A later chapter adds its model with one entry.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import pickle
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

RUNTIMES = ("pytorch", "ort-fp32", "ort-int8", "et-fp32", "et-int8")
"""The runtimes of the chapter: PyTorch eager, onnxruntime fp32 / int8 QDQ, ExecuTorch XNNPACK fp32 / int8."""

SUFFIX = {"pytorch": ".pt", "ort-fp32": ".onnx", "ort-int8": ".onnx", "et-fp32": ".pte", "et-int8": ".pte"}


def _check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")


def _check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_images(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    if a.ndim != 4 or a.shape[1:] != (1, 28, 28) or len(a) == 0:
        raise ValueError(f"{name} must have shape (N, 1, 28, 28) with N >= 1, got {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


# ----------------------------------------------------------------------------- quiet native logs


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what native code writes to stderr (ExecuTorch's cpuinfo probes on a VM, its thread-pool notes).

    Both routes are closed for the duration: the process's file descriptor 2 (pointed at /dev/null)
    and Python's ``sys.stderr`` (ExecuTorch's bindings forward C++ log lines to it, which is where
    Jupyter shows them). Exceptions still propagate; nothing else is changed.
    """
    import sys

    try:
        sys.stderr.flush()
    except (AttributeError, ValueError):
        pass
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_NOISY_LOGGERS = ("root", "torchao", "torch.utils._pytree", "torch._export", "executorch")


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Raise the level of the loggers that print advice while exporting (onnxruntime's "consider
    pre-processing", torchao's optional CUDA kernels not found) to ERROR for the duration."""
    import logging

    loggers = [logging.getLogger() if name == "root" else logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ----------------------------------------------------------------------------- export: ONNX


def export_onnx(model: nn.Module, path: str | Path, opset: int = 17) -> Path:
    """Write ``model`` (input (N, 1, 28, 28) float32 -> logits (N, 10)) as ONNX with a dynamic batch axis.

    Uses torch's TorchScript-based exporter (``dynamo=False``), which needs no extra package. The
    graph's input is named ``images`` and its output ``logits``. Returns the path written.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_positive_int(opset, "opset")
    path = Path(path)
    model = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice for dynamo=False
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 28, 28),),
            str(path),
            dynamo=False,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
        )
    return path


class _CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol over a numpy array of images, in batches."""

    def __init__(self, images: np.ndarray, batch: int = 100) -> None:
        self.batches = iter([{"images": images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)

    def rewind(self) -> None:  # pragma: no cover - not called by quantize_static's MinMax calibrator
        raise NotImplementedError


def quantize_onnx_int8(
    fp32_path: str | Path, int8_path: str | Path, calibration: np.ndarray | torch.Tensor, reduce_range: bool = True
) -> Path:
    """onnxruntime's ``quantize_static``: the fp32 ONNX at ``fp32_path`` as an int8 QDQ graph at ``int8_path``.

    Weights int8 symmetric per output channel, activations uint8 per tensor (min-max over
    ``calibration``, (N, 1, 28, 28) training images, never test). ``reduce_range=True`` stores 7-bit
    weights: on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) onnxruntime's uint8 x int8 kernel
    adds pairs of products in int16 and can saturate with 8-bit weights (chapter 04); 7-bit weights
    cannot, so the result is the same on every CPU.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    images = _check_images(calibration, "calibration")
    if not isinstance(reduce_range, bool):
        raise TypeError(f"reduce_range must be a bool, got {type(reduce_range).__name__}")
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    if not fp32_path.exists():
        raise ValueError(f"fp32_path {fp32_path} does not exist")
    with quiet_logs():
        quantize_static(
            str(fp32_path),
            str(int8_path),
            _CalibrationReader(images),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return int8_path


# ----------------------------------------------------------------------------- export: ExecuTorch


def export_pte(
    model: nn.Module,
    path: str | Path,
    int8: bool = False,
    calibration: np.ndarray | torch.Tensor | None = None,
    max_batch: int = 32,
) -> Path:
    """``torch.export`` -> ExecuTorch ``.pte`` lowered to the XNNPACK delegate, batch 1..``max_batch``.

    The batch dimension is exported as dynamic with upper bound ``max_batch`` (XNNPACK plans its
    buffers for the bound), so one program serves batch 1 and batch 32. ``int8=True`` quantizes
    with XNNPACK's quantizer (int8 symmetric per-channel weights, int8 per-tensor activations,
    calibrated by running ``calibration`` (N, 1, 28, 28) through the prepared graph) before lowering.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_positive_int(max_batch, "max_batch")
    if max_batch < 2:
        raise ValueError(f"max_batch must be >= 2 (a dynamic batch dimension), got {max_batch!r}")
    if int8 and calibration is None:
        raise ValueError("int8=True needs calibration images (N, 1, 28, 28)")
    with quiet_logs(), quiet_native_stderr():  # importing torchao reports optional GPU kernels it did not find
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

    path = Path(path)
    model = copy.deepcopy(model).eval()
    # The example has max_batch rows: with a smaller example, ExecuTorch 1.5.1 planned LeNet-5's input
    # buffer for fewer rows than the declared bound (15 for an example of 2) and refused batch 32.
    example = (torch.zeros(max_batch, 1, 28, 28),)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=max_batch)}}
    with warnings.catch_warnings(), quiet_logs():
        warnings.simplefilter("ignore")  # torch.export / torchao deprecation notices
        if int8:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            images = torch.from_numpy(_check_images(calibration, "calibration"))
            graph = torch.export.export(_Wrapped(model), example, dynamic_shapes=dynamic).module()
            quantizer = XNNPACKQuantizer()
            if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
                # The conv + batch-norm patterns trace a dozen small graphs (about 6 s of CPU per export)
                # and match nothing in a model without batch norm: skip them there.
                quantizer.SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if "_bn" not in p.name]
            quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
            prepared = prepare_pt2e(graph, quantizer)
            for start in range(0, len(images), max_batch):
                prepared(images[start : start + max_batch])
            model = convert_pt2e(prepared)
        program = torch.export.export(_Wrapped(model) if not int8 else model, example, dynamic_shapes=dynamic)
        with quiet_native_stderr():
            buffer = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
    path.write_bytes(buffer)
    return path


class _Wrapped(nn.Module):
    """A module whose forward argument is named ``x`` (the dynamic-shape spec refers to it by name)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


# ----------------------------------------------------------------------------- loading and running


@dataclass
class Deployed:
    """A model file opened in its runtime.

    ``run(images)`` maps float32 (N, 1, 28, 28) numpy images to float32 (N, 10) logits (numpy);
    ``bytes`` is the file's size on disk; ``load_ms`` the time to open it and make it ready to run
    (reading the file, building the session or program, the first call excluded).
    """

    runtime: str
    path: Path
    bytes: int
    load_ms: float
    run: Callable[[np.ndarray], np.ndarray]
    max_batch: int | None = None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.run(images)


def save_pytorch(model: nn.Module, path: str | Path) -> Path:
    """The model's state_dict for PyTorch eager (``torch.save``); loading it needs the model's code (see :func:`load`)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    path = Path(path)
    torch.save(model.state_dict(), path)
    return path


def load(runtime: str, path: str | Path, threads: int = 1, max_batch: int | None = None, module: nn.Module | None = None) -> Deployed:
    """Open the file at ``path`` in ``runtime`` (one of :data:`RUNTIMES`) with ``threads`` intra-op threads.

    PyTorch eager reads a state_dict written by :func:`save_pytorch` with ``weights_only=True`` into a
    copy of ``module`` (the same architecture: PyTorch ships code plus weights); onnxruntime builds an
    ``InferenceSession`` (the ``session.x64quantprecision`` option is not needed: :func:`quantize_onnx_int8`
    keeps weights in 7 bits); ExecuTorch loads the program and its ``forward`` method.
    For ExecuTorch, ``threads`` resizes XNNPACK's process-wide thread pool (it defaults to every core).
    ``max_batch`` records the largest batch the file accepts (for a ``.pte``, the bound it was exported with).
    """
    _check_runtime(runtime)
    _check_positive_int(threads, "threads")
    path = Path(path)
    if not path.exists():
        raise ValueError(f"path {path} does not exist")
    if runtime == "pytorch" and not isinstance(module, nn.Module):
        raise TypeError(f"runtime 'pytorch' needs module=, the nn.Module to load the state_dict into; got {type(module).__name__}")
    if runtime.startswith("et"):  # import (and size the thread pool) before the clock starts
        with quiet_logs(), quiet_native_stderr():
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime

            if portable_lib._threadpool_get_thread_count() != threads:  # one process-wide pool (an experimental API)
                portable_lib._unsafe_reset_threadpool(threads)
    start = time.perf_counter()
    if runtime == "pytorch":
        model = copy.deepcopy(module).eval()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

        def run(images: np.ndarray) -> np.ndarray:
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                with torch.inference_mode():
                    return model(torch.from_numpy(images)).numpy()
            finally:
                torch.set_num_threads(previous)

    elif runtime.startswith("ort"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run(images: np.ndarray) -> np.ndarray:
            return session.run(["logits"], {"images": images})[0]

    else:
        with quiet_native_stderr():
            method = Runtime.get().load_program(str(path)).load_method("forward")

        def run(images: np.ndarray) -> np.ndarray:
            return method.execute([torch.from_numpy(images)])[0].numpy()

    load_ms = (time.perf_counter() - start) * 1e3
    return Deployed(runtime=runtime, path=path, bytes=os.path.getsize(path), load_ms=load_ms, run=run, max_batch=max_batch)


def predict(deployed: Callable[[np.ndarray], np.ndarray], images: np.ndarray | torch.Tensor, batch: int = 32) -> np.ndarray:
    """Logits (N, 10) of ``deployed`` on ``images`` (N, 1, 28, 28), run in batches of ``batch`` (the last may be smaller)."""
    images = _check_images(images, "images")
    _check_positive_int(batch, "batch")
    return np.concatenate([np.asarray(deployed(np.ascontiguousarray(images[i : i + batch]))) for i in range(0, len(images), batch)])


# ----------------------------------------------------------------------------- verification


def agreement(logits: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """``(top-1 agreement, max |logit difference|)`` of ``logits`` (N, C) against ``reference`` (N, C).

    Top-1 agreement is the fraction of rows whose argmax (the first index on ties, as numpy's
    argmax) equals the reference's.
    """
    a = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    b = reference.detach().cpu().numpy() if isinstance(reference, torch.Tensor) else np.asarray(reference)
    if a.ndim != 2 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"logits and reference must be non-empty (N, C) arrays of the same shape, got {a.shape} and {b.shape}")
    top1 = float(np.mean(a.argmax(1) == b.argmax(1)))
    return top1, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def activation_bytes(model: nn.Module, batch: int = 1, bytes_per_value: int = 4) -> dict[str, int]:
    """An upper bound on the working memory of one forward pass at ``batch``, in bytes.

    ``{"input": ..., "largest": ..., "all": ...}``: the input tensor, the largest single
    intermediate output, and the sum of every leaf module's output, each at ``bytes_per_value``
    bytes per value (4 for fp32, 1 for int8). A runtime that frees nothing needs ``input + all``; one
    that reuses buffers needs at least ``input + largest`` (the input and output of one layer are
    alive together). Measured with forward hooks on the PyTorch model, not inside the runtime; an
    ``nn.Identity`` (e.g. a folded BatchNorm) is skipped, as its output is its input, and operations
    outside modules (``torch.cat``, ``x.mean()``) are not seen.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_positive_int(batch, "batch")
    if bytes_per_value not in (1, 2, 4):
        raise ValueError(f"bytes_per_value must be 1, 2 or 4, got {bytes_per_value!r}")
    sizes: list[int] = []
    leaves = [m for m in model.modules() if not list(m.children()) and not isinstance(m, nn.Identity)]
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel())) for m in leaves]
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(batch, 1, 28, 28))
    finally:
        for hook in hooks:
            hook.remove()
    values_in = batch * 28 * 28
    return {"input": values_in * bytes_per_value, "largest": max(sizes) * bytes_per_value, "all": sum(sizes) * bytes_per_value}


# ----------------------------------------------------------------------------- the device budget


@dataclass(frozen=True)
class Budget:
    """A device budget: flash (bytes of the model file), RAM (bytes), latency (ms at batch 1)."""

    flash_bytes: int
    ram_bytes: int
    latency_ms: float

    def __post_init__(self) -> None:
        for name in ("flash_bytes", "ram_bytes", "latency_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")


def meets_budget(rows: Sequence[Mapping], budget: Budget) -> list[bool]:
    """For each row (with ``bytes``, ``ram_bytes``, ``latency_ms``): does it fit ``budget`` (all three, <=)?"""
    if not isinstance(budget, Budget):
        raise TypeError(f"budget must be a Budget, got {type(budget).__name__}")
    fits = []
    for row in rows:
        missing = {"bytes", "ram_bytes", "latency_ms"} - set(row)
        if missing:
            raise ValueError(f"each row needs bytes, ram_bytes and latency_ms; {row.get('name', row)!r} lacks {sorted(missing)}")
        fits.append(row["bytes"] <= budget.flash_bytes and row["ram_bytes"] <= budget.ram_bytes and row["latency_ms"] <= budget.latency_ms)
    return fits


# ----------------------------------------------------------------------------- the course's models


def _cached(name: str, recipe: Mapping, skeleton: Callable[[], nn.Module], fit: Callable[[nn.Module], None]) -> nn.Module:
    """``skeleton()`` trained by ``fit`` once, its state_dict cached under a hash of ``recipe`` (loaded with weights_only)."""
    from . import cache_dir

    blob = json.dumps({"name": name, "recipe": recipe, "torch": torch.__version__.split("+")[0]}, sort_keys=True, default=str)
    folder = cache_dir() / "deploy"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.pt"
    model = skeleton()
    if path.exists():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError):  # truncated or foreign file: rebuild
            model = skeleton()
    with torch.random.fork_rng(devices=[]):
        fit(model)
    tmp = path.with_suffix(f".{os.getpid()}.part")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return model.eval()


def _fine_tune(model: nn.Module, epochs: int, lr: float, seed: int, cosine: bool) -> None:
    from .data import make_loaders
    from .train import train

    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs) if cosine else None
    train(model, make_loaders(batch_size=64, seed=seed)[0], epochs, optimizer=optimizer, scheduler=schedule, progress=False)


PRUNED_WIDTHS = (10, 20, 200)  # chapter 02's choice on validation: conv1 50%, conv2 40%, fc1 40% of the channels kept


def pruned_lenet5() -> nn.Module:
    """Chapter 02's best: LeNet-5 filter-pruned to 10/20/200 channels (highest L1 norm), fine-tuned 8 epochs (lr 0.01, cosine)."""
    from . import pruning as P
    from .models import LeNet5
    from .train import pretrained

    base = pretrained("lenet5", progress=False)

    def fit(model: nn.Module) -> None:
        model.load_state_dict(P.shrink_lenet5(base, *PRUNED_WIDTHS).state_dict())
        _fine_tune(model, 8, 0.01, 0, cosine=True)

    recipe = {"widths": PRUNED_WIDTHS, "epochs": 8, "lr": 0.01, "seed": 0, "base": "lenet5"}
    return _cached("pruned-lenet5", recipe, lambda: LeNet5(channels=PRUNED_WIDTHS[:2], hidden=PRUNED_WIDTHS[2]), fit)


def distilled_cnn() -> nn.Module:
    """Chapter 07's small CNN student: LeNet-5 with 4/8 channels and 32 hidden units, distilled from LeNet-5 (T=4, alpha=0.9)."""
    from . import distillation as D
    from .data import load_mnist
    from .models import LeNet5
    from .train import pretrained

    def fit(model: nn.Module) -> None:
        teacher = pretrained("lenet5", progress=False)
        x_train, y_train, _, _ = load_mnist()
        with torch.inference_mode():
            logits = teacher(x_train)
        torch.manual_seed(0)
        model.load_state_dict(LeNet5(channels=(4, 8), hidden=32).state_dict())  # the student's seed-0 initial weights
        D.distill(model, x_train, y_train, logits.clone(), 10, T=4.0, alpha=0.9, seed=0)

    recipe = {"student": [4, 8, 32], "teacher": "lenet5", "T": 4.0, "alpha": 0.9, "epochs": 10, "seed": 0}
    return _cached("distilled-cnn", recipe, lambda: LeNet5(channels=(4, 8), hidden=32), fit)


LOWRANK_ENERGY = 0.8  # chapter 08's energy level: ranks of fc1 and fc2 keep 80% of their squared singular values


def lowrank_lenet300() -> nn.Module:
    """Chapter 08's best: LeNet-300-100 with fc1 and fc2 factorized at 80% energy (truncated SVD), fine-tuned 3 epochs (lr 0.01)."""
    from . import lowrank as L
    from .models import LeNet300
    from .train import pretrained

    base = pretrained("lenet300", progress=False)
    ranks = tuple(
        L.rank_for_energy(np.linalg.svd(getattr(base, n).weight.detach().numpy(), compute_uv=False), LOWRANK_ENERGY) for n in ("fc1", "fc2")
    )

    def skeleton() -> nn.Module:
        model = LeNet300()
        model.fc1 = nn.Sequential(nn.Linear(784, ranks[0], bias=False), nn.Linear(ranks[0], 300))
        model.fc2 = nn.Sequential(nn.Linear(300, ranks[1], bias=False), nn.Linear(ranks[1], 100))
        return model

    def fit(model: nn.Module) -> None:
        start = copy.deepcopy(base)
        start.fc1, start.fc2 = L.factorize_linear(base.fc1, ranks[0]), L.factorize_linear(base.fc2, ranks[1])
        model.load_state_dict(start.state_dict())
        _fine_tune(model, 3, 0.01, 0, cosine=False)

    recipe = {"energy": LOWRANK_ENERGY, "ranks": ranks, "epochs": 3, "lr": 0.01, "seed": 0, "base": "lenet300"}
    return _cached("lowrank-lenet300", recipe, skeleton, fit)


def compact_mobilenet() -> nn.Module:
    """Chapter 09's compact net: ``MobileNetMNIST(width=1.0)``, the more accurate of the chapter's two on validation,
    trained by the fixed recipe ``RECIPES["mobilenet"]``, with every BatchNorm folded into the conv before it.

    Folding (:func:`helpers.architectures.fold_batchnorm`) is what a deployment does anyway: inference uses the running
    statistics, so each BatchNorm is a per-channel scale and shift that the conv can absorb; the outputs are unchanged up
    to float rounding, and every runtime gets a model of plain convolutions (no batch-norm operators to export, fuse or
    quantize).
    """
    from .architectures import fold_batchnorm
    from .train import pretrained

    return fold_batchnorm(pretrained("mobilenet", progress=False))


DEEP_COMPRESSION = {
    "sparsity": 0.92,
    "caps": {"fc3": 0.7},
    "steps": (0.5, 0.75, 0.88),
    "epochs": 2,
    "final_epochs": 6,
    "lr": 0.02,
    "bits": 5,
}
"""Chapter 06's Deep Compression recipe for LeNet-300-100, with the sparsity and bit width it chose on validation."""


def deep_compressed_lenet300() -> nn.Module:
    """Chapter 06's Deep Compression LeNet-300-100, its layers :class:`helpers.encoding.SharedLayer` s.

    Magnitude pruning in steps (50, 75, 88 %, then 92 %; fc3 at most 70 %) with 2 epochs of SGD (lr 0.02) after each
    step and 6 (cosine) after the last, then per-layer 5-bit k-means sharing (31 centroids + the zero, linear start)
    with the centroids fine-tuned 2 epochs (lr 1e-4): the recipe and choice of chapter 06's lecture, seed 0. Write its
    file with ``helpers.encoding.save_model(model, path, "lenet300")`` (Huffman-coded codes and relative indices);
    ``helpers.encoding.load_model`` decodes the file into a plain float LeNet-300-100.
    """
    from . import encoding as E
    from . import pruning as P
    from .data import make_loaders
    from .models import LeNet300
    from .train import pretrained, train

    recipe = DEEP_COMPRESSION
    base = pretrained("lenet300", progress=False)

    def fit(model: nn.Module) -> None:
        pruned = copy.deepcopy(base)
        torch.manual_seed(0)
        loader = make_loaders(batch_size=64, seed=0)[0]
        for sparsity in [s for s in recipe["steps"] if s < recipe["sparsity"]] + [recipe["sparsity"]]:
            masks = {
                n: P.magnitude_mask(w.detach(), min(sparsity, recipe["caps"].get(n, 1.0))) for n, w in P.prunable_weights(pruned).items()
            }
            P.apply_masks(pruned, masks)
            last = sparsity == recipe["sparsity"]
            optimizer = torch.optim.SGD(pruned.parameters(), lr=recipe["lr"], momentum=0.9)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe["final_epochs"]) if last else None
            epochs = recipe["final_epochs"] if last else recipe["epochs"]
            train(pruned, loader, epochs, optimizer=optimizer, on_step=P.keep_masks(masks), progress=False, scheduler=schedule)
        shared = E.share_model(pruned, recipe["bits"], init="linear")
        torch.manual_seed(0)
        optimizer = torch.optim.SGD(shared.parameters(), lr=1e-4, momentum=0.9)
        train(shared, make_loaders(batch_size=64, seed=0)[0], 2, optimizer=optimizer, progress=False)
        model.load_state_dict(shared.state_dict())

    def skeleton() -> nn.Module:
        return E.share_model(LeNet300(), recipe["bits"], init="linear", iters=1)  # the structure only; fit / the cache fill it

    return _cached(
        "deep-compression-lenet300", {**recipe, "base": "lenet300", "seed": 0, "share_epochs": 2, "share_lr": 1e-4}, skeleton, fit
    )


def dense_lenet5() -> nn.Module:
    """The course's LeNet-5 baseline (chapter 00), the reference for the compressed ones."""
    from .train import pretrained

    return pretrained("lenet5", progress=False)


def dense_lenet300() -> nn.Module:
    """The course's LeNet-300-100 baseline (chapter 00), the reference for the low-rank one."""
    from .train import pretrained

    return pretrained("lenet300", progress=False)


@dataclass(frozen=True)
class CourseModel:
    """One model of the course to deploy: ``build()`` returns it as a float PyTorch module (eval mode, CPU).

    Every runtime starts from that module: int8 is applied by each runtime's own quantizer, so a
    chapter's float model gets the same int8 treatment as the others.
    """

    chapter: str
    technique: str
    build: Callable[[], nn.Module]


COURSE_MODELS: dict[str, CourseModel] = {
    "dense LeNet-5": CourseModel("00", "baseline", dense_lenet5),
    "dense LeNet-300-100": CourseModel("00", "baseline", dense_lenet300),
    "pruned LeNet-5": CourseModel("02", "filter pruning, fine-tuned", pruned_lenet5),
    "distilled CNN": CourseModel("07", "response distillation from LeNet-5", distilled_cnn),
    "low-rank LeNet-300-100": CourseModel("08", "truncated SVD of fc1, fc2, fine-tuned", lowrank_lenet300),
    "compact MobileNet": CourseModel("09", "depthwise-separable convs, BN folded", compact_mobilenet),
}
"""name -> :class:`CourseModel`. A chapter adds its best model with one entry (a builder returning a float module)."""


def pytorch_bytes(model: nn.Module) -> int:
    """Bytes of the model's state_dict as ``torch.save`` writes it (what a PyTorch deployment ships besides code)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


__all__ = [
    "COURSE_MODELS",
    "DEEP_COMPRESSION",
    "RUNTIMES",
    "Budget",
    "CourseModel",
    "Deployed",
    "activation_bytes",
    "agreement",
    "compact_mobilenet",
    "deep_compressed_lenet300",
    "export_onnx",
    "export_pte",
    "load",
    "meets_budget",
    "predict",
    "pytorch_bytes",
    "quantize_onnx_int8",
    "quiet_logs",
    "quiet_native_stderr",
    "save_pytorch",
]
