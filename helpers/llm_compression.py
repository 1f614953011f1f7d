"""Compression methods used on today's large language models, at the scale of a tiny one (chapter 12).

Weight-only quantization: round-to-nearest with groups (RTN), GPTQ (Frantar et al. 2023), AWQ (Lin
et al. 2024). Weight + activation int8: SmoothQuant (Xiao et al. 2023). Pruning: magnitude, Wanda
(Sun et al. 2024), SparseGPT-lite (Frantar & Alistarh 2023), unstructured and N:M. Low-rank: LoRA
(Hu et al. 2022). Conventions: a weight ``w`` is (out, in) as in ``nn.Linear``; calibration inputs
``x`` are (tokens, in); the Hessian proxy is ``H = x^T x / tokens`` (in, in).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

# ----------------------------------------------------------------------------- validation


def _weight(w: torch.Tensor, name: str = "w") -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if w.ndim != 2 or w.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 2-d (out, in) tensor, got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {w.dtype}")
    return w


def _bits(bits: int) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in 2..8, got {bits!r}")
    return bits


def _group(group_size: int, columns: int) -> int:
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1 or columns % group_size:
        raise ValueError(f"group_size must be a positive divisor of in = {columns}, got {group_size!r}")
    return group_size


def _sparsity(sparsity: float) -> float:
    if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def _hessian(H: torch.Tensor, columns: int) -> torch.Tensor:
    if not isinstance(H, torch.Tensor) or H.shape != (columns, columns):
        raise ValueError(f"H must be a ({columns}, {columns}) tensor, got {getattr(H, 'shape', type(H).__name__)}")
    return H


# ----------------------------------------------------------------------------- round to nearest with groups


def group_qparams(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min-max parameters per row of ``w`` (rows, g): ``scale = (max - min) / (2**bits - 1)``
    and ``zero = round(-min / scale)``, each (rows, 1). The range always contains 0; an all-zero row gets scale 1."""
    levels = 2 ** _bits(bits) - 1
    lo = w.min(dim=1, keepdim=True).values.clamp(max=0)
    hi = w.max(dim=1, keepdim=True).values.clamp(min=0)
    scale = (hi - lo) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-lo / scale)
    return scale, zero


def quantize_with(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Fake-quantize: ``(clamp(round(w / scale) + zero, 0, 2**bits - 1) - zero) * scale`` (round half to even)."""
    q = torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)
    return (q - zero) * scale


def quantize_codes(w: torch.Tensor, bits: int = 4, group_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RTN codes of ``w`` (out, in) with one (scale, zero) per ``group_size`` consecutive inputs of a row:
    codes uint8 (out, in) in 0..2**bits - 1, scales float32 (out, in / g), zeros uint8 (out, in / g)."""
    w = _weight(w)
    _bits(bits)
    g = _group(group_size, w.shape[1])
    out, cols = w.shape
    groups = w.detach().float().reshape(out * cols // g, g)
    scale, zero = group_qparams(groups, bits)
    codes = torch.clamp(torch.round(groups / scale) + zero, 0, 2**bits - 1)
    return codes.reshape(out, cols).to(torch.uint8), scale.reshape(out, -1), zero.reshape(out, -1).to(torch.uint8)


def dequantize_codes(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """The float32 weight back from :func:`quantize_codes`."""
    out, n_groups = scales.shape
    q = codes.float().reshape(out, n_groups, -1)
    return ((q - zeros.float()[..., None]) * scales[..., None]).reshape(codes.shape)


def quantize_rtn(w: torch.Tensor, bits: int = 4, group_size: int = 32) -> torch.Tensor:
    """Round-to-nearest group-wise fake quantization of ``w`` (out, in): same shape and dtype, on the grid."""
    return dequantize_codes(*quantize_codes(w, bits, group_size)).to(w.dtype)


def pack_bits(codes: torch.Tensor | np.ndarray, bits: int) -> bytes:
    """``bits``-bit unsigned codes packed densely, ``ceil(n * bits / 8)`` bytes (bit planes little-endian per code)."""
    _bits(bits)
    flat = np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes, dtype=np.int64).ravel()
    if flat.size and (flat.min() < 0 or flat.max() >= 2**bits):
        raise ValueError(f"codes must lie in 0..{2**bits - 1}")
    planes = ((flat[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return np.packbits(planes.ravel(), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` codes as uint8."""
    planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: count * bits].reshape(count, bits)
    return (planes.astype(np.int64) << np.arange(bits)).sum(axis=1).astype(np.uint8)


def save_quantized(model: nn.Module, quantized: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], bits: int) -> bytes:
    """Serialize ``model`` with the linear layers named in ``quantized`` stored as their packed
    ``bits``-bit codes, float16 scales and packed zero points, ``{name: (codes, scales, zeros)}`` as
    returned by :func:`quantize_codes` or ``gptq_quantize(..., return_codes=True)``; everything else
    float32. Returns the real bytes of the file (``torch.save`` into memory)."""
    _bits(bits)
    modules = dict(model.named_modules())
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    packed: dict[str, torch.Tensor] = {}
    for name, (codes, scales, zeros) in quantized.items():
        if name not in modules or not isinstance(modules[name], nn.Linear):
            raise ValueError(f"quantized must name nn.Linear layers of the model, got {name!r}")
        if codes.shape != modules[name].weight.shape or codes.shape[0] != scales.shape[0] or scales.shape != zeros.shape:
            raise ValueError(
                f"{name}: codes {tuple(codes.shape)}, scales {tuple(scales.shape)} and zeros {tuple(zeros.shape)} do not fit the layer"
            )
        del state[name + ".weight"]
        packed[name + ".codes"] = torch.frombuffer(bytearray(pack_bits(codes, bits)), dtype=torch.uint8)
        packed[name + ".scales"] = scales.half()
        packed[name + ".zeros"] = torch.frombuffer(bytearray(pack_bits(zeros, bits)), dtype=torch.uint8)
    buffer = io.BytesIO()
    names = list(quantized)
    torch.save(
        {"float": state, "packed": packed, "bits": bits, "names": names, "groups": [int(quantized[n][1].shape[1]) for n in names]}, buffer
    )
    return buffer.getvalue()


def load_quantized(data: bytes, model: nn.Module) -> nn.Module:
    """Load bytes from :func:`save_quantized` into ``model`` (same architecture); returns ``model``."""
    blob = torch.load(io.BytesIO(data), weights_only=True)
    state = dict(blob["float"])
    bits = blob["bits"]
    for name, n_groups in zip(blob["names"], blob["groups"]):
        shape = model.get_submodule(name).weight.shape
        codes = torch.from_numpy(unpack_bits(blob["packed"][name + ".codes"].numpy().tobytes(), bits, shape[0] * shape[1])).reshape(shape)
        zeros = torch.from_numpy(unpack_bits(blob["packed"][name + ".zeros"].numpy().tobytes(), bits, shape[0] * n_groups)).reshape(
            shape[0], n_groups
        )
        state[name + ".weight"] = dequantize_codes(codes, blob["packed"][name + ".scales"].float(), zeros)
    model.load_state_dict(state)
    return model


# ----------------------------------------------------------------------------- calibration


@torch.no_grad()
def collect_inputs(model: nn.Module, layers: dict[str, nn.Linear], ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inputs that each layer in ``layers`` sees when ``model`` runs on ``ids`` (batch, time):
    ``{name: (batch * time, in)}`` float32, collected with forward hooks in one pass."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = [
        m.register_forward_hook(lambda _m, inp, _out, n=name: seen[n].append(inp[0].detach().reshape(-1, inp[0].shape[-1])))
        for name, m in layers.items()
    ]
    try:
        model(ids)
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(v) for name, v in seen.items()}


def hessian(x: torch.Tensor) -> torch.Tensor:
    """``x^T x / tokens`` (in, in) in float64 from inputs ``x`` (tokens, in): the layer-wise
    reconstruction error ``||(w - w_hat) x^T||^2 / tokens`` equals ``sum_rows d H d^T`` with ``d = w - w_hat``."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty 2-d (tokens, in) tensor, got shape {tuple(x.shape)}")
    x = x.double()
    return x.T @ x / x.shape[0]


def output_error(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    """Mean squared change of the layer's output over calibration inputs: ``mean((x (w - w_hat)^T)^2)``."""
    return float(((x.detach().double() @ (w.detach().double() - w_hat.detach().double()).T) ** 2).mean())


def replace_weights(model: nn.Module, new_weights: dict[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` with the weights of the named linear layers replaced."""
    out = copy.deepcopy(model)
    for name, w in new_weights.items():
        layer = out.get_submodule(name)
        if layer.weight.shape != w.shape:
            raise ValueError(f"{name}: new weight has shape {tuple(w.shape)}, the layer {tuple(layer.weight.shape)}")
        layer.weight.data = w.to(layer.weight.dtype).clone()
    return out


# ----------------------------------------------------------------------------- GPTQ


def inverse_hessian_factor(H: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + damp * mean(diag H) * I)^-1`` (``U^T U`` = that inverse), float64.
    Dead inputs (zero diagonal) get diagonal 1 so the factor exists."""
    if not 0.0 <= damp < 1.0:
        raise ValueError(f"damp must be in [0, 1), got {damp!r}")
    H = H.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=H.dtype)
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True)


def gptq_step(W: torch.Tensor, U: torch.Tensor, j: int, q: torch.Tensor) -> torch.Tensor:
    """One GPTQ column update: column ``j`` of ``W`` (out, in) becomes ``q`` (out,), and the columns
    after it absorb the error, ``W[:, j+1:] -= ((W[:, j] - q) / U[j, j]) outer U[j, j+1:]``, which is
    the least-squares optimal change of the not-yet-quantized columns. Returns a new tensor."""
    W = W.clone()
    err = (W[:, j] - q) / U[j, j]
    W[:, j] = q
    W[:, j + 1 :] -= torch.outer(err, U[j, j + 1 :].to(W.dtype))
    return W


def gptq_quantize(
    w: torch.Tensor,
    H: torch.Tensor,
    bits: int = 4,
    group_size: int = 32,
    damp: float = 0.01,
    block_size: int = 32,
    return_codes: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """GPTQ (Frantar et al. 2023) for one weight (out, in) given the Hessian proxy ``H`` (in, in).

    Columns are quantized left to right; each column's rounding error is spread over the columns to
    its right through the upper Cholesky factor of the damped inverse Hessian. Group parameters are
    computed from the already-updated weights when a group starts (as the reference code does).
    ``block_size`` columns are processed together and their updates applied to the rest lazily (the
    result equals the column-by-column loop up to float rounding). Returns the fake-quantized weight,
    and with ``return_codes=True`` also ``(codes, scales, zeros)`` as :func:`quantize_codes` gives them.
    """
    w = _weight(w)
    _bits(bits)
    cols = w.shape[1]
    g = _group(group_size, cols)
    if not isinstance(block_size, int) or block_size < 1 or block_size % g:
        raise ValueError(f"block_size must be a positive multiple of group_size ({g}), got {block_size!r}")
    U = inverse_hessian_factor(_hessian(H, cols), damp)
    W = w.detach().double().clone()
    Q = torch.zeros_like(W)
    codes = torch.zeros(W.shape, dtype=torch.uint8)
    scales = torch.zeros(W.shape[0], cols // g, dtype=torch.float64)
    zeros = torch.zeros(W.shape[0], cols // g, dtype=torch.float64)
    for b0 in range(0, cols, block_size):
        b1 = min(b0 + block_size, cols)
        Wb = W[:, b0:b1].clone()
        Eb = torch.zeros_like(Wb)
        for j in range(b1 - b0):
            col = b0 + j
            if col % g == 0:
                scale, zero = group_qparams(Wb[:, j : j + g], bits)
                scales[:, col // g], zeros[:, col // g] = scale[:, 0], zero[:, 0]
            code = torch.clamp(torch.round(Wb[:, j : j + 1] / scale) + zero, 0, 2**bits - 1)
            codes[:, col] = code[:, 0].to(torch.uint8)
            q = ((code - zero) * scale)[:, 0]
            Q[:, col] = q
            err = (Wb[:, j] - q) / U[col, col]
            Wb[:, j + 1 :] -= torch.outer(err, U[col, col + 1 : b1])
            Eb[:, j] = err
        W[:, b1:] -= Eb @ U[b0:b1, b1:]
    if return_codes:
        return Q.to(w.dtype), (codes, scales.float(), zeros.to(torch.uint8))
    return Q.to(w.dtype)


# ----------------------------------------------------------------------------- AWQ


def awq_scales(x_absmean: torch.Tensor, alpha: float) -> torch.Tensor:
    """AWQ's per-input-channel scales ``s = mean|x|^alpha``, normalized so ``max(s) * min(s) = 1``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    s = x_absmean.double().clamp(min=1e-8) ** alpha
    return s / torch.sqrt(s.max() * s.min())


def awq_quantize(w: torch.Tensor, s: torch.Tensor, bits: int = 4, group_size: int = 32) -> torch.Tensor:
    """Quantize ``w * s`` (scaling input channel j by s_j) with RTN groups, then divide by ``s`` again:
    the effective weight the layer uses when ``1/s`` is folded into its input."""
    w = _weight(w)
    s = s.to(torch.float64)
    return (quantize_rtn(w.double() * s, bits, group_size) / s).to(w.dtype)


def awq_search(
    w: torch.Tensor, x: torch.Tensor, bits: int = 4, group_size: int = 32, grid: int = 20
) -> tuple[float, torch.Tensor, list[float]]:
    """AWQ (Lin et al. 2024) scale search for one layer: for alpha in ``0, 1/grid, ..., 1`` the output
    error of :func:`awq_quantize` on calibration inputs ``x`` (tokens, in); returns the best alpha
    (the smallest on ties), its scales and the error per alpha. alpha = 0 is plain RTN."""
    w = _weight(w)
    if not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a positive int, got {grid!r}")
    x_absmean = x.abs().double().mean(dim=0)
    errors = [output_error(w, awq_quantize(w, awq_scales(x_absmean, a / grid), bits, group_size), x) for a in range(grid + 1)]
    best = int(np.argmin(errors))
    return best / grid, awq_scales(x_absmean, best / grid), errors


# ----------------------------------------------------------------------------- W8A8 and SmoothQuant


def fake_quant_symmetric(x: torch.Tensor, bits: int = 8, dim: int | None = None) -> torch.Tensor:
    """Symmetric fake quantization with ``scale = max|x| / (2**(bits-1) - 1)``: per tensor (``dim=None``)
    or one scale per slice along ``dim`` (e.g. ``dim=1`` on a weight: per output row)."""
    qmax = 2 ** (_bits(bits) - 1) - 1
    amax = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    return torch.clamp(torch.round(x / scale), -qmax, qmax) * scale


def smoothquant_scales(act_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant (Xiao et al. 2023) migration scales per input channel: ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return (act_absmax.clamp(min=1e-5) ** alpha / w_absmax.clamp(min=1e-5) ** (1 - alpha)).float()


class W8A8Linear(nn.Module):
    """A linear layer that computes with int8 weights (per output row, symmetric) and int8 activations
    (per tensor, symmetric, scale from each batch: dynamic), as fake quantization. With ``smooth``
    scales s: ``y = Q(x / s) Q(W * s)^T + b``, the SmoothQuant form (1/s folds into the previous LayerNorm)."""

    def __init__(self, linear: nn.Linear, smooth: torch.Tensor | None = None, act_bits: int = 8, weight_bits: int = 8) -> None:
        super().__init__()
        s = torch.ones(linear.in_features) if smooth is None else smooth.detach().float()
        if s.shape != (linear.in_features,) or (s <= 0).any():
            raise ValueError(f"smooth must be ({linear.in_features},) and positive")
        self.register_buffer("smooth", s)
        self.act_bits = act_bits
        self.weight = nn.Parameter(fake_quant_symmetric(linear.weight.detach() * s, weight_bits, dim=1), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(fake_quant_symmetric(x / self.smooth, self.act_bits), self.weight, self.bias)


def swap_linears(model: nn.Module, make: Callable[[str, nn.Linear], nn.Module], names: list[str]) -> nn.Module:
    """A deep copy of ``model`` with each named linear layer replaced by ``make(name, layer)``."""
    out = copy.deepcopy(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, child, make(name, getattr(parent, child)))
    return out


# ----------------------------------------------------------------------------- pruning


def keep_per_row(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean keep-mask that removes the ``int(sparsity * in)`` lowest scores of every row (ties: the
    lower index is removed first, a stable sort)."""
    scores = _weight(scores, "scores")
    k = int(_sparsity(sparsity) * scores.shape[1])
    order = torch.sort(scores, dim=1, stable=True).indices
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep.scatter_(1, order[:, :k], False)
    return keep


def keep_per_layer(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean keep-mask that removes the ``int(sparsity * numel)`` lowest scores of the whole matrix (stable ties)."""
    scores = _weight(scores, "scores")
    k = int(_sparsity(sparsity) * scores.numel())
    order = torch.sort(scores.flatten(), stable=True).indices
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    keep[order[:k]] = False
    return keep.view_as(scores)


def keep_n_of_m(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """N:M keep-mask: in every ``m`` consecutive inputs of a row keep the ``n`` highest scores (stable ties)."""
    scores = _weight(scores, "scores")
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m) or scores.shape[1] % m:
        raise ValueError(f"need ints 0 < n < m with m dividing in = {scores.shape[1]}, got n={n!r}, m={m!r}")
    groups = scores.reshape(scores.shape[0], -1, m)
    order = torch.sort(groups, dim=2, stable=True).indices
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(2, order[..., : m - n], False)
    return keep.reshape(scores.shape)


def wanda_scores(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Wanda (Sun et al. 2024): ``|W_ij| * ||X_j||_2``, the weight's magnitude times the L2 norm of its
    input channel over the calibration tokens ``x`` (tokens, in). (out, in)."""
    w = _weight(w)
    if x.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"x must be (tokens, {w.shape[1]}), got shape {tuple(x.shape)}")
    return w.abs() * x.double().norm(dim=0).to(w.dtype)[None, :]


def sparsegpt_prune(
    w: torch.Tensor, H: torch.Tensor, sparsity: float = 0.5, nm: tuple[int, int] | None = None, damp: float = 0.01, block_size: int = 32
) -> torch.Tensor:
    """SparseGPT-lite (after Frantar & Alistarh 2023): prune ``w`` (out, in) and update the kept weights.

    Columns go left to right as in GPTQ. At the start of each block of ``block_size`` columns, the mask
    for the block is chosen by the OBS saliency ``w^2 / U_jj^2`` (lowest ``sparsity`` of each row, or
    with ``nm=(n, m)`` the lowest m - n of every m); each pruned weight's error is then spread over the
    columns to its right through the Cholesky factor ``U`` of the damped inverse Hessian. Lite: no
    joint quantization and no partial updates of the Hessian. Returns the pruned, updated weight.
    """
    w = _weight(w)
    cols = w.shape[1]
    _sparsity(sparsity)
    if nm is not None:
        n, m = nm
        if block_size % m:
            raise ValueError(f"block_size ({block_size}) must be a multiple of m ({m})")
    U = inverse_hessian_factor(_hessian(H, cols), damp)
    W = w.detach().double().clone()
    d = torch.diag(U)
    for b0 in range(0, cols, block_size):
        b1 = min(b0 + block_size, cols)
        saliency = W[:, b0:b1] ** 2 / d[b0:b1][None, :] ** 2
        keep = keep_n_of_m(saliency, n, m) if nm is not None else keep_per_row(saliency, sparsity)
        for j in range(b0, b1):
            q = W[:, j] * keep[:, j - b0]
            err = (W[:, j] - q) / U[j, j]
            W[:, j] = q
            W[:, j + 1 :] -= torch.outer(err, U[j, j + 1 :])
    return W.to(w.dtype)


# ----------------------------------------------------------------------------- LoRA


class LoRALinear(nn.Module):
    """LoRA (Hu et al. 2022): a frozen linear layer plus a trainable low-rank delta,
    ``y = base(x) + (alpha / r) * x A^T B^T`` with A (r, in) small random and B (out, r) zero, so the
    wrapped layer starts equal to the base."""

    def __init__(self, base: nn.Linear, r: int = 4, alpha: float = 8.0, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(r, int) or r < 1 or r > min(base.in_features, base.out_features):
            raise ValueError(f"r must be an int in 1..{min(base.in_features, base.out_features)}, got {r!r}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.randn(r, base.in_features, generator=g) / base.in_features**0.5)
        self.B = nn.Parameter(torch.zeros(base.out_features, r))
        self.scaling = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * (x @ self.A.T) @ self.B.T

    def merged_weight(self) -> torch.Tensor:
        """``W + (alpha / r) B A``: the single dense weight to ship after fine-tuning."""
        return self.base.weight + self.scaling * self.B @ self.A


__all__ = [
    "LoRALinear",
    "W8A8Linear",
    "awq_quantize",
    "awq_scales",
    "awq_search",
    "collect_inputs",
    "dequantize_codes",
    "fake_quant_symmetric",
    "gptq_quantize",
    "gptq_step",
    "group_qparams",
    "hessian",
    "inverse_hessian_factor",
    "keep_n_of_m",
    "keep_per_layer",
    "keep_per_row",
    "load_quantized",
    "output_error",
    "pack_bits",
    "quantize_codes",
    "quantize_rtn",
    "quantize_with",
    "replace_weights",
    "save_quantized",
    "smoothquant_scales",
    "sparsegpt_prune",
    "swap_linears",
    "unpack_bits",
    "wanda_scores",
]
