"""Chapter 02 lab checks: plausible wrong answers are rejected with a message, correct alternatives pass."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from helpers import checks
from helpers import pruning as P

# ----------------------------------------------------------------------------- nm_mask


def conv_aware(fn2d):
    """Lift a 2-d (out, in) mask function to conv weights: input channels last, mask, and back."""

    def fn(w, n=2, m=4):
        if w.ndim != 4:
            return fn2d(w, n, m)
        out, c, kh, kw = w.shape
        mask = fn2d(w.transpose(0, 2, 3, 1).reshape(-1, c), n, m)
        mask = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        return mask.reshape(out, kh, kw, c).transpose(0, 3, 1, 2)

    fn.__name__ = fn2d.__name__
    return fn


def nm_ref(w, n=2, m=4):
    """The solution: stable argsort ascending, prune the m - n smallest."""
    if w.shape[-1] % m:
        raise ValueError("indivisible")
    groups = np.abs(w).reshape(-1, m)
    order = np.argsort(groups, axis=1, kind="stable")
    mask = np.ones(groups.shape, dtype=bool)
    np.put_along_axis(mask, order[:, : m - n], False, axis=1)
    return mask.reshape(w.shape)


def nm_float64_rank(w, n=2, m=4):
    """Correct: rank = number of entries that beat it (larger, or equal and later) - a loop-free counting sort."""
    if w.shape[-1] % m:
        raise ValueError("indivisible")
    g = np.abs(w.astype(np.float64)).reshape(-1, m)
    idx = np.arange(m)
    beats = (g[:, None, :] > g[:, :, None]) | ((g[:, None, :] == g[:, :, None]) & (idx[None, :] > idx[:, None]))
    return (beats.sum(2) < n).reshape(w.shape)


def nm_loop(w, n=2, m=4):
    """Correct: plain Python loops, sorted() is stable."""
    if w.shape[-1] % m:
        raise ValueError("indivisible")
    mask = np.zeros(w.shape, dtype=bool)
    for r in range(w.shape[0]):
        for start in range(0, w.shape[1], m):
            group = [abs(float(v)) for v in w[r, start : start + m]]
            for i in sorted(range(m), key=lambda i: group[i])[m - n :]:
                mask[r, start + i] = True
    return mask


def nm_torch(w, n=2, m=4):
    """Correct: torch stable sort, returns a torch bool tensor."""
    if w.shape[-1] % m:
        raise ValueError("indivisible")
    g = torch.as_tensor(w).abs().reshape(-1, m)
    order = torch.sort(g, dim=1, stable=True).indices
    mask = torch.ones_like(g, dtype=torch.bool)
    mask.scatter_(1, order[:, : m - n], False)
    return mask.reshape(w.shape)


def nm_unstable_argsort(w, n=2, m=4):
    """Wrong: ties broken by the sort's whim (np.argsort without kind='stable' on the flattened |w|)."""
    if w.shape[-1] % m:
        raise ValueError("indivisible")
    groups = np.abs(w).reshape(-1, m)
    order = np.argsort(-groups, axis=1, kind="quicksort")  # descending by negation: ties keep the lower index
    mask = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(mask, order[:, :n], True, axis=1)
    return mask.reshape(w.shape)


def nm_argpartition(w, n=2, m=4):
    """Wrong: argpartition does not order ties."""
    if w.shape[-1] % m:
        raise ValueError("indivisible")
    groups = np.abs(w).reshape(-1, m)
    part = np.argpartition(groups, m - n, axis=1)
    mask = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(mask, part[:, m - n :], True, axis=1)
    return mask.reshape(w.shape)


def nm_topk(w, n=2, m=4):
    """Wrong: torch.topk's order among ties is not specified."""
    if w.shape[-1] % m:
        raise ValueError("indivisible")
    g = torch.as_tensor(w).abs().reshape(-1, m)
    mask = torch.zeros_like(g, dtype=torch.bool)
    mask.scatter_(1, torch.topk(g, n, dim=1).indices, True)
    return mask.reshape(w.shape).numpy()


def nm_in_place(w, n=2, m=4):
    """Wrong: np.abs(w, out=w) destroys the caller's signs."""
    if w.shape[-1] % m:
        raise ValueError("indivisible")
    np.abs(w, out=w)
    return nm_ref(w, n, m)


def nm_float_mask(w, n=2, m=4):
    """Wrong: a 0/1 float mask where a bool mask is documented (w[mask] would index rows 0 and 1)."""
    return nm_ref(w, n, m).astype(np.float32)


def nm_keeps_signed_largest(w, n=2, m=4):
    """Wrong: ranks w instead of |w|."""
    if w.shape[-1] % m:
        raise ValueError("indivisible")
    groups = w.reshape(-1, m)
    order = np.argsort(groups, axis=1, kind="stable")
    mask = np.ones(groups.shape, dtype=bool)
    np.put_along_axis(mask, order[:, : m - n], False, axis=1)
    return mask.reshape(w.shape)


def nm_prunes_n(w, n=2, m=4):
    """Wrong: prunes n instead of m - n (same for 2:4, wrong for 1:4 and 2:8)."""
    if w.shape[-1] % m:
        raise ValueError("indivisible")
    groups = np.abs(w).reshape(-1, m)
    order = np.argsort(groups, axis=1, kind="stable")
    mask = np.ones(groups.shape, dtype=bool)
    np.put_along_axis(mask, order[:, :n], False, axis=1)
    return mask.reshape(w.shape)


def nm_assert_instead_of_error(w, n=2, m=4):
    """Wrong: an AssertionError instead of the documented ValueError."""
    assert w.shape[-1] % m == 0, "indivisible"
    return nm_ref(w, n, m)


def nm_conv_along_kw(w, n=2, m=4):
    """Wrong: reshapes the raw 4-d conv weight, so groups run along the kernel width, not the input channels."""
    if w.shape[1] % m:
        raise ValueError("indivisible")
    groups = np.abs(w).reshape(-1, m)
    order = np.argsort(groups, axis=1, kind="stable")
    mask = np.ones(groups.shape, dtype=bool)
    np.put_along_axis(mask, order[:, : m - n], False, axis=1)
    return mask.reshape(w.shape)


def nm_stable_descending(w, n=2, m=4):
    """Wrong: a stable sort of -|w| keeps the first n, so among ties it keeps the LOWER index (the rule prunes it first)."""
    if w.shape[-1] % m:
        raise ValueError("indivisible")
    groups = np.abs(w).reshape(-1, m)
    mask = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(mask, np.argsort(-groups, axis=1, kind="stable")[:, :n], True, axis=1)
    return mask.reshape(w.shape)


def nm_conv_not_transposed_back(w, n=2, m=4):
    """Wrong: masks in (out, kh, kw, in) order and reshapes (not transposes) back to the weight's shape."""
    if w.ndim != 4:
        return nm_ref(w, n, m)
    a = w.transpose(0, 2, 3, 1)
    return nm_ref(np.ascontiguousarray(a), n, m).reshape(w.shape)


NM_CORRECT = [conv_aware(f) for f in (nm_ref, nm_float64_rank, nm_loop, nm_torch)]
NM_WRONG = [
    conv_aware(f)
    for f in (
        nm_unstable_argsort,
        nm_argpartition,
        nm_topk,
        nm_float_mask,
        nm_keeps_signed_largest,
        nm_prunes_n,
        nm_assert_instead_of_error,
        nm_stable_descending,
    )
] + [nm_in_place, nm_conv_along_kw, nm_conv_not_transposed_back]


@pytest.mark.parametrize("fn", NM_CORRECT, ids=lambda f: f.__name__)
def test_nm_mask_accepts(fn):
    checks.check_nm_mask(fn)


@pytest.mark.parametrize("fn", NM_WRONG, ids=lambda f: f.__name__)
def test_nm_mask_rejects(fn):
    with pytest.raises(checks.CheckFailure):
        checks.check_nm_mask(fn)


@pytest.mark.parametrize(
    ("fn", "says"),
    [
        (conv_aware(nm_unstable_argsort), "stable sort"),
        (conv_aware(nm_argpartition), "stable sort"),
        (conv_aware(nm_topk), "stable sort"),
        (conv_aware(nm_stable_descending), "stable sort"),
        (conv_aware(nm_keeps_signed_largest), "n largest |w|"),
        (nm_conv_along_kw, "input channels"),
        (nm_conv_not_transposed_back, "input channels"),
        (conv_aware(nm_float_mask), "boolean mask"),
    ],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_nm_mask_hint_is_short_and_names_the_mistake(fn, says):
    """A hint a learner reads at a glance (<= 130 characters) that names the likely mistake."""
    with pytest.raises(checks.CheckFailure) as caught:
        checks.check_nm_mask(fn)
    hint = str(caught.value).split("hint:", 1)[1].strip()
    assert says in hint and len(hint) <= 130, hint


# ----------------------------------------------------------------------------- top_filters


def top_ref(weight, keep, norm="l1"):
    flat = weight.detach().flatten(1)
    scores = flat.abs().sum(1) if norm == "l1" else flat.pow(2).sum(1).sqrt()
    order = np.argsort(-scores.numpy().astype(np.float64), kind="stable")
    return torch.from_numpy(np.sort(order[:keep]))


def top_torch_stable(weight, keep, norm="l1"):
    """Correct: torch only, stable descending sort, float64 scores."""
    flat = weight.detach().double().flatten(1)
    scores = flat.norm(p=1, dim=1) if norm == "l1" else flat.norm(p=2, dim=1)
    return torch.sort(torch.sort(scores, descending=True, stable=True).indices[:keep]).values


def top_loop(weight, keep, norm="l1"):
    """Correct: Python loop, sorted() by (-score, index)."""
    scores = []
    for i in range(weight.shape[0]):
        row = weight[i].detach().reshape(-1)
        scores.append(float(row.abs().sum()) if norm == "l1" else float((row**2).sum().sqrt()))
    chosen = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:keep]
    return torch.tensor(sorted(chosen), dtype=torch.long)


def top_topk(weight, keep, norm="l1"):
    """Wrong: torch.topk's order among ties is unspecified."""
    flat = weight.detach().flatten(1)
    scores = flat.abs().sum(1) if norm == "l1" else flat.norm(dim=1)
    return torch.sort(torch.topk(scores, keep).indices).values


def top_unstable_argsort(weight, keep, norm="l1"):
    """Wrong: argsort ascending and take the last `keep`: among ties the HIGHER index is kept."""
    flat = weight.detach().flatten(1)
    scores = (flat.abs().sum(1) if norm == "l1" else flat.norm(dim=1)).numpy()
    return torch.from_numpy(np.sort(np.argsort(scores, kind="stable")[-keep:]))


def top_in_place(weight, keep, norm="l1"):
    """Wrong: abs_() on the caller's weight."""
    flat = weight.detach().flatten(1)
    flat.abs_()
    return top_ref(weight, keep, norm)


def top_numpy(weight, keep, norm="l1"):
    """Wrong type: a numpy array where a torch LongTensor is documented."""
    return top_ref(weight, keep, norm).numpy()


def top_float(weight, keep, norm="l1"):
    """Wrong type: float indices."""
    return top_ref(weight, keep, norm).float()


def top_l2_squared_only_sum(weight, keep, norm="l1"):
    """Wrong: L2 computed as the plain sum of weights (signed)."""
    flat = weight.detach().flatten(1)
    scores = flat.abs().sum(1) if norm == "l1" else flat.sum(1)
    order = np.argsort(-scores.numpy().astype(np.float64), kind="stable")
    return torch.from_numpy(np.sort(order[:keep]))


def top_first_input_channel(weight, keep, norm="l1"):
    """Wrong: scores only weight[:, 0] (the first input channel)."""
    return top_ref(weight[:, :1], keep, norm)


TOP_CORRECT = [top_ref, top_torch_stable, top_loop]
TOP_WRONG = [top_topk, top_unstable_argsort, top_in_place, top_numpy, top_float, top_l2_squared_only_sum, top_first_input_channel]


@pytest.mark.parametrize("fn", TOP_CORRECT, ids=lambda f: f.__name__)
def test_top_filters_accepts(fn):
    checks.check_top_filters(fn)


@pytest.mark.parametrize("fn", TOP_WRONG, ids=lambda f: f.__name__)
def test_top_filters_rejects(fn):
    with pytest.raises(checks.CheckFailure):
        checks.check_top_filters(fn)


# ----------------------------------------------------------------------------- shrink_conv_pair


def pair_ref(conv, nxt, keep):
    small = nn.Conv2d(conv.in_channels, len(keep), conv.kernel_size, stride=conv.stride, padding=conv.padding)
    small_next = nn.Conv2d(len(keep), nxt.out_channels, nxt.kernel_size, stride=nxt.stride, padding=nxt.padding)
    with torch.no_grad():
        small.weight.copy_(conv.weight[keep])
        small.bias.copy_(conv.bias[keep])
        small_next.weight.copy_(nxt.weight[:, keep])
        small_next.bias.copy_(nxt.bias)
    return small, small_next


def pair_deepcopy(conv, nxt, keep):
    """Correct: deepcopy, new Parameters, attributes updated."""
    small, small_next = copy.deepcopy(conv), copy.deepcopy(nxt)
    small.weight = nn.Parameter(conv.weight.detach()[keep].clone())
    small.bias = nn.Parameter(conv.bias.detach()[keep].clone())
    small.out_channels = len(keep)
    small_next.weight = nn.Parameter(nxt.weight.detach()[:, keep].clone())
    small_next.in_channels = len(keep)
    return small, small_next


def pair_bool_mask(conv, nxt, keep):
    """Correct: a boolean mask selects the same channels (keep is sorted in the check)."""
    mask = torch.zeros(conv.out_channels, dtype=torch.bool)
    mask[keep] = True
    return P.shrink_pair(conv, nxt, torch.nonzero(mask).flatten())


def pair_stale_attributes(conv, nxt, keep):
    """Wrong: right weights, but out_channels / in_channels still describe the original layers."""
    small, small_next = copy.deepcopy(conv), copy.deepcopy(nxt)
    small.weight = nn.Parameter(conv.weight.detach()[keep].clone())
    small.bias = nn.Parameter(conv.bias.detach()[keep].clone())
    small_next.weight = nn.Parameter(nxt.weight.detach()[:, keep].clone())
    return small, small_next


def pair_bias_forgotten(conv, nxt, keep):
    """Wrong: the first conv keeps its fresh random bias."""
    small, small_next = pair_ref(conv, nxt, keep)
    with torch.no_grad():
        small.bias.copy_(torch.randn(len(keep)))
    return small, small_next


def pair_next_bias_forgotten(conv, nxt, keep):
    """Wrong: the next conv keeps its fresh random bias."""
    small, small_next = pair_ref(conv, nxt, keep)
    with torch.no_grad():
        small_next.bias.zero_()
    return small, small_next


def pair_wrong_axis(conv, nxt, keep):
    """Wrong: next layer sliced along its output channels... padded to run: weight[keep] of in-channels via narrow."""
    small, small_next = pair_ref(conv, nxt, keep)
    with torch.no_grad():
        small_next.weight.copy_(nxt.weight[:, : len(keep)])  # the first len(keep) input channels
    return small, small_next


def pair_shared_bias(conv, nxt, keep):
    """Wrong: the new next layer shares the original's bias Parameter; fine-tuning one changes the other."""
    small, small_next = pair_ref(conv, nxt, keep)
    small_next.bias = nxt.bias
    return small, small_next


def pair_in_place(conv, nxt, keep):
    """Wrong: zeroes the dropped filters of the original."""
    with torch.no_grad():
        drop = torch.ones(conv.out_channels, dtype=torch.bool)
        drop[keep] = False
        conv.weight[drop] = 0
    return pair_ref(conv, nxt, keep)


def pair_no_padding(conv, nxt, keep):
    """Wrong: new layers built without the original padding."""
    small = nn.Conv2d(conv.in_channels, len(keep), conv.kernel_size)
    small_next = nn.Conv2d(len(keep), nxt.out_channels, nxt.kernel_size)
    with torch.no_grad():
        small.weight.copy_(conv.weight[keep])
        small.bias.copy_(conv.bias[keep])
        small_next.weight.copy_(nxt.weight[:, keep])
        small_next.bias.copy_(nxt.bias)
    return small, small_next


def pair_frozen(conv, nxt, keep):
    """Wrong: parameters that cannot be fine-tuned (requires_grad=False)."""
    small, small_next = pair_ref(conv, nxt, keep)
    for p in (*small.parameters(), *small_next.parameters()):
        p.requires_grad_(False)
    return small, small_next


PAIR_CORRECT = [pair_ref, pair_deepcopy, pair_bool_mask, lambda c, s, keep: P.shrink_pair(c, s, keep)]
PAIR_WRONG = [
    pair_stale_attributes,
    pair_bias_forgotten,
    pair_next_bias_forgotten,
    pair_wrong_axis,
    pair_shared_bias,
    pair_in_place,
    pair_no_padding,
    pair_frozen,
]


@pytest.mark.parametrize("fn", PAIR_CORRECT, ids=lambda f: f.__name__)
def test_shrink_conv_pair_accepts(fn):
    checks.check_shrink_conv_pair(fn)


@pytest.mark.parametrize("fn", PAIR_WRONG, ids=lambda f: f.__name__)
def test_shrink_conv_pair_rejects(fn):
    with pytest.raises(checks.CheckFailure):
        checks.check_shrink_conv_pair(fn)


def test_stale_attributes_message_says_why():
    with pytest.raises(checks.CheckFailure, match="out_channels"):
        checks.check_shrink_conv_pair(pair_stale_attributes)


# ----------------------------------------------------------------------------- shrink_conv_linear


def _conv_keep(conv, keep):
    small = nn.Conv2d(conv.in_channels, len(keep), conv.kernel_size, stride=conv.stride, padding=conv.padding)
    with torch.no_grad():
        small.weight.copy_(conv.weight[keep])
        small.bias.copy_(conv.bias[keep])
    return small


def _linear_columns(linear, columns, bias=True):
    new = nn.Linear(len(columns), linear.out_features)
    with torch.no_grad():
        new.weight.copy_(linear.weight[:, columns])
        if bias:
            new.bias.copy_(linear.bias)
    return new


def cl_ref(conv, linear, keep, spatial):
    features = (keep[:, None] * spatial + torch.arange(spatial)[None, :]).flatten()
    return _conv_keep(conv, keep), _linear_columns(linear, features)


def cl_reshape(conv, linear, keep, spatial):
    """Correct: view the linear weight as (out, C, spatial), slice channels, flatten back."""
    w = linear.weight.detach().reshape(linear.out_features, conv.out_channels, spatial)[:, keep].reshape(linear.out_features, -1)
    new = nn.Linear(w.shape[1], linear.out_features)
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(linear.bias)
    return _conv_keep(conv, keep), new


def cl_loop(conv, linear, keep, spatial):
    """Correct: build the feature list with a loop."""
    features = [int(c) * spatial + s for c in keep for s in range(spatial)]
    return _conv_keep(conv, keep), _linear_columns(linear, torch.tensor(features))


def cl_channels_last(conv, linear, keep, spatial):
    """Wrong: assumes channel-last flattening (feature s*C + c)."""
    features = (torch.arange(spatial)[:, None] * conv.out_channels + keep[None, :]).flatten()
    return _conv_keep(conv, keep), _linear_columns(linear, features)


def cl_one_column_per_channel(conv, linear, keep, spatial):
    """Wrong: keeps column c only (forgets the spatial positions); padded so it runs: then columns repeated."""
    features = keep.repeat_interleave(spatial)
    return _conv_keep(conv, keep), _linear_columns(linear, features)


def cl_bias_forgotten(conv, linear, keep, spatial):
    """Wrong: the new Linear keeps its fresh random bias."""
    features = (keep[:, None] * spatial + torch.arange(spatial)[None, :]).flatten()
    return _conv_keep(conv, keep), _linear_columns(linear, features, bias=False)


def cl_stale_in_features(conv, linear, keep, spatial):
    """Wrong: a deepcopy of the Linear with the right weight but in_features unchanged."""
    small_conv, new = cl_ref(conv, linear, keep, spatial)
    stale = copy.deepcopy(linear)
    stale.weight = nn.Parameter(new.weight.detach().clone())
    return small_conv, stale


def cl_in_place(conv, linear, keep, spatial):
    """Wrong: zeroes the original linear's dropped columns."""
    features = (keep[:, None] * spatial + torch.arange(spatial)[None, :]).flatten()
    with torch.no_grad():
        drop = torch.ones(linear.in_features, dtype=torch.bool)
        drop[features] = False
        linear.weight[:, drop] = 0
    return cl_ref(conv, linear, keep, spatial)


def cl_conv_bias_forgotten(conv, linear, keep, spatial):
    """Wrong: the conv's bias is not copied."""
    small, new = cl_ref(conv, linear, keep, spatial)
    with torch.no_grad():
        small.bias.zero_()
    return small, new


CL_CORRECT = [cl_ref, cl_reshape, cl_loop, lambda c, lin, keep, spatial: P.shrink_pair(c, lin, keep, positions=spatial)]
CL_WRONG = [cl_channels_last, cl_one_column_per_channel, cl_bias_forgotten, cl_stale_in_features, cl_in_place, cl_conv_bias_forgotten]


@pytest.mark.parametrize("fn", CL_CORRECT, ids=lambda f: f.__name__)
def test_shrink_conv_linear_accepts(fn):
    checks.check_shrink_conv_linear(fn)


@pytest.mark.parametrize("fn", CL_WRONG, ids=lambda f: f.__name__)
def test_shrink_conv_linear_rejects(fn):
    with pytest.raises(checks.CheckFailure):
        checks.check_shrink_conv_linear(fn)


def test_stale_in_features_message_says_why():
    with pytest.raises(checks.CheckFailure, match="in_features"):
        checks.check_shrink_conv_linear(cl_stale_in_features)


# ----------------------------------------------------------------------------- lenet5_macs


def macs_ref(c1, c2, hidden):
    return c1 * 24 * 24 * 25 + c2 * 8 * 8 * c1 * 25 + 16 * c2 * hidden + hidden * 10


def macs_layers(c1, c2, hidden):
    """Correct: layer by layer with the conv formula, numpy ints."""
    layers = [(c1, 24 * 24, 1 * 5 * 5), (c2, 8 * 8, c1 * 5 * 5), (hidden, 1, c2 * 4 * 4), (10, 1, hidden)]
    return np.int64(sum(np.int64(o) * hw * k for o, hw, k in layers))


def macs_hooks(c1, c2, hidden):
    """Correct: count with the course's hook counter on a real model."""
    from helpers.metrics import count_macs
    from helpers.models import LeNet5

    return count_macs(LeNet5(channels=(c1, c2), hidden=hidden), (1, 1, 28, 28))


MACS_CORRECT = [macs_ref, macs_layers, macs_hooks, lambda c1, c2, h: float(macs_ref(c1, c2, h))]
MACS_WRONG = [
    lambda c1, c2, h: macs_ref(c1, c2, h) - h * 10,  # fc2 forgotten
    lambda c1, c2, h: macs_ref(c1, c2, h) - c1 * 24 * 24 * 25 + c1 * 28 * 28 * 25,  # conv1 on the input size
    lambda c1, c2, h: macs_ref(c1, c2, h) + c1 * 24 * 24 + c2 * 64 + h + 10,  # bias adds counted
    lambda c1, c2, h: macs_ref(c1, c2, h) - 16 * c2 * h + 64 * c2 * h,  # fc1 on the unpooled 8x8 map
    lambda c1, c2, h: macs_ref(c1, c2, h) - c2 * 8 * 8 * c1 * 25 + c2 * 8 * 8 * 25,  # conv2 ignores its c1 inputs
    lambda c1, c2, h: macs_ref(c1, c2, h) / 1e6,  # in millions
]


@pytest.mark.parametrize("fn", MACS_CORRECT)
def test_lenet5_macs_accepts(fn):
    checks.check_lenet5_macs(fn)


@pytest.mark.parametrize("fn", MACS_WRONG)
def test_lenet5_macs_rejects(fn):
    with pytest.raises(checks.CheckFailure):
        checks.check_lenet5_macs(fn)
