"""Chapter 01 checks: plausible wrong answers are rejected with an expected/got/hint message, correct alternatives pass."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import checks
from helpers import pruning as P
from helpers.train import evaluate
from tests.test_checks import _sensitivity_args

# ----------------------------------------------------------------------------- magnitude masks


def mask_stable(w, s):
    k = round(s * w.size)
    order = np.argsort(np.abs(w).ravel(), kind="stable")
    mask = np.ones(w.size, dtype=bool)
    mask[order[:k]] = False
    return mask.reshape(w.shape)


def mask_lexsort(w, s):  # correct: lexsort by (|w|, index)
    k = round(s * w.size)
    flat = np.abs(w).ravel()
    order = np.lexsort((np.arange(flat.size), flat))
    mask = np.ones(flat.size, dtype=bool)
    mask[order[:k]] = False
    return mask.reshape(w.shape)


def mask_torch_stable(w, s):  # correct: torch.sort(stable=True), float64 scores, numpy back
    t = torch.from_numpy(np.abs(w).astype(np.float64)).flatten()
    k = round(s * t.numel())
    mask = torch.ones(t.numel(), dtype=torch.bool)
    mask[torch.sort(t, stable=True).indices[:k]] = False
    return mask.reshape(w.shape).numpy()


def mask_loop(w, s):  # correct: a Python loop over sorted (|w|, index) pairs
    k = round(s * w.size)
    pairs = sorted((abs(float(v)), i) for i, v in enumerate(w.ravel()))
    mask = np.ones(w.size, dtype=bool)
    for _, i in pairs[:k]:
        mask[i] = False
    return mask.reshape(w.shape)


def mask_default_argsort(w, s):  # wrong: unstable default sort (quicksort/introsort)
    k = round(s * w.size)
    order = np.argsort(np.abs(w).ravel())
    mask = np.ones(w.size, dtype=bool)
    mask[order[:k]] = False
    return mask.reshape(w.shape)


def mask_argpartition(w, s):  # wrong: argpartition picks an arbitrary set among ties
    k = round(s * w.size)
    mask = np.ones(w.size, dtype=bool)
    if k:
        mask[np.argpartition(np.abs(w).ravel(), k - 1)[:k]] = False
    return mask.reshape(w.shape)


def mask_topk(w, s):  # wrong: torch.topk of the largest to keep (ties unordered)
    t = torch.from_numpy(np.abs(w)).flatten()
    keep = t.numel() - round(s * t.numel())
    mask = torch.zeros(t.numel(), dtype=torch.bool)
    mask[torch.topk(t, keep).indices] = True
    return mask.reshape(w.shape).numpy()


def mask_in_place(w, s):  # wrong: np.abs(w, out=w) mutates the learner's (model's) array
    np.abs(w, out=w)
    return mask_stable(w, s)


def mask_float(w, s):  # wrong: float mask
    return mask_stable(w, s).astype(np.float64)


def mask_flat(w, s):  # wrong: forgets to reshape
    return mask_stable(w, s).ravel()


def mask_ceil(w, s):  # wrong: ceil instead of round
    k = int(np.ceil(s * w.size))
    order = np.argsort(np.abs(w).ravel(), kind="stable")
    mask = np.ones(w.size, dtype=bool)
    mask[order[:k]] = False
    return mask.reshape(w.shape)


def mask_no_abs(w, s):  # wrong: prunes the most negative, not the smallest |w|
    k = round(s * w.size)
    order = np.argsort(w.ravel(), kind="stable")
    mask = np.ones(w.size, dtype=bool)
    mask[order[:k]] = False
    return mask.reshape(w.shape)


def mask_threshold(w, s):  # wrong: |w| <= k-th smallest prunes every tied entry
    k = round(s * w.size)
    if k == 0:
        return np.ones(w.shape, dtype=bool)
    t = np.sort(np.abs(w).ravel())[k - 1]
    return np.abs(w) > t


MAGNITUDE_RIGHT = [mask_stable, mask_lexsort, mask_torch_stable, mask_loop, lambda w, s: torch.from_numpy(mask_stable(w, s))]
MAGNITUDE_WRONG = [
    mask_default_argsort,
    mask_argpartition,
    mask_topk,
    mask_in_place,
    mask_float,
    mask_flat,
    mask_ceil,
    mask_no_abs,
    mask_threshold,
]


@pytest.mark.parametrize("fn", MAGNITUDE_RIGHT)
def test_magnitude_mask_accepts(fn) -> None:
    checks.check_magnitude_mask(fn)


@pytest.mark.parametrize("fn", MAGNITUDE_WRONG)
def test_magnitude_mask_rejects(fn) -> None:
    with pytest.raises(checks.CheckFailure, match="expected"):
        checks.check_magnitude_mask(fn)


def test_magnitude_mask_unstable_sort_gets_the_tie_hint() -> None:
    with pytest.raises(checks.CheckFailure, match="stable"):
        checks.check_magnitude_mask(mask_argpartition)


def test_magnitude_mask_rejects_mutating_only_float32_views() -> None:
    def sneaky(w, s):  # mutates only float32 inputs (the weight.detach().numpy() case)
        if w.dtype == np.float32:
            w *= 1.0001
        return mask_stable(w, s)

    with pytest.raises(checks.CheckFailure, match="changed in place"):
        checks.check_magnitude_mask(sneaky)


# ----------------------------------------------------------------------------- global masks


def global_right(weights, s):
    flat = np.concatenate([w.ravel() for w in weights.values()])
    keep = mask_stable(flat, s)
    out, start = {}, 0
    for name, w in weights.items():
        out[name] = keep[start : start + w.size].reshape(w.shape)
        start += w.size
    return out


def global_torch(weights, s):  # correct: torch, stable sort, numpy masks back
    flat = torch.cat([torch.from_numpy(np.abs(w)).flatten() for w in weights.values()])
    k = round(s * flat.numel())
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.sort(flat, stable=True).indices[:k]] = False
    out, start = {}, 0
    for name, w in weights.items():
        out[name] = keep[start : start + w.size].reshape(w.shape).numpy()
        start += w.size
    return out


def global_with(mask_fn):
    def fn(weights, s):
        flat = np.concatenate([w.ravel() for w in weights.values()])
        keep = mask_fn(flat, s)
        out, start = {}, 0
        for name, w in weights.items():
            out[name] = keep[start : start + w.size].reshape(w.shape)
            start += w.size
        return out

    return fn


def global_in_place(weights, s):  # wrong: np.abs(w, out=w) on every layer
    for w in weights.values():
        np.abs(w, out=w)
    return global_right(weights, s)


def global_reversed_layers(weights, s):  # wrong: concatenates the layers in reverse order
    names = list(weights)[::-1]
    out = global_right({n: weights[n] for n in names}, s)
    return {n: out[n] for n in weights}


def global_sorted_names(weights, s):  # wrong: concatenates the layers sorted by name, not in the dict's order
    out = global_right({n: weights[n] for n in sorted(weights)}, s)
    return {n: out[n] for n in weights}


def global_sorted_items(weights, s):  # wrong: the same, written as a loop over sorted(weights.items())
    items = sorted(weights.items())
    flat = np.concatenate([np.abs(w).ravel() for _, w in items])
    keep = np.ones(flat.size, dtype=bool)
    keep[np.argsort(flat, kind="stable")[: round(s * flat.size)]] = False
    out, start = {}, 0
    for name, w in items:
        out[name] = keep[start : start + w.size].reshape(w.shape)
        start += w.size
    return out


def global_entries_sorted(weights, s):  # correct: one list of (|w|, layer position, flat index), sorted as tuples
    entries = sorted((float(v), li, j) for li, w in enumerate(weights.values()) for j, v in enumerate(np.abs(w).ravel()))
    out = {n: np.ones(w.shape, dtype=bool) for n, w in weights.items()}
    names = list(weights)
    for _, li, j in entries[: round(s * len(entries))]:
        out[names[li]].reshape(-1)[j] = False
    return out


def global_flat_masks(weights, s):  # wrong: masks left flat
    return {n: m.ravel() for n, m in global_right(weights, s).items()}


def global_per_layer(weights, s):  # wrong: per-layer, not global
    return {n: mask_stable(w, s) for n, w in weights.items()}


GLOBAL_RIGHT = [global_right, global_torch, global_with(mask_lexsort), global_entries_sorted]
GLOBAL_WRONG = [
    global_with(mask_argpartition),
    global_with(mask_default_argsort),
    global_with(mask_float),
    global_in_place,
    global_reversed_layers,
    global_sorted_names,
    global_sorted_items,
    global_flat_masks,
    global_per_layer,
]


@pytest.mark.parametrize("fn", GLOBAL_RIGHT)
def test_global_masks_accepts(fn) -> None:
    checks.check_global_masks(fn)


@pytest.mark.parametrize("fn", GLOBAL_WRONG)
def test_global_masks_rejects(fn) -> None:
    with pytest.raises(checks.CheckFailure, match="expected"):
        checks.check_global_masks(fn)


def test_global_masks_sorted_names_is_really_wrong_and_named_in_the_hint() -> None:
    """Dict order is the documented tie rule across layers: with keys b, a the tie at |w| = 1 is pruned in b."""
    weights = {"b": np.array([1.0, 2.0]), "a": np.array([1.0, 3.0])}
    assert global_right(weights, 0.25)["b"].tolist() == [False, True]
    assert global_sorted_names(weights, 0.25)["b"].tolist() == [True, True]
    with pytest.raises(checks.CheckFailure, match="not sorted by name"):
        checks.check_global_masks(global_sorted_names)


# ----------------------------------------------------------------------------- gradual schedule


def gradual_right(step, final, begin, end, initial=0.0):
    if step <= begin:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1 - (step - begin) / (end - begin)) ** 3


GRADUAL_RIGHT = [
    gradual_right,
    lambda step, final, begin, end, initial=0.0: np.float32(gradual_right(step, final, begin, end, initial)).astype(np.float64),
    lambda step, final, begin, end, initial=0.0: torch.tensor(gradual_right(step, final, begin, end, initial), dtype=torch.float64),
    lambda step, final, begin, end, initial=0.0: float(
        final + (initial - final) * (1 - np.clip((step - begin) / (end - begin), 0.0, 1.0)) ** 3
    ),  # vectorisable clip form
]
GRADUAL_WRONG = [
    lambda step, final, begin, end, initial=0.0: (
        final + (initial - final) * (1 - min(max((step - begin) // (end - begin), 0), 1)) ** 3
    ),  # //
    lambda step, final, begin, end, initial=0.0: final * (1 - (1 - min(max((step - begin) / (end - begin), 0), 1)) ** 3),  # drops s_i
    lambda step, final, begin, end, initial=0.0: final + (initial - final) * (1 - min(max((step - begin) / (end - begin), 0), 1)) ** 2,
    lambda step, final, begin, end, initial=0.0: initial + (final - initial) * min(max((step - begin) / (end - begin), 0), 1) ** 3,
    lambda step, final, begin, end, initial=0.0: f"{gradual_right(step, final, begin, end, initial):.3f}",  # a string
    lambda step, final, begin, end, initial=0.0: round(gradual_right(step, final, begin, end, initial), 3),  # rounded
]


@pytest.mark.parametrize("fn", GRADUAL_RIGHT)
def test_gradual_accepts(fn) -> None:
    checks.check_gradual_sparsity(fn)


@pytest.mark.parametrize("fn", GRADUAL_WRONG)
def test_gradual_rejects(fn) -> None:
    with pytest.raises(checks.CheckFailure, match="expected"):
        checks.check_gradual_sparsity(fn)


# ----------------------------------------------------------------------------- CSR


def csr_right(dense):
    rows, cols = np.nonzero(dense)
    row_ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=dense.shape[0]))])
    return dense[rows, cols], cols, row_ptr


def csr_loop(dense):  # correct: loops, Python lists, int32 indices
    values, cols, ptr = [], [], [0]
    for row in dense:
        for j, v in enumerate(row):
            if v != 0:
                values.append(v)
                cols.append(j)
        ptr.append(len(values))
    return np.array(values, dtype=dense.dtype), np.array(cols, dtype=np.int32), np.array(ptr, dtype=np.int32)


def csr_smallest_types(dense):  # correct: uint16 indices, float32 values
    v, c, r = csr_right(dense)
    return v.astype(np.float32), c.astype(np.uint16), r.astype(np.uint16)


def csr_torch(dense):  # correct: via torch's CSR layout
    t = torch.from_numpy(dense).to_sparse_csr()
    return t.values(), t.col_indices(), t.crow_indices()


CSR_RIGHT = [csr_right, csr_loop, csr_smallest_types, csr_torch]
CSR_WRONG = [
    lambda d: (csr_right(d)[0], csr_right(d)[1], np.concatenate([[0.0], np.cumsum(np.bincount(np.nonzero(d)[0], minlength=d.shape[0]))])),
    lambda d: (csr_right(d)[0], csr_right(d)[1].astype(float), csr_right(d)[2]),  # float column indices
    lambda d: (csr_right(d)[0], csr_right(d)[1], np.cumsum(np.bincount(np.nonzero(d)[0], minlength=d.shape[0] + 1))),  # ptr shifted
    lambda d: (csr_right(d)[0], csr_right(d)[1], np.concatenate([[0], np.cumsum(np.bincount(np.nonzero(d)[0]))])),  # no minlength
    lambda d: (csr_right(d)[0], csr_right(d)[1], csr_right(d)[2] + 1),  # 1-based pointers
    lambda d: (csr_right(d)[0], csr_right(d)[1]),  # two arrays
    lambda d: (np.abs(d, out=d)[np.nonzero(d)], csr_right(d)[1], csr_right(d)[2]),  # mutates the input
    lambda d: (d.T[np.nonzero(d.T)], np.nonzero(d.T)[0], csr_right(d)[2]),  # column-major values
]


@pytest.mark.parametrize("fn", CSR_RIGHT)
def test_csr_accepts(fn) -> None:
    checks.check_csr_encode(fn)


@pytest.mark.parametrize("fn", CSR_WRONG)
def test_csr_rejects(fn) -> None:
    with pytest.raises(checks.CheckFailure, match="expected"):
        checks.check_csr_encode(fn)


# ----------------------------------------------------------------------------- sensitivity scan


def scan_right(model, data, sparsities):
    out = {}
    for layer in P.prunable_weights(model):
        out[layer] = []
        for s in sparsities:
            m = copy.deepcopy(model)
            P.apply_masks(m, {layer: P.magnitude_mask(P.prunable_weights(m)[layer].detach(), s)})
            out[layer].append(evaluate(m, data))
    return out


def scan_numpy_masks(model, data, sparsities):  # correct: numpy masks from a copied array, converted
    out = {}
    for layer, w in P.prunable_weights(model).items():
        w_np = w.detach().numpy().copy()
        out[layer] = []
        for s in sparsities:
            m = copy.deepcopy(model)
            P.apply_masks(m, {layer: torch.from_numpy(mask_stable(w_np, s))})
            out[layer].append(np.float64(evaluate(m, data)))
    return out


def scan_mutating_numpy(model, data, sparsities):  # wrong: np.abs(w, out=w) on weight.detach().numpy() (the model's memory)
    out = {}
    for layer, w in P.prunable_weights(model).items():
        out[layer] = []
        for s in sparsities:
            m = copy.deepcopy(model)
            a = w.detach().numpy()
            mask = torch.from_numpy(np.abs(a, out=a) > -1) if s == 0 else torch.from_numpy(mask_stable(a, s))
            P.apply_masks(m, {layer: mask})
            out[layer].append(evaluate(m, data))
    return out


def scan_percent(model, data, sparsities):  # wrong: accuracy in percent
    return {k: [100 * a for a in v] for k, v in scan_right(model, data, sparsities).items()}


def scan_global(model, data, sparsities):  # wrong: prunes all layers at once
    out = {layer: [] for layer in P.prunable_weights(model)}
    for s in sparsities:
        m = copy.deepcopy(model)
        P.apply_masks(m, {n: P.magnitude_mask(w.detach(), s) for n, w in P.prunable_weights(m).items()})
        for layer in out:
            out[layer].append(evaluate(m, data))
    return out


def scan_missing_last(model, data, sparsities):  # wrong: off by one over the sparsities
    return {k: v[:-1] for k, v in scan_right(model, data, sparsities).items()}


SCAN_RIGHT = [scan_right, scan_numpy_masks]
SCAN_WRONG = [scan_mutating_numpy, scan_percent, scan_global, scan_missing_last]


@pytest.mark.parametrize("fn", SCAN_RIGHT)
def test_scan_accepts(fn) -> None:
    checks.check_sensitivity_scan(fn, *_sensitivity_args())


@pytest.mark.parametrize("fn", SCAN_WRONG)
def test_scan_rejects(fn) -> None:
    model, data = _sensitivity_args()
    with pytest.raises(checks.CheckFailure, match="expected"):
        checks.check_sensitivity_scan(fn, model, data)


def test_scan_restores_a_model_it_caught_mutated() -> None:
    model, data = _sensitivity_args()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(checks.CheckFailure, match="modified"):
        checks.check_sensitivity_scan(scan_mutating_numpy, model, data)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- per-batch Taylor scores


def taylor_right(model, batches):
    totals = {n: torch.zeros_like(w) for n, w in P.prunable_weights(model).items()}
    for x, y in batches:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for n, w in P.prunable_weights(model).items():
            totals[n] += (w.detach() * w.grad) ** 2
    return {n: t / len(batches) for n, t in totals.items()}


def taylor_autograd_float64(model, batches):  # correct: torch.autograd.grad, float64 accumulation, numpy result
    weights = P.prunable_weights(model)
    totals = {n: np.zeros(tuple(w.shape)) for n, w in weights.items()}
    for x, y in batches:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(weights.values()))
        for (n, w), g in zip(weights.items(), grads):
            totals[n] += (w.detach().double() * g.double()).numpy() ** 2
    return {n: t / len(batches) for n, t in totals.items()}


def taylor_stacked(model, batches):  # correct: stack per-batch gradients, then square and average over the stack
    grads = {n: [] for n in P.prunable_weights(model)}
    for x, y in batches:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for n, w in P.prunable_weights(model).items():
            grads[n].append(w.grad.clone())
    return {n: ((w.detach() * torch.stack(grads[n])) ** 2).mean(0) for n, w in P.prunable_weights(model).items()}


def taylor_averaged_gradient(model, batches):  # wrong: averages the gradient first, squares once
    model.zero_grad()
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()
    return {n: (w.detach() * w.grad / len(batches)) ** 2 for n, w in P.prunable_weights(model).items()}


def taylor_abs(model, batches):  # wrong: |w g| per batch, not squared
    totals = {n: torch.zeros_like(w) for n, w in P.prunable_weights(model).items()}
    for x, y in batches:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for n, w in P.prunable_weights(model).items():
            totals[n] += (w.detach() * w.grad).abs()
    return {n: t / len(batches) for n, t in totals.items()}


def taylor_no_zero_grad(model, batches):  # wrong: gradients pile up across batches
    totals = {n: torch.zeros_like(w) for n, w in P.prunable_weights(model).items()}
    model.zero_grad()
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()
        for n, w in P.prunable_weights(model).items():
            totals[n] += (w.detach() * w.grad) ** 2
    return {n: t / len(batches) for n, t in totals.items()}


def taylor_sum(model, batches):  # wrong: the sum over batches
    return {n: t * len(batches) for n, t in taylor_right(model, batches).items()}


def taylor_sum_loss(model, batches):  # wrong: reduction="sum"
    totals = {n: torch.zeros_like(w) for n, w in P.prunable_weights(model).items()}
    for x, y in batches:
        model.zero_grad()
        F.cross_entropy(model(x), y, reduction="sum").backward()
        for n, w in P.prunable_weights(model).items():
            totals[n] += (w.detach() * w.grad) ** 2
    return {n: t / len(batches) for n, t in totals.items()}


def taylor_no_grad(model, batches):  # wrong: the loss computed under no_grad
    totals = {n: torch.zeros_like(w) for n, w in P.prunable_weights(model).items()}
    for x, y in batches:
        with torch.no_grad():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
    return totals


def taylor_signed(model, batches):  # wrong: the signed product, not squared
    totals = {n: torch.zeros_like(w) for n, w in P.prunable_weights(model).items()}
    for x, y in batches:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for n, w in P.prunable_weights(model).items():
            totals[n] += w.detach() * w.grad
    return {n: t / len(batches) for n, t in totals.items()}


def taylor_steps(model, batches):  # wrong: takes an SGD step per batch (changes the model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out = taylor_right(model, batches)
    optimizer.step()
    return out


def taylor_fc1_only(model, batches):  # wrong: one layer only
    return {"fc1": taylor_right(model, batches)["fc1"]}


TAYLOR_RIGHT = [taylor_right, taylor_autograd_float64, taylor_stacked]
TAYLOR_WRONG = [
    taylor_averaged_gradient,
    taylor_abs,
    taylor_no_zero_grad,
    taylor_sum,
    taylor_sum_loss,
    taylor_no_grad,
    taylor_signed,
    taylor_steps,
    taylor_fc1_only,
]


@pytest.mark.parametrize("fn", TAYLOR_RIGHT)
def test_taylor_accepts(fn) -> None:
    checks.check_taylor_scores(fn)


@pytest.mark.parametrize("fn", TAYLOR_WRONG)
def test_taylor_rejects(fn) -> None:
    with pytest.raises(checks.CheckFailure, match="expected"):
        checks.check_taylor_scores(fn)
