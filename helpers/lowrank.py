"""Low-rank factorization: truncated SVD for Linear layers, Tucker-2 (HOSVD) and CP for convolutions.

A weight of shape (m, n) with rank r costs r (m + n) parameters instead of m n, a saving when
r < m n / (m + n). By the Eckart-Young-Mirsky theorem the truncated SVD is the best rank-r
approximation in the Frobenius (and spectral) norm.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

Array = np.ndarray | torch.Tensor


def _as_numpy_2d(W: Array, name: str = "W") -> np.ndarray:
    a = W.detach().cpu().numpy() if isinstance(W, torch.Tensor) else np.asarray(W)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-d matrix, got shape {a.shape}")
    return a


def _check_rank(rank: int, limit: int, name: str = "rank") -> None:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= limit:
        raise ValueError(f"{name} must be an int in [1, {limit}], got {rank!r}")


def truncated_svd(W: Array, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(U_r, S_r, Vt_r)``: the ``rank`` leading singular triplets of W (m, n): (m, r), (r,), (r, n)."""
    a = _as_numpy_2d(W)
    _check_rank(rank, min(a.shape))
    U, S, Vt = np.linalg.svd(a, full_matrices=False)
    return U[:, :rank], S[:rank], Vt[:rank]


def low_rank_approx(W: Array, rank: int) -> np.ndarray:
    """The best rank-``rank`` approximation ``U_r diag(S_r) Vt_r`` of W."""
    U, S, Vt = truncated_svd(W, rank)
    return (U * S) @ Vt


def rank_for_energy(singular_values: Array, energy: float) -> int:
    """Smallest r with ``sum(sigma[:r]**2) >= energy * sum(sigma**2)``; ``energy`` in (0, 1]."""
    s = (
        singular_values.detach().cpu().numpy()
        if isinstance(singular_values, torch.Tensor)
        else np.asarray(singular_values, dtype=np.float64)
    )
    if s.ndim != 1 or s.size == 0:
        raise ValueError("singular_values must be a non-empty 1-d array")
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    s = np.sort(np.abs(s))[::-1]
    cumulative = np.cumsum(s**2) / np.sum(s**2)
    return int(min(np.searchsorted(cumulative, energy - 1e-12) + 1, s.size))


def factorize_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """Two Linear layers whose product is the rank-``rank`` SVD approximation of ``layer.weight``.

    ``W ~= U_r S_r Vt_r = (U_r sqrt(S_r)) (sqrt(S_r) Vt_r)``: the first layer (in -> rank, no bias)
    holds ``sqrt(S_r) Vt_r``, the second (rank -> out) holds ``U_r sqrt(S_r)`` and the bias. Splitting
    sqrt(S) evenly keeps both factors on the same scale.
    """
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"layer must be nn.Linear, got {type(layer).__name__}")
    U, S, Vt = truncated_svd(layer.weight.detach().double(), rank)
    root = np.sqrt(S)
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(root[:, None] * Vt))
        second.weight.copy_(torch.from_numpy(U * root[None, :]))
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def factorize_conv(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """A Conv2d as two by the SVD of its kernel reshaped to (C_out, C_in k_h k_w) (the layer shape of Zhang et al. 2016).

    ``K ~= U_r S_r Vt_r``: the first conv (C_in -> rank, the original k x k, stride, padding and dilation,
    no bias) holds ``sqrt(S_r) Vt_r`` reshaped to (rank, C_in, k_h, k_w); the second, a 1x1 (rank -> C_out),
    holds ``U_r sqrt(S_r)`` and the bias.
    """
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise TypeError("conv must be an nn.Conv2d with groups=1")
    c_out, c_in, kh, kw = conv.weight.shape
    U, S, Vt = truncated_svd(conv.weight.detach().double().reshape(c_out, -1), rank)
    root = np.sqrt(S)
    first = nn.Conv2d(c_in, rank, (kh, kw), stride=conv.stride, padding=conv.padding, dilation=conv.dilation, bias=False)
    second = nn.Conv2d(rank, c_out, 1, bias=conv.bias is not None)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy((root[:, None] * Vt).reshape(rank, c_in, kh, kw)))
        second.weight.copy_(torch.from_numpy((U * root[None, :])[:, :, None, None]))
        if conv.bias is not None:
            second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


def linear_params(m: int, n: int, rank: int | None = None) -> int:
    """Weights of an (m, n) matrix, dense (``rank=None``) or factorised: ``rank * (m + n)``."""
    return m * n if rank is None else rank * (m + n)


# ----------------------------------------------------------------------------- Tucker-2 (HOSVD)


def unfold(tensor: np.ndarray, mode: int) -> np.ndarray:
    """Mode-``mode`` unfolding: that axis becomes the rows, all others (in order) the columns."""
    return np.moveaxis(tensor, mode, 0).reshape(tensor.shape[mode], -1)


def mode_product(tensor: np.ndarray, matrix: np.ndarray, mode: int) -> np.ndarray:
    """``tensor x_mode matrix``: multiply every mode-``mode`` fibre by ``matrix`` (new size matrix.shape[0])."""
    moved = np.moveaxis(tensor, mode, 0)
    out = np.tensordot(matrix, moved, axes=(1, 0))
    return np.moveaxis(out, 0, mode)


def hosvd_tucker2(kernel: Array, rank_out: int, rank_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tucker-2 of a conv kernel (C_out, C_in, k, k) by HOSVD: ``(core, U_out, U_in)``.

    ``U_out`` (C_out, R_out) and ``U_in`` (C_in, R_in) are the leading left singular vectors of the
    mode-0 and mode-1 unfoldings; ``core = K x_0 U_out^T x_1 U_in^T`` has shape (R_out, R_in, k, k), and
    ``K ~= core x_0 U_out x_1 U_in``.
    """
    K = kernel.detach().cpu().double().numpy() if isinstance(kernel, torch.Tensor) else np.asarray(kernel, dtype=np.float64)
    if K.ndim != 4:
        raise ValueError(f"kernel must be 4-d (C_out, C_in, k, k), got shape {K.shape}")
    _check_rank(rank_out, K.shape[0], "rank_out")
    _check_rank(rank_in, K.shape[1], "rank_in")
    U_out = np.linalg.svd(unfold(K, 0), full_matrices=False)[0][:, :rank_out]
    U_in = np.linalg.svd(unfold(K, 1), full_matrices=False)[0][:, :rank_in]
    core = mode_product(mode_product(K, U_out.T, 0), U_in.T, 1)
    return core, U_out, U_in


def tucker2_reconstruct(core: np.ndarray, U_out: np.ndarray, U_in: np.ndarray) -> np.ndarray:
    """The kernel back from its Tucker-2 factors."""
    return mode_product(mode_product(core, U_out, 0), U_in, 1)


def tucker2_conv(conv: nn.Conv2d, rank_out: int, rank_in: int) -> nn.Sequential:
    """Replace a Conv2d by 1x1 (C_in -> R_in) -> kxk core (R_in -> R_out) -> 1x1 (R_out -> C_out, bias)."""
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise TypeError("conv must be an nn.Conv2d with groups=1")
    core, U_out, U_in = hosvd_tucker2(conv.weight, rank_out, rank_in)
    first = nn.Conv2d(conv.in_channels, rank_in, 1, bias=False)
    middle = nn.Conv2d(rank_in, rank_out, conv.kernel_size, stride=conv.stride, padding=conv.padding, dilation=conv.dilation, bias=False)
    last = nn.Conv2d(rank_out, conv.out_channels, 1, bias=conv.bias is not None)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(U_in.T[:, :, None, None]))
        middle.weight.copy_(torch.from_numpy(core))
        last.weight.copy_(torch.from_numpy(U_out[:, :, None, None]))
        if conv.bias is not None:
            last.bias.copy_(conv.bias)
    return nn.Sequential(first, middle, last)


def tucker2_macs(c_in: int, c_out: int, k: int, rank_in: int, rank_out: int, h_in: int, w_in: int, h_out: int, w_out: int) -> int:
    """MACs of the Tucker-2 block: ``C_in R_in H W + R_in R_out k^2 H' W' + R_out C_out H' W'``."""
    return c_in * rank_in * h_in * w_in + rank_in * rank_out * k * k * h_out * w_out + rank_out * c_out * h_out * w_out


# ----------------------------------------------------------------------------- CP (ALS)


def khatri_rao(matrices: list[np.ndarray]) -> np.ndarray:
    """Column-wise Kronecker product of matrices with the same number of columns R."""
    result = matrices[0]
    for m in matrices[1:]:
        result = (result[:, None, :] * m[None, :, :]).reshape(-1, result.shape[1])
    return result


def cp_normalize(factors: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(weights, unit_factors)``: every column scaled to unit norm, the scales multiplied into ``weights``.

    ``weights[r]`` is the Frobenius norm of the r-th rank-one component ``a_r o b_r o ...`` (the norm
    of an outer product is the product of the vectors' norms).
    """
    norms = [np.linalg.norm(f, axis=0) for f in factors]
    weights = np.prod(norms, axis=0)
    unit = [f / np.where(n > 0, n, 1.0) for f, n in zip(factors, norms)]
    return weights, unit


def cp_balance(factors: list[np.ndarray]) -> list[np.ndarray]:
    """The same CP tensor with each component's norm shared evenly: every factor's r-th column gets
    norm ``weights[r] ** (1 / N)`` (N modes), as ``factorize_linear`` shares sqrt(S) between two layers."""
    weights, unit = cp_normalize(factors)
    share = weights ** (1.0 / len(factors))
    return [u * share[None, :] for u in unit]


def cp_component_norms(factors: list[np.ndarray]) -> np.ndarray:
    """Frobenius norm of each rank-one component (independent of how it is split among the factors)."""
    return cp_normalize(factors)[0]


def cp_als(
    tensor: Array,
    rank: int,
    iterations: int = 200,
    seed: int = 0,
    tol: float = 1e-9,
    ridge: float = 0.0,
) -> tuple[list[np.ndarray], list[float]]:
    """Rank-``rank`` CP decomposition ``T ~= sum_r a_r o b_r o c_r o ...`` by alternating least squares.

    Returns the factor matrices (one (dim_i, R) per mode), **balanced** (see :func:`cp_balance`), and the
    relative error after each sweep. Each sweep solves, for one factor at a time, the least-squares
    problem with the others fixed (using the Khatri-Rao structure), then rescales that factor's columns
    to unit norm, carrying the scales in a weight vector (Kolda & Bader 2009, Fig. 3.3) so that no
    factor drifts to huge or tiny values.

    ``ridge`` >= 0 adds ``ridge`` times the squared norm of the factor being solved to the least-squares
    objective (Tikhonov regularisation; the other factors have unit columns, so this is ``ridge`` times
    the sum of the squared component norms, and ``ridge`` is dimensionless). Without it, the best rank-R approximation may
    not exist (de Silva & Lim 2008) and ALS can drift towards *degenerate* solutions: pairs of large
    rank-one components that nearly cancel. The ridge term bounds the components' norms, which makes
    the factors, and models initialised from them, far less sensitive to rounding and to the start.
    Initialised from HOSVD-style leading singular vectors (random columns drawn with ``seed`` where a
    mode is smaller than the rank).
    """
    X = tensor.detach().cpu().double().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor, dtype=np.float64)
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    if not np.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge must be a finite float >= 0, got {ridge!r}")
    rng = np.random.default_rng(seed)
    factors = []
    for mode in range(X.ndim):
        U = np.linalg.svd(unfold(X, mode), full_matrices=False)[0]
        columns = U[:, :rank]
        if columns.shape[1] < rank:
            extra = rng.standard_normal((X.shape[mode], rank - columns.shape[1]))
            columns = np.hstack([columns, extra / np.linalg.norm(extra, axis=0)])
        factors.append(columns)
    norm = np.linalg.norm(X)
    penalty = float(ridge)
    weights = np.ones(rank)
    errors: list[float] = []
    for _ in range(iterations):
        for mode in range(X.ndim):
            others = [factors[m] for m in range(X.ndim) if m != mode]
            gram = np.ones((rank, rank))
            for f in others:
                gram *= f.T @ f
            rhs = unfold(X, mode) @ khatri_rao(others)
            if penalty > 0:
                solved = np.linalg.solve(gram + penalty * np.eye(rank), rhs.T).T
            else:
                solved = rhs @ np.linalg.pinv(gram)
            weights = np.linalg.norm(solved, axis=0)
            factors[mode] = solved / np.where(weights > 0, weights, 1.0)
        scaled = [factors[0] * weights[None, :], *factors[1:]]
        error = float(np.linalg.norm(X - cp_reconstruct(scaled)) / norm)
        errors.append(error)
        if len(errors) > 1 and abs(errors[-2] - errors[-1]) < tol:
            break
    return cp_balance([factors[0] * weights[None, :], *factors[1:]]), errors


def cp_reconstruct(factors: list[np.ndarray]) -> np.ndarray:
    """The full tensor from CP factors."""
    shape = [f.shape[0] for f in factors]
    return (factors[0] @ khatri_rao(factors[1:]).T).reshape(shape)


def cp_conv(conv: nn.Conv2d, rank: int, iterations: int = 200, seed: int = 0, ridge: float = 0.0) -> nn.Sequential:
    """Lebedev et al. (2015): a kxk Conv2d as 1x1 (C_in -> R), depthwise k x 1, depthwise 1 x k, 1x1 (R -> C_out).

    The factors come from :func:`cp_als` (balanced: the four convolutions' r-th filters have equal norms).
    """
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.stride != (1, 1) or conv.dilation != (1, 1):
        raise TypeError("conv must be an nn.Conv2d with groups=1, stride 1 and dilation 1")
    (A_out, A_in, A_h, A_w), _ = cp_als(conv.weight, rank, iterations, seed=seed, ridge=ridge)
    kh, kw = conv.kernel_size
    ph, pw = conv.padding
    first = nn.Conv2d(conv.in_channels, rank, 1, bias=False)
    vertical = nn.Conv2d(rank, rank, (kh, 1), padding=(ph, 0), groups=rank, bias=False)
    horizontal = nn.Conv2d(rank, rank, (1, kw), padding=(0, pw), groups=rank, bias=False)
    last = nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(A_in.T[:, :, None, None]))
        vertical.weight.copy_(torch.from_numpy(A_h.T[:, None, :, None]))
        horizontal.weight.copy_(torch.from_numpy(A_w.T[:, None, None, :]))
        last.weight.copy_(torch.from_numpy(A_out[:, :, None, None]))
        if conv.bias is not None:
            last.bias.copy_(conv.bias)
    return nn.Sequential(first, vertical, horizontal, last)
