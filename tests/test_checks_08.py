"""Chapter 08 checks: plausible wrong answers are rejected with expected/got/hint, correct alternatives pass."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from helpers import checks
from helpers import lowrank as LR

# ----------------------------------------------------------------------------- truncated_svd


def _svd_numpy(W, r):
    U, S, Vt = np.linalg.svd(W, full_matrices=False)
    return U[:, :r], S[:r], Vt[:r]


def _svd_float64(W, r):  # computes in float64 whatever the input
    return _svd_numpy(np.asarray(W, dtype=np.float64), r)


def _svd_torch(W, r):  # torch tensors back, in the input's precision
    U, S, Vh = torch.linalg.svd(torch.from_numpy(W), full_matrices=False)
    return U[:, :r], S[:r], Vh[:r]


def _svd_flipped_signs(W, r):  # a singular pair may flip sign: still correct
    U, S, Vt = _svd_numpy(W, r)
    signs = np.where(np.arange(r) % 2 == 0, -1.0, 1.0).astype(W.dtype)
    return U * signs, S, Vt * signs[:, None]


def _svd_from_gram(W, r):  # eigh of the smaller Gram matrix, in float64
    A = np.asarray(W, dtype=np.float64)
    if A.shape[0] >= A.shape[1]:
        evals, V = np.linalg.eigh(A.T @ A)
        order = np.argsort(evals)[::-1][:r]
        S = np.sqrt(np.clip(evals[order], 0, None))
        V = V[:, order]
        return (A @ V) / S, S, V.T
    U, S, Vt = _svd_from_gram(A.T, r)
    return Vt.T, S, U.T


def _svd_gram_ascending(W, r):  # eigh's ascending order kept: the right set, the wrong order
    U, S, Vt = _svd_from_gram(W, r)
    return U[:, ::-1], S[::-1], Vt[::-1]


def _svd_gram_smallest(W, r):  # the first r eigenpairs of eigh: the SMALLEST
    A = np.asarray(W, dtype=np.float64)
    if A.shape[0] < A.shape[1]:
        U, S, Vt = _svd_gram_smallest(A.T, r)
        return Vt.T, S, U.T
    evals, V = np.linalg.eigh(A.T @ A)
    S = np.sqrt(np.clip(evals[:r], 0, None))
    return (A @ V[:, :r]) / np.where(S > 0, S, 1), S, V[:, :r].T


def _svd_gram_unnormalised(W, r):  # U = W V without dividing by S
    U, S, Vt = _svd_from_gram(W, r)
    return U * S, S, Vt


def _svd_in_place(W, r):  # normalises the learner's argument in place
    s = np.linalg.norm(W)
    W /= s
    U, S, Vt = _svd_numpy(W, r)
    return U, S * s, Vt


def _svd_eigenvalues(W, r):  # returns eigenvalues of W^T W (sigma^2) instead of sigma
    U, S, Vt = _svd_numpy(W, r)
    return U, S**2, Vt


def _svd_float32(W, r):  # float32 computation on a float64 input
    return _svd_numpy(np.asarray(W, dtype=np.float32), r)


def _svd_float32_returned_as_float64(W, r):  # float32 computation, cast back to float64: the dtype no longer tells
    return tuple(a.astype(np.float64) for a in _svd_numpy(np.asarray(W, dtype=np.float32), r))


def _svd_torch_float32(W, r):  # torch.linalg.svd on a float32 tensor of a float64 W
    U, S, Vh = torch.linalg.svd(torch.from_numpy(W).float(), full_matrices=False)
    return U[:, :r], S[:r], Vh[:r]


def _svd_gram_float32(W, r):  # W rounded to float32 first (as a float32 tensor would be), then eigh of the Gram matrix
    return tuple(a.astype(np.float64) for a in _svd_from_gram(np.asarray(W, dtype=np.float32), r))


def _svd_list(W, r):  # a nested list, not arrays
    return [v.tolist() for v in _svd_numpy(W, r)][0]


SVD_WRONG = [
    _svd_gram_ascending,
    _svd_gram_smallest,
    _svd_gram_unnormalised,
    _svd_in_place,
    _svd_eigenvalues,
    _svd_float32,
    _svd_list,
    _svd_float32_returned_as_float64,
    _svd_torch_float32,
    _svd_gram_float32,
]
SVD_RIGHT = [_svd_numpy, _svd_float64, _svd_torch, _svd_flipped_signs, _svd_from_gram, LR.truncated_svd]

# ----------------------------------------------------------------------------- low_rank_error


def _err_in_place(S, r):
    S **= 2
    return float(np.sqrt(np.sum(S[r:])))


ERR_WRONG = [
    lambda S, r: float(np.sqrt(np.sum(S[:r] ** 2))),  # the kept energy, not the discarded
    lambda S, r: float(np.sqrt(np.sum(S[r:] ** 2)) / np.sqrt(np.sum(S**2))),  # relative error
    lambda S, r: float(np.sqrt(np.sum(S[r - 1 :] ** 2))),  # off by one, the other way
    lambda S, r: float(S[r]) if r < len(S) else 0.0,  # the spectral-norm error (sigma_{r+1})
    _err_in_place,
    lambda S, r: np.sqrt(S[r:] ** 2),  # an array, not one number
]
ERR_RIGHT = [
    lambda S, r: float(np.linalg.norm(S[r:])),
    lambda S, r: torch.linalg.vector_norm(torch.from_numpy(np.ascontiguousarray(S))[r:]),  # a 0-d tensor
    lambda S, r: float(np.sqrt(np.sum(np.asarray(S, dtype=np.float64)[r:] ** 2))),
    lambda S, r: float(
        np.sqrt(max(np.sum(S.astype(np.float64) ** 2) - np.sum(S[:r].astype(np.float64) ** 2), 0.0))
    ),  # total - kept, clipped
    lambda S, r: sum(float(s) ** 2 for s in S[r:]) ** 0.5,  # a loop
]

# ----------------------------------------------------------------------------- rank_for_energy


def _energy_in_place(s, e):
    s **= 2
    return int(np.searchsorted(np.cumsum(s) / np.sum(s), e - 1e-12) + 1)


def _energy_loop(s, e):
    total, kept = float(np.sum(np.asarray(s, dtype=np.float64) ** 2)), 0.0
    for r, v in enumerate(s, start=1):
        kept += float(v) ** 2
        if kept >= e * total - 1e-12 * total:
            return r
    return len(s)


ENERGY_WRONG = [
    lambda s, e: int(np.argmax(np.cumsum(s**2) / np.sum(s**2) > e)) + 1,  # strict > instead of >=
    _energy_in_place,
    lambda s, e: max(1, int(np.ceil(e * len(s)))),  # a fraction of the count, not of the energy
    lambda s, e: int(np.argmax(np.cumsum(s**2) / np.sum(s**2) >= e)),  # 0-based
    lambda s, e: int(np.searchsorted(np.cumsum(s) / np.sum(s), e - 1e-12) + 1),  # energy of sigma
]
ENERGY_RIGHT = [
    LR.rank_for_energy,
    _energy_loop,
    lambda s, e: int(np.argmax(np.cumsum(np.asarray(s, np.float64) ** 2) >= e * np.sum(np.asarray(s, np.float64) ** 2) * (1 - 1e-12))) + 1,
    lambda s, e: (
        torch.searchsorted(
            torch.cumsum(torch.tensor(s, dtype=torch.float64) ** 2, 0) / (torch.tensor(s, dtype=torch.float64) ** 2).sum(), e - 1e-12
        )
        + 1
    ),  # a torch scalar
]

# ----------------------------------------------------------------------------- factorize_linear


def _factorize(layer, rank, *, bias_on_first=False, no_bias=False, share_bias=False, dtype=torch.float32, stale=False, freeze=False):
    U, S, Vt = LR.truncated_svd(layer.weight.detach().double(), rank)
    root = np.sqrt(S)
    has_bias = layer.bias is not None and not no_bias
    if stale:  # layers of the original size whose .weight is overwritten
        first, second = (
            nn.Linear(layer.in_features, layer.out_features, bias=False),
            nn.Linear(layer.in_features, layer.out_features, bias=has_bias),
        )
        first.weight = nn.Parameter(torch.from_numpy(root[:, None] * Vt).float())
        second.weight = nn.Parameter(torch.from_numpy(U * root).float())
        if has_bias:
            second.bias = nn.Parameter(layer.bias.detach().clone())
        return nn.Sequential(first, second)
    first = nn.Linear(layer.in_features, rank, bias=bias_on_first).to(dtype)
    second = nn.Linear(rank, layer.out_features, bias=has_bias).to(dtype)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(root[:, None] * Vt))
        second.weight.copy_(torch.from_numpy(U * root))
        if has_bias:
            if share_bias:
                second.bias = layer.bias
            else:
                second.bias.copy_(layer.bias)
    if freeze:
        for p in [*first.parameters(), *second.parameters()]:
            p.requires_grad_(False)
    return nn.Sequential(first, second)


def _factorize_numpy(layer, rank):  # the two factors as numpy arrays
    U, S, Vt = LR.truncated_svd(layer.weight.detach().double(), rank)
    return np.sqrt(S)[:, None] * Vt, U * np.sqrt(S)


def _factorize_mutates(layer, rank):
    layer.weight.data.mul_(1.0)  # harmless
    layer.weight.data[0, 0] = 0.0  # "clean up" the layer in place
    return _factorize(layer, rank)


def _factorize_torch_svd(layer, rank):  # torch.linalg.svd in float32, signs as they come
    U, S, Vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
    root = S[:rank].sqrt()
    first, second = nn.Linear(layer.in_features, rank, bias=False), nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(root[:, None] * Vh[:rank])
        second.weight.copy_(U[:, :rank] * root)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def _factorize_no_bias_as_zero(layer, rank):  # a zero bias where the layer has none: equivalent
    block = _factorize(layer, rank)
    if layer.bias is None:
        second = nn.Linear(rank, layer.out_features)
        with torch.no_grad():
            second.weight.copy_(block[1].weight)
            second.bias.zero_()
        block = nn.Sequential(block[0], second)
    return block


FACT_WRONG = [
    lambda layer, rank: _factorize(layer, rank, bias_on_first=True),  # nn.Linear default bias=True on the first layer
    lambda layer, rank: _factorize(layer, rank, no_bias=True),  # the bias forgotten
    lambda layer, rank: _factorize(layer, rank, share_bias=True),  # the original's bias Parameter shared
    lambda layer, rank: _factorize(layer, rank, dtype=torch.float64),  # float64 layers break a float32 model
    lambda layer, rank: _factorize(layer, rank, stale=True),  # stale in/out_features
    lambda layer, rank: _factorize(layer, rank, freeze=True),  # not trainable
    _factorize_numpy,
    _factorize_mutates,
]
FACT_RIGHT = [LR.factorize_linear, _factorize, _factorize_torch_svd, _factorize_no_bias_as_zero]

# ----------------------------------------------------------------------------- factorize_conv


def _conv_factor(conv, rank, *, bias_on_first=False, padding_on_second=False, no_stride=False, transpose_reshape=False, share_bias=False):
    c_out, c_in, kh, kw = conv.weight.shape
    W = conv.weight.detach().double().numpy()
    if transpose_reshape:  # C_in rows instead of C_out rows: reshape without moving the axis
        W = W.reshape(c_in, -1).reshape(c_out, -1)
        W = conv.weight.detach().double().numpy().transpose(1, 0, 2, 3).reshape(c_out, -1)
    U, S, Vt = LR.truncated_svd(W.reshape(c_out, -1), rank)
    root = np.sqrt(S)
    first = nn.Conv2d(
        c_in,
        rank,
        (kh, kw),
        stride=1 if no_stride else conv.stride,
        padding=0 if padding_on_second else conv.padding,
        bias=bias_on_first,
    )
    second = nn.Conv2d(rank, c_out, 1, padding=conv.padding if padding_on_second else 0, bias=conv.bias is not None)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy((root[:, None] * Vt).reshape(rank, c_in, kh, kw)))
        second.weight.copy_(torch.from_numpy((U * root)[:, :, None, None]))
        if conv.bias is not None:
            if share_bias:
                second.bias = conv.bias
            else:
                second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


def _conv_factor_all_s_first(conv, rank):
    c_out, c_in, kh, kw = conv.weight.shape
    U, S, Vt = LR.truncated_svd(conv.weight.detach().double().reshape(c_out, -1), rank)
    block = _conv_factor(conv, rank)
    with torch.no_grad():
        block[0].weight.copy_(torch.from_numpy((S[:, None] * Vt).reshape(rank, c_in, kh, kw)))
        block[1].weight.copy_(torch.from_numpy(U[:, :, None, None]))
    return block


def _conv_factor_torch(conv, rank):  # torch.linalg.svd, float32, einops-free reshapes
    c_out = conv.out_channels
    U, S, Vh = torch.linalg.svd(conv.weight.detach().flatten(1), full_matrices=False)
    root = S[:rank].sqrt()
    first = nn.Conv2d(conv.in_channels, rank, conv.kernel_size, stride=conv.stride, padding=conv.padding, bias=False)
    second = nn.Conv2d(rank, c_out, 1, bias=conv.bias is not None)
    with torch.no_grad():
        first.weight.copy_((root[:, None] * Vh[:rank]).reshape(first.weight.shape))
        second.weight.copy_((U[:, :rank] * root).reshape(second.weight.shape))
        if conv.bias is not None:
            second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


CONV_WRONG = [
    lambda c, r: _conv_factor(c, r, bias_on_first=True),
    lambda c, r: _conv_factor(c, r, padding_on_second=True),  # padding on the 1x1
    lambda c, r: _conv_factor(c, r, no_stride=True),  # stride forgotten
    lambda c, r: _conv_factor(c, r, transpose_reshape=True),  # wrong unfolding
    lambda c, r: _conv_factor(c, r, share_bias=True),
    _conv_factor_all_s_first,
    lambda c, r: LR.factorize_linear(nn.Linear(c.weight[0].numel(), c.out_channels), r),  # Linear layers, not convs
]
CONV_RIGHT = [LR.factorize_conv, _conv_factor, _conv_factor_torch]

# ----------------------------------------------------------------------------- hosvd


def _hosvd_einsum(K, r_out, r_in):
    c_out, c_in = K.shape[:2]
    U_out = np.linalg.svd(K.reshape(c_out, -1), full_matrices=False)[0][:, :r_out]
    U_in = np.linalg.svd(K.transpose(1, 0, 2, 3).reshape(c_in, -1), full_matrices=False)[0][:, :r_in]
    return np.einsum("oikl,or,is->rskl", K, U_out, U_in), U_out, U_in


def _hosvd_torch(K, r_out, r_in):  # torch tensors, input precision
    T = torch.from_numpy(K)
    U_out = torch.linalg.svd(T.flatten(1), full_matrices=False)[0][:, :r_out]
    U_in = torch.linalg.svd(T.transpose(0, 1).flatten(1), full_matrices=False)[0][:, :r_in]
    return torch.einsum("oikl,or,is->rskl", T, U_out, U_in), U_out, U_in


def _hosvd_eigh(K, r_out, r_in):  # eigenvectors of the unfoldings' Gram matrices, flipped signs
    K64 = np.asarray(K, dtype=np.float64)
    U_out = np.linalg.eigh(LR.unfold(K64, 0) @ LR.unfold(K64, 0).T)[1][:, ::-1][:, :r_out] * -1
    U_in = np.linalg.eigh(LR.unfold(K64, 1) @ LR.unfold(K64, 1).T)[1][:, ::-1][:, :r_in]
    return np.einsum("oikl,or,is->rskl", K64, U_out, U_in), U_out, U_in


def _hosvd_centred_in_place(K, r_out, r_in):  # a PCA habit: centre the data (in place)
    K -= K.mean()
    return _hosvd_einsum(K, r_out, r_in)


def _hosvd_swapped(K, r_out, r_in):
    core, U_out, U_in = _hosvd_einsum(K, r_out, r_in)
    return core, U_in, U_out


def _hosvd_scaled(K, r_out, r_in):  # U * S instead of U
    c_out, c_in = K.shape[:2]
    U, S, _ = np.linalg.svd(K.reshape(c_out, -1), full_matrices=False)
    U_out = U[:, :r_out] * S[:r_out]
    U_in = np.linalg.svd(K.transpose(1, 0, 2, 3).reshape(c_in, -1), full_matrices=False)[0][:, :r_in]
    return np.einsum("oikl,or,is->rskl", K, U_out, U_in), U_out, U_in


def _hosvd_core_mode0_only(K, r_out, r_in):  # forgot to project mode 1: the core keeps C_in
    core, U_out, U_in = _hosvd_einsum(K, r_out, r_in)
    return np.einsum("oikl,or->rikl", K, U_out), U_out, U_in


def _hosvd_right_vectors(K, r_out, r_in):  # Vt rows of the mode-1 unfolding reshaped
    core, U_out, _ = _hosvd_einsum(K, r_out, r_in)
    c_in = K.shape[1]
    Vt = np.linalg.svd(K.reshape(c_in, -1), full_matrices=False)[2]
    U_in = Vt[:r_in, :c_in].T
    return core, U_out, U_in


HOSVD_WRONG = [_hosvd_centred_in_place, _hosvd_swapped, _hosvd_scaled, _hosvd_core_mode0_only, _hosvd_right_vectors]
HOSVD_RIGHT = [LR.hosvd_tucker2, _hosvd_einsum, _hosvd_torch, _hosvd_eigh]

# ----------------------------------------------------------------------------- tucker2_macs


def _macs(c_in, c_out, k, r_in, r_out, h, w, pad=0):
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    return c_in * r_in * h * w + r_in * r_out * k * k * ho * wo + r_out * c_out * ho * wo


MACS_WRONG = [
    lambda c_in, c_out, k, r_in, r_out, h, w, pad=0: (
        _macs(c_in, c_out, k, r_in, r_out, h, w, pad)
        + (k * k - 1) * (c_in * r_in * h * w + r_out * c_out * (h + 2 * pad - k + 1) * (w + 2 * pad - k + 1))
    ),  # k^2 in the 1x1 convs
    lambda c_in, c_out, k, r_in, r_out, h, w, pad=0: _macs(c_in, c_out, k, r_out, r_in, h, w, pad),  # ranks swapped
    lambda c_in, c_out, k, r_in, r_out, h, w, pad=0: (
        c_in * r_in * h * w
        + r_in * r_out * k * k * (h + 2 * pad - k) * (w + 2 * pad - k)
        + r_out * c_out * (h + 2 * pad - k) * (w + 2 * pad - k)
    ),  # output size without +1
    lambda c_in, c_out, k, r_in, r_out, h, w, pad=0: (
        c_in * r_in * h * w + (r_in * r_out * k * k + r_out * c_out) * (h + pad - k + 1) * (w + pad - k + 1)
    ),  # padding counted on one side only
    lambda c_in, c_out, k, r_in, r_out, h, w, pad=0: _macs(c_in, c_out, k, r_in, r_out, h, h, pad),  # height twice
    lambda c_in, c_out, k, r_in, r_out, h, w, pad=0: c_in * c_out * k * k * (h + 2 * pad - k + 1) * (w + 2 * pad - k + 1),  # the dense conv
]
MACS_RIGHT = [
    _macs,
    lambda c_in, c_out, k, r_in, r_out, h, w, pad=0: float(_macs(c_in, c_out, k, r_in, r_out, h, w, pad)),  # a whole float
    lambda c_in, c_out, k, r_in, r_out, h, w, pad=0: np.int64(_macs(c_in, c_out, k, r_in, r_out, h, w, pad)),
    lambda c_in, c_out, k, r_in, r_out, h, w, pad=0: LR.tucker2_macs(
        c_in, c_out, k, r_in, r_out, h, w, h + 2 * pad - k + 1, w + 2 * pad - k + 1
    ),
]

# ----------------------------------------------------------------------------- tucker2_conv


def _tucker(conv, r_out, r_in, *, bias_first=False, padding_last=False, swap=False, no_bias=False):
    core, U_out, U_in = LR.hosvd_tucker2(conv.weight, r_out, r_in)
    first = nn.Conv2d(conv.in_channels, r_in, 1, bias=bias_first)
    middle = nn.Conv2d(r_in, r_out, conv.kernel_size, padding=0 if padding_last else conv.padding, bias=False)
    last = nn.Conv2d(r_out, conv.out_channels, 1, padding=conv.padding if padding_last else 0, bias=conv.bias is not None and not no_bias)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(U_in.T[:, :, None, None]))
        middle.weight.copy_(torch.from_numpy(core))
        last.weight.copy_(torch.from_numpy(U_out[:, :, None, None]))
        if last.bias is not None:
            last.bias.copy_(conv.bias)
    block = nn.Sequential(first, middle, last)
    return block if not swap else nn.Sequential(last, middle, first)


def _tucker_learner_hosvd(conv, r_out, r_in):  # built on the learner's own einsum HOSVD, float32 weights
    core, U_out, U_in = _hosvd_einsum(conv.weight.detach().numpy(), r_out, r_in)
    block = _tucker(conv, r_out, r_in)
    with torch.no_grad():
        block[0].weight.copy_(torch.from_numpy(U_in.T.copy()[:, :, None, None]))
        block[1].weight.copy_(torch.from_numpy(core))
        block[2].weight.copy_(torch.from_numpy(U_out[:, :, None, None]))
    return block


def _tucker_core_untransposed(conv, r_out, r_in):  # core einsum output order (r_in, r_out) reshaped
    block = _tucker(conv, r_out, r_in)
    core = LR.hosvd_tucker2(conv.weight, r_out, r_in)[0]
    with torch.no_grad():
        block[1].weight.copy_(torch.from_numpy(np.ascontiguousarray(core.transpose(1, 0, 2, 3)).reshape(core.shape)))
    return block


TUCKER_WRONG = [
    lambda c, ro, ri: _tucker(c, ro, ri, bias_first=True),
    lambda c, ro, ri: _tucker(c, ro, ri, padding_last=True),
    lambda c, ro, ri: _tucker(c, ro, ri, no_bias=True),
    lambda c, ro, ri: LR.tucker2_conv(c, ri, ro) if ri != ro else LR.tucker2_conv(c, ro, max(1, ri - 1)),  # ranks swapped
    _tucker_core_untransposed,
    lambda c, ro, ri: LR.hosvd_tucker2(c.weight, ro, ri),  # the numpy factors, not a module
]
TUCKER_RIGHT = [LR.tucker2_conv, _tucker, _tucker_learner_hosvd]

# ----------------------------------------------------------------------------- the tests

CASES: dict[str, tuple[list[Callable], list[Callable]]] = {
    "check_truncated_svd": (SVD_WRONG, SVD_RIGHT),
    "check_low_rank_error": (ERR_WRONG, ERR_RIGHT),
    "check_rank_for_energy": (ENERGY_WRONG, ENERGY_RIGHT),
    "check_factorize_linear": (FACT_WRONG, FACT_RIGHT),
    "check_factorize_conv": (CONV_WRONG, CONV_RIGHT),
    "check_hosvd": (HOSVD_WRONG, HOSVD_RIGHT),
    "check_tucker2_macs": (MACS_WRONG, MACS_RIGHT),
    "check_tucker2_conv": (TUCKER_WRONG, TUCKER_RIGHT),
}


@pytest.mark.parametrize(("name", "index"), [(n, i) for n in CASES for i in range(len(CASES[n][0]))])
def test_wrong_answer_is_rejected_with_a_message(name: str, index: int) -> None:
    with pytest.raises(checks.CheckFailure) as error:
        getattr(checks, name)(CASES[name][0][index])
    message = str(error.value)
    assert "expected" in message and "got" in message and "hint" in message, message


@pytest.mark.parametrize(("name", "index"), [(n, i) for n in CASES for i in range(len(CASES[n][1]))])
def test_correct_alternative_passes(name: str, index: int, capsys: pytest.CaptureFixture) -> None:
    getattr(checks, name)(CASES[name][1][index])
    assert capsys.readouterr().out.startswith(f"PASSED {name}")


def test_float32_svd_on_a_float64_input_is_told_to_compute_in_float64() -> None:
    with pytest.raises(checks.CheckFailure, match="compute in float64"):
        checks.check_truncated_svd(_svd_float32)


@pytest.mark.parametrize("fn", [_svd_float32, _svd_float32_returned_as_float64, _svd_torch_float32, _svd_gram_float32])
def test_float32_on_the_way_leads_with_compute_in_float64(fn) -> None:
    """Values that agree to float32 precision only: the hint starts with "compute in float64" (not "keep the LARGEST"),
    and expected / got show enough digits to differ visibly."""
    with pytest.raises(checks.CheckFailure) as error:
        checks.check_truncated_svd(fn)
    message = str(error.value)
    hint = message.split("hint:", 1)[1].strip()
    assert hint.startswith("compute in float64"), message
    expected, got = (line.split(":", 1)[1].strip() for line in message.splitlines()[1:3])
    assert expected != got, message


def test_in_place_mutation_is_named() -> None:
    for name, fn in (
        ("check_truncated_svd", _svd_in_place),
        ("check_low_rank_error", _err_in_place),
        ("check_rank_for_energy", _energy_in_place),
        ("check_hosvd", _hosvd_centred_in_place),
        ("check_factorize_linear", _factorize_mutates),
    ):
        with pytest.raises(checks.CheckFailure, match="in place"):
            getattr(checks, name)(fn)


def test_the_reference_factorize_conv_equals_the_rank_r_convolution() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, padding=1)
    block = LR.factorize_conv(conv, 4)
    W = conv.weight.detach().double()
    W_r = torch.from_numpy(LR.low_rank_approx(W.reshape(10, -1), 4)).reshape(W.shape)
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    expected = torch.nn.functional.conv2d(x, W_r, conv.bias.detach().double(), padding=1)
    assert torch.allclose(block.double()(x), expected, atol=1e-5)  # float32 weights
