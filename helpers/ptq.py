"""Post-training quantization of the course's sequential models, and three ways to run the result.

:func:`ptq` turns a float LeNet-300-100 or LeNet-5 into an :class:`Int8Model`: weights int8
per-channel symmetric, activations int8 per-tensor asymmetric (calibrated on a few hundred images),
biases int32 with scale ``s_x * s_w``, fixed-point requantization multipliers per output channel.
The same :class:`Int8Model` runs as

- :meth:`Int8Model.fake_quant` - float simulation in PyTorch (quantize-dequantize at every boundary);
- :meth:`Int8Model.run_integer` - integer-only numpy (im2col convolutions, int32 accumulators);
- :meth:`Int8Model.to_onnx` - an ONNX graph of QuantizeLinear / QLinearConv / MaxPool that
  onnxruntime executes with its own int8 kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import quantization as Q


@dataclass
class QLayer:
    """One quantized Linear or Conv2d layer (ReLU fused when ``relu``)."""

    kind: str  # "linear" or "conv"
    q_w: np.ndarray  # int8 values, shape (out, in) or (out, in, k, k)
    w_scales: np.ndarray  # (out,) float
    bias_q: np.ndarray  # (out,) int32, scale s_x * s_w
    in_qparams: tuple[float, int]
    out_qparams: tuple[float, int]
    m0: np.ndarray = field(repr=False)  # (out,) int
    shift: np.ndarray = field(repr=False)  # (out,) int
    relu: bool = False


Op = tuple  # ("layer", QLayer) | ("pool", 2) | ("flatten",)


def lenet_ops(model: nn.Module) -> list[tuple]:
    """The float op sequence of a LeNet-300-100 or LeNet-5: ("linear"|"conv", module, relu) / ("pool", k) / ("flatten",)."""
    from .models import LeNet5, LeNet300

    if isinstance(model, LeNet300):
        return [("flatten",), ("linear", model.fc1, True), ("linear", model.fc2, True), ("linear", model.fc3, False)]
    if isinstance(model, LeNet5):
        return [
            ("conv", model.conv1, False),
            ("pool", 2),
            ("conv", model.conv2, False),
            ("pool", 2),
            ("flatten",),
            ("linear", model.fc1, True),
            ("linear", model.fc2, False),
        ]
    raise TypeError(f"model must be a LeNet300 or LeNet5, got {type(model).__name__}")


@torch.no_grad()
def calibrate(model: nn.Module, x_calib: torch.Tensor, method: str = "minmax", percentile: float = 99.99) -> list[tuple[float, float]]:
    """Ranges (min, max) of the input and of every layer's output (after its fused ReLU), in op order.

    ``method``: "minmax" or "percentile".
    """
    if method not in ("minmax", "percentile"):
        raise ValueError(f"method must be 'minmax' or 'percentile', got {method!r}")
    measure = Q.minmax_range if method == "minmax" else (lambda t: Q.percentile_range(t, percentile))
    model.eval()
    h = x_calib
    ranges = [measure(h)]
    for op in lenet_ops(model):
        if op[0] == "flatten":
            h = h.flatten(1)
        elif op[0] == "pool":
            h = F.max_pool2d(h, op[1])
        else:
            h = op[1](h)
            if op[2]:
                h = torch.relu(h)
            ranges.append(measure(h))
    return ranges


def ptq(
    model: nn.Module,
    x_calib: torch.Tensor,
    method: str = "minmax",
    bits: int = 8,
    act_signed: bool = False,
    reduce_range: bool = False,
) -> Int8Model:
    """Quantize a trained LeNet: per-channel symmetric int8 weights, per-tensor asymmetric activations.

    Activations are uint8 by default (``act_signed=False``): x86 int8 kernels (VNNI) multiply
    unsigned 8-bit activations by signed 8-bit weights, so that is the fast path in onnxruntime.
    ``reduce_range=True`` quantizes the weights to ``bits - 1`` bits (7-bit codes in [-63, 63],
    still stored as int8), as onnxruntime's quantizer does with ``reduce_range=True``: then a pair
    of uint8 x int8 products fits in int16 (2 * 255 * 64 < 32767) and x86 kernels without VNNI
    cannot saturate (see :func:`u8s8_saturating_matmul`), at the price of half the weight levels.
    (PyTorch's x86/fbgemm default qconfig applies its ``reduce_range=True`` to the activation
    observer instead: uint8 activations in [0, 127] with full int8 per-channel weights, so that
    2 * 127 * 128 < 32767; see ``get_default_qconfig`` in ``torch/ao/quantization/qconfig.py``.)
    """
    if not isinstance(reduce_range, bool):
        raise TypeError(f"reduce_range must be a bool, got {type(reduce_range).__name__}")
    if reduce_range and bits < 3:
        raise ValueError(f"reduce_range needs bits >= 3 (weights get bits - 1), got bits={bits}")
    ranges = calibrate(model, x_calib, method)
    w_bits = bits - 1 if reduce_range else bits
    act = [Q.qparams(lo, hi, bits, symmetric=False, signed=act_signed) for lo, hi in ranges]
    ops: list[Op] = []
    layer_index = 0
    for op in lenet_ops(model):
        if op[0] in ("flatten", "pool"):
            ops.append(op)
            continue
        kind, module, relu = op
        w = module.weight.detach().numpy().astype(np.float64)
        w_scales, _ = Q.qparams_per_channel(w, axis=0, bits=w_bits, symmetric=True, signed=True)
        q_w = Q.quantize_per_channel(w, w_scales, np.zeros_like(w_scales, dtype=np.int64), axis=0, bits=w_bits).astype(np.int8)
        s_in, zp_in = act[layer_index]
        s_out, zp_out = act[layer_index + 1]
        bias_scale = s_in * w_scales
        bias_q = np.round(module.bias.detach().numpy() / bias_scale).astype(np.int64)
        multipliers = [Q.quantize_multiplier(s_in * s_w / s_out) for s_w in w_scales]
        ops.append(
            (
                "layer",
                QLayer(
                    kind=kind,
                    q_w=q_w,
                    w_scales=w_scales,
                    bias_q=bias_q.astype(np.int32),
                    in_qparams=(s_in, zp_in),
                    out_qparams=(s_out, zp_out),
                    m0=np.array([m for m, _ in multipliers], dtype=np.int64),
                    shift=np.array([s for _, s in multipliers], dtype=np.int64),
                    relu=relu,
                ),
            )
        )
        layer_index += 1
    return Int8Model(ops=ops, input_qparams=act[0], bits=bits, act_signed=act_signed, weight_bits=w_bits)


def u8s8_saturating_matmul(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``a @ w.T`` as an x86 uint8 x int8 kernel without VNNI computes it: (N, K) x (M, K) -> (N, M) int64.

    AVX2 and AVX-512BW have no instruction that adds uint8 x int8 products straight into int32.
    Their kernels use ``vpmaddubsw``, which multiplies bytes and adds each pair of adjacent products
    (k, k + 1) into an int16 **with saturation** at [-32768, 32767], then ``vpmaddwd`` (by ones)
    adds those int16 pair sums into int32 exactly. One pair can reach 2 * 255 * 127 = 64770, twice
    what int16 holds, so large activations next to large weights of the same sign get clipped.
    VNNI (``vpdpbusd``, AVX-512 VNNI / AVX-VNNI) and ARM's dot-product instructions accumulate in
    int32: exact (``sdot``/``udot`` take operands of one signedness, so uint8 x int8 runs as ``usdot``
    where the CPU has I8MM, or after a zero-point shift to int8 x int8).

    ``a`` holds the raw unsigned codes in [0, 255] (zero point not subtracted: kernels subtract it
    afterwards with row/column sums), ``w`` the signed codes in [-128, 127]. An odd K is padded with
    a zero product.
    """
    a = np.asarray(a)
    w = np.asarray(w)
    if a.dtype.kind not in "iu" or w.dtype.kind not in "iu":
        raise TypeError(f"a and w must be integer arrays, got {a.dtype} and {w.dtype}")
    if a.ndim != 2 or w.ndim != 2 or a.shape[1] != w.shape[1]:
        raise ValueError(f"a (N, K) and w (M, K) must share K, got {a.shape} and {w.shape}")
    if a.size and (a.min() < 0 or a.max() > 255):
        raise ValueError(f"a must hold uint8 values in [0, 255], got [{a.min()}, {a.max()}]")
    if w.size and (w.min() < -128 or w.max() > 127):
        raise ValueError(f"w must hold int8 values in [-128, 127], got [{w.min()}, {w.max()}]")
    a = a.astype(np.int64)
    w = w.astype(np.int64)
    if a.shape[1] % 2:
        a = np.pad(a, ((0, 0), (0, 1)))
        w = np.pad(w, ((0, 0), (0, 1)))
    out = Q.int_matmul(a, w)  # the exact sum; then correct the pairs that saturate
    w_even, w_odd = w[:, 0::2], w[:, 1::2]
    # A pair can leave int16 only if 255 * (|w_k| + |w_k+1|) > 32767: few weight pairs qualify.
    rows, cols = np.nonzero(255 * (np.abs(w_even) + np.abs(w_odd)) > 32767)
    if len(rows):
        a_even_t = np.ascontiguousarray(a[:, 0::2].T, dtype=np.int32)  # (K/2, N): one row per pair position
        a_odd_t = np.ascontiguousarray(a[:, 1::2].T, dtype=np.int32)
        chunk = max(1, 8_000_000 // a.shape[0])
        for i in range(0, len(rows), chunk):
            m, j = rows[i : i + chunk], cols[i : i + chunk]
            pairs = a_even_t[j] * w_even[m, j, None].astype(np.int32) + a_odd_t[j] * w_odd[m, j, None].astype(np.int32)
            correction = np.clip(pairs, -32768, 32767) - pairs  # (pairs, N), nonzero where a pair saturates
            starts = np.flatnonzero(np.r_[True, m[1:] != m[:-1]])  # m is sorted: one segment per output
            out[:, m[starts]] += np.add.reduceat(correction, starts, axis=0).T
    return out


@dataclass
class Int8Model:
    """A quantized sequential model (see :func:`ptq`)."""

    ops: list[Op]
    input_qparams: tuple[float, int]
    bits: int = 8
    act_signed: bool = False
    weight_bits: int = 8

    @property
    def layers(self) -> list[QLayer]:
        return [op[1] for op in self.ops if op[0] == "layer"]

    @property
    def output_qparams(self) -> tuple[float, int]:
        return self.layers[-1].out_qparams

    # -- float simulation ---------------------------------------------------------------

    @torch.no_grad()
    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        """Float logits of the fake-quantized model (every tensor snapped to its integer grid)."""
        s, zp = self.input_qparams
        h = Q.fake_quantize(x.double(), s, zp, self.bits, self.act_signed).double()
        for op in self.ops:
            if op[0] == "flatten":
                h = h.flatten(1)
            elif op[0] == "pool":
                h = F.max_pool2d(h, op[1])
            else:
                layer = op[1]
                w = torch.from_numpy(layer.q_w.astype(np.float64) * layer.w_scales.reshape(-1, *([1] * (layer.q_w.ndim - 1))))
                b = torch.from_numpy(layer.bias_q.astype(np.float64) * layer.in_qparams[0] * layer.w_scales)
                h = F.linear(h, w, b) if layer.kind == "linear" else F.conv2d(h, w, b)
                if layer.relu:
                    h = torch.relu(h)
                h = Q.fake_quantize(h, *layer.out_qparams, self.bits, self.act_signed).double()
        return h.float()  # dequantized logits

    # -- integer-only numpy ---------------------------------------------------------------

    def quantize_input(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """The only float step at the input: images -> int8 with the calibrated input qparams."""
        a = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        return Q.quantize(a.astype(np.float64), *self.input_qparams, self.bits, self.act_signed)

    def run_integer(self, x: torch.Tensor | np.ndarray, batch_size: int = 250, kernel: str = "exact") -> np.ndarray:
        """Integer logits (int64 array holding 8-bit values) computed with integer arithmetic only.

        ``kernel="exact"`` accumulates every product exactly (int32), as VNNI (``vpdpbusd``), ARM
        and onnxruntime's U8U8 kernels do. ``kernel="u8s8_int16"`` reproduces x86 uint8 x int8
        kernels without VNNI (AVX2, AVX-512BW: ``vpmaddubsw``), which add each pair of adjacent
        products in a saturating int16 (see :func:`u8s8_saturating_matmul`); convolutions pair
        adjacent input channels at the same kernel position, as onnxruntime's NHWC kernels do.
        """
        if kernel not in ("exact", "u8s8_int16"):
            raise ValueError(f"kernel must be 'exact' or 'u8s8_int16', got {kernel!r}")
        if kernel == "u8s8_int16" and self.act_signed:
            raise ValueError("kernel='u8s8_int16' models uint8 activations; this model has act_signed=True")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        q_all = self.quantize_input(x)
        outputs = [self._integer_forward(q_all[i : i + batch_size], kernel) for i in range(0, len(q_all), batch_size)]
        return np.concatenate(outputs)

    def _integer_forward(self, q: np.ndarray, kernel: str = "exact") -> np.ndarray:
        for op in self.ops:
            if op[0] == "flatten":
                q = q.reshape(len(q), -1)
            elif op[0] == "pool":
                k = op[1]
                n, c, h, w = q.shape
                q = q[:, :, : h - h % k, : w - w % k].reshape(n, c, h // k, k, w // k, k).max(axis=(3, 5))
            else:
                layer = op[1]
                zp_x = layer.in_qparams[1]
                zp_y = layer.out_qparams[1]
                # Convolution patches in (kernel row, kernel col, channel) order, as onnxruntime's NHWC
                # im2col lays them out: the exact sum does not depend on the order, but the pairs
                # (k, k + 1) of the saturating x86 kernel do (checked on an emulated AVX2 CPU: tests/test_ptq.py).
                matmul = u8s8_saturating_matmul if kernel == "u8s8_int16" else None
                if layer.kind == "linear":
                    cols, w2 = q, layer.q_w
                else:
                    n, c, h, w = q.shape
                    f, _, k, _ = layer.q_w.shape
                    cols = Q.im2col(q, k).reshape(-1, c, k, k).transpose(0, 2, 3, 1).reshape(-1, k * k * c)
                    w2 = layer.q_w.transpose(0, 2, 3, 1).reshape(f, -1)
                q = Q.quantized_linear(cols, zp_x, w2, 0, layer.bias_q, layer.m0, layer.shift, zp_y, self.bits, self.act_signed, matmul)
                if layer.kind == "conv":
                    q = q.reshape(n, h - k + 1, w - k + 1, f).transpose(0, 3, 1, 2)
                # a fused ReLU is the clamp at the zero point of a range that starts at 0
                if layer.relu:
                    q = np.maximum(q, zp_y)
        return q

    def dequantize_output(self, q: np.ndarray) -> np.ndarray:
        return Q.dequantize(q, *self.output_qparams)

    # -- ONNX / onnxruntime ---------------------------------------------------------------

    def to_onnx(self, batch: int | None = None) -> bytes:
        """Serialized ONNX model (opset 13): float images in, 8-bit logits ("q_logits") and float logits out.

        Linear layers run as 1x1 QLinearConv on a (1, features, batch, 1) layout, so a whole batch
        is one integer matrix product.
        """
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        nodes, inits = [], []

        def const(name: str, array: np.ndarray) -> str:
            inits.append(numpy_helper.from_array(np.asarray(array), name))
            return name

        s_in, zp_in = self.input_qparams
        const("x_scale", np.array(s_in, dtype=np.float32))
        act_dtype = np.int8 if self.act_signed else np.uint8
        const("x_zp", np.array(zp_in, dtype=act_dtype))
        nodes.append(helper.make_node("QuantizeLinear", ["images", "x_scale", "x_zp"], ["q0"]))
        current, scale_name, zp_name = "q0", "x_scale", "x_zp"
        layout = "nchw"
        for i, op in enumerate(self.ops):
            if op[0] == "pool":
                nodes.append(helper.make_node("MaxPool", [current], [f"pool{i}"], kernel_shape=[op[1], op[1]], strides=[op[1], op[1]]))
                current = f"pool{i}"
            elif op[0] == "flatten":
                nodes.append(helper.make_node("Flatten", [current], [f"flat{i}"], axis=1))
                nodes.append(helper.make_node("Transpose", [f"flat{i}"], [f"flatT{i}"], perm=[1, 0]))
                # (features, N) -> (1, features, N, 1)
                nodes.append(helper.make_node("Unsqueeze", [f"flatT{i}", const(f"axes{i}", np.array([0, 3], dtype=np.int64))], [f"col{i}"]))
                current, layout = f"col{i}", "features_by_batch"
            else:
                layer = op[1]
                w = layer.q_w if layer.kind == "conv" else layer.q_w[:, :, None, None]
                s_out, zp_out = layer.out_qparams
                const(f"w{i}", w.astype(np.int8))
                const(f"ws{i}", layer.w_scales.astype(np.float32))
                const(f"wzp{i}", np.zeros(len(layer.w_scales), dtype=np.int8))
                const(f"ys{i}", np.array(s_out, dtype=np.float32))
                const(f"yzp{i}", np.array(zp_out, dtype=act_dtype))
                const(f"b{i}", layer.bias_q.astype(np.int32))
                nodes.append(
                    helper.make_node(
                        "QLinearConv",
                        [current, scale_name, zp_name, f"w{i}", f"ws{i}", f"wzp{i}", f"ys{i}", f"yzp{i}", f"b{i}"],
                        [f"y{i}"],
                    )
                )
                current, scale_name, zp_name = f"y{i}", f"ys{i}", f"yzp{i}"
                if layer.relu:  # clamp at the zero point: ReLU on the integer grid
                    nodes.append(helper.make_node("Max", [current, zp_name], [f"relu{i}"]))
                    current = f"relu{i}"
        if layout == "features_by_batch":  # (1, classes, N, 1) -> (N, classes)
            nodes.append(helper.make_node("Squeeze", [current, const("sq_axes", np.array([0, 3], dtype=np.int64))], ["logitsT"]))
            nodes.append(helper.make_node("Transpose", ["logitsT"], ["q_logits"], perm=[1, 0]))
        else:
            nodes.append(helper.make_node("Identity", [current], ["q_logits"]))
        nodes.append(helper.make_node("DequantizeLinear", ["q_logits", scale_name, zp_name], ["logits"]))
        graph = helper.make_graph(
            nodes,
            "int8_lenet",
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 1, 28, 28])],
            [
                helper.make_tensor_value_info("q_logits", TensorProto.INT8 if self.act_signed else TensorProto.UINT8, [batch, 10]),
                helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10]),
            ],
            initializer=inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="compression-course")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model.SerializeToString()

    def onnx_session(self, threads: int | None = None, precise: bool = True) -> Callable[[np.ndarray], np.ndarray]:
        """An onnxruntime session wrapped as ``f(images float32 (N,1,28,28)) -> 8-bit logits (N, 10)``.

        ``precise=True`` (the default) turns on onnxruntime's exact path for 8-bit weights (see
        :func:`ort_session_options`): the logits then agree with :meth:`run_integer` within 1 LSB, also
        on x86 without VNNI (checked natively and on an emulated AVX2 CPU: tests/test_ptq.py), at a
        speed cost for 8-bit weights. ``precise=False`` gives the runtime's plain behaviour:
        exact on VNNI and ARM, but on x86 without VNNI (AVX2) tens of LSB off for these LeNets (see
        :func:`u8s8_saturating_matmul`) unless the model has 7-bit weights (``reduce_range=True``),
        which are exact and fast everywhere.
        """
        import onnxruntime as ort

        options = ort_session_options(threads, precise=precise and not self.act_signed)
        session = ort.InferenceSession(self.to_onnx(), options, providers=["CPUExecutionProvider"])

        def run(images: np.ndarray) -> np.ndarray:
            return session.run(["q_logits"], {"images": np.ascontiguousarray(images, dtype=np.float32)})[0]

        return run


ORT_PRECISION_OPTION = "session.x64quantprecision"  # onnxruntime's kOrtSessionOptionsAvx2PrecisionMode


def ort_session_options(threads: int | None = None, precise: bool = True):  # -> onnxruntime.SessionOptions
    """onnxruntime session options: ``threads`` intra-op threads (None: the runtime's default), and the
    ``session.x64quantprecision`` option when ``precise``.

    The option exists for x86 CPUs whose uint8 x int8 kernel adds product pairs in a saturating int16
    (SSE4.1, AVX2, AVX-512 without VNNI): onnxruntime rewrites every int8 weight tensor with a value
    outside [-64, 64] to uint8 (w + 128, zero point 128) and runs its U8U8 kernel, which is exact.
    A 7-bit weight tensor (``ptq(..., reduce_range=True)``) cannot saturate and is left as it is.
    Cost, measured with onnxruntime 1.32 on an AVX-512 VNNI CPU (where the plain kernel is already
    exact), 1 thread, batch 256: the rewrite still happens there and LeNet-300-100's int8 latency
    grows 3.4x (0.26 -> 0.88 ms; 8-bit weights), LeNet-5's about 1.1x; with 7-bit weights nothing changes.
    Use it only for uint8-activation graphs: onnxruntime 1.32 fails to load int8-activation
    QLinearConv graphs with it (and int8 x int8 is exact on x86, though without a fast kernel).
    """
    import onnxruntime as ort

    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    options = ort.SessionOptions()
    if precise:
        options.add_session_config_entry(ORT_PRECISION_OPTION, "1")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def fp32_onnx(model: nn.Module) -> bytes:
    """The float model as ONNX (for a same-runtime fp32 vs int8 comparison), built from its weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    current = "images"
    for i, op in enumerate(lenet_ops(model)):
        if op[0] == "pool":
            nodes.append(helper.make_node("MaxPool", [current], [f"p{i}"], kernel_shape=[op[1]] * 2, strides=[op[1]] * 2))
            current = f"p{i}"
        elif op[0] == "flatten":
            nodes.append(helper.make_node("Flatten", [current], [f"f{i}"], axis=1))
            current = f"f{i}"
        else:
            kind, module, relu = op
            inits.append(numpy_helper.from_array(module.weight.detach().numpy(), f"w{i}"))
            inits.append(numpy_helper.from_array(module.bias.detach().numpy(), f"b{i}"))
            if kind == "conv":
                nodes.append(helper.make_node("Conv", [current, f"w{i}", f"b{i}"], [f"y{i}"]))
            else:
                nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [f"y{i}"], transB=1))
            current = f"y{i}"
            if relu:
                nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
                current = f"r{i}"
    nodes.append(helper.make_node("Identity", [current], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "fp32_lenet",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])],
        initializer=inits,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model)
    return onnx_model.SerializeToString()
