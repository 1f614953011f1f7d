"""Knowledge distillation: temperature softmax, the KD loss and its gradient, hints and attention transfer.

Conventions: logits have shape (batch, classes). ``kd_loss`` is Hinton et al. (2015)'s soft-target
term ``T**2 * KL(p_teacher || p_student)`` with both distributions softened by the temperature T,
averaged over the batch. The ``T**2`` keeps its gradient magnitude comparable to the hard-label
loss's as T changes. Functions accept numpy arrays or torch tensors (with autograd).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Array = np.ndarray | torch.Tensor


def _check_t(T: float) -> float:
    if isinstance(T, bool) or not isinstance(T, (int, float, np.floating)) or not T > 0:
        raise ValueError(f"T (temperature) must be a number > 0, got {T!r}")
    return float(T)


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return float(alpha)


def _check_logits(name: str, logits: Array) -> None:
    if not isinstance(logits, (np.ndarray, torch.Tensor)):
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(logits).__name__}")
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"{name} must have shape (batch, classes) with batch >= 1, got {tuple(logits.shape)}")


def softmax_t(logits: Array, T: float = 1.0) -> Array:
    """``softmax(logits / T)`` along the last axis, stable for large logits (the max is subtracted first)."""
    T = _check_t(T)
    if isinstance(logits, torch.Tensor):
        return torch.softmax(logits / T, dim=-1)
    return np.exp(log_softmax_t(logits, T))


def log_softmax_t(logits: Array, T: float = 1.0) -> Array:
    """``log softmax(logits / T)``, computed stably (log-sum-exp)."""
    T = _check_t(T)
    if isinstance(logits, torch.Tensor):
        return torch.log_softmax(logits / T, dim=-1)
    z = np.asarray(logits, dtype=np.float64) / T
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kd_loss(student_logits: Array, teacher_logits: Array, T: float) -> Array:
    """``T**2 * mean_batch KL(softmax(teacher / T) || softmax(student / T))``.

    numpy in -> float; torch in -> scalar tensor, differentiable w.r.t. the student's logits
    (the teacher's are treated as constants).
    """
    T = _check_t(T)
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    if tuple(student_logits.shape) != tuple(teacher_logits.shape):
        raise ValueError(f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}")
    if isinstance(student_logits, torch.Tensor):
        teacher = torch.as_tensor(teacher_logits, dtype=student_logits.dtype).detach()
        log_p = torch.log_softmax(teacher / T, dim=-1)
        log_q = torch.log_softmax(student_logits / T, dim=-1)
        return T * T * (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    log_p = log_softmax_t(np.asarray(teacher_logits), T)
    log_q = log_softmax_t(student_logits, T)
    return float(T * T * (np.exp(log_p) * (log_p - log_q)).sum(-1).mean())


def kd_grad(student_logits: np.ndarray, teacher_logits: np.ndarray, T: float) -> np.ndarray:
    """Gradient of :func:`kd_loss` w.r.t. the student's logits: ``T * (q - p) / batch``,
    with ``q = softmax(student / T)`` and ``p = softmax(teacher / T)``."""
    T = _check_t(T)
    _check_logits("student_logits", student_logits)
    q = softmax_t(student_logits, T)
    p = softmax_t(teacher_logits, T)
    return T * (q - p) / len(student_logits)


def distillation_loss(student_logits: Array, teacher_logits: Array, labels: Array, T: float, alpha: float) -> Array:
    """``alpha * kd_loss + (1 - alpha) * cross_entropy(student_logits, labels)``; alpha in [0, 1]."""
    _check_alpha(alpha)
    soft = kd_loss(student_logits, teacher_logits, T)
    if isinstance(student_logits, torch.Tensor):
        hard = F.cross_entropy(student_logits, torch.as_tensor(labels, dtype=torch.long))
    else:
        log_q = log_softmax_t(student_logits, 1.0)
        hard = float(-log_q[np.arange(len(labels)), np.asarray(labels)].mean())
    return alpha * soft + (1.0 - alpha) * hard


def ensemble_soft_targets(teacher_logits: list[np.ndarray], T: float) -> np.ndarray:
    """Soft targets of an ensemble: the mean over K teachers of ``softmax(logits_k / T)``, (batch, classes).

    The arithmetic mean of the probabilities (a mixture), one of the two ensemble targets Hinton et al. (2015)
    name (the other, the geometric mean, is what averaging logits gives): every teacher weighs the same
    whatever its logit scale. ``teacher_logits`` is a list of K >= 1 arrays of one shape (batch, classes)."""
    T = _check_t(T)
    if not isinstance(teacher_logits, (list, tuple)) or not teacher_logits:
        raise TypeError(f"teacher_logits must be a non-empty list of (batch, classes) arrays, got {type(teacher_logits).__name__}")
    for k, z in enumerate(teacher_logits):
        _check_logits(f"teacher_logits[{k}]", z)
        if tuple(z.shape) != tuple(teacher_logits[0].shape):
            raise ValueError(f"teacher_logits[{k}] has shape {tuple(z.shape)}, teacher 0 {tuple(teacher_logits[0].shape)}")
    return np.mean([np.exp(log_softmax_t(np.asarray(z, dtype=np.float64), T)) for z in teacher_logits], axis=0)


def _check_soft(student_logits: np.ndarray, soft_targets: np.ndarray, labels: np.ndarray, alpha: float) -> np.ndarray:
    _check_alpha(alpha)
    _check_logits("student_logits", student_logits)
    if np.shape(soft_targets) != np.shape(student_logits):
        raise ValueError(f"soft_targets {np.shape(soft_targets)} must have the student's shape {np.shape(student_logits)}")
    labels = np.asarray(labels)
    if labels.shape != (len(student_logits),) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be {len(student_logits)} integer class indices, got shape {labels.shape} dtype {labels.dtype}")
    return labels


def soft_target_loss(student_logits: np.ndarray, soft_targets: np.ndarray, labels: np.ndarray, T: float, alpha: float) -> float:
    """``alpha * T**2 * mean_b KL(p_b || softmax(s_b / T)) + (1 - alpha) * mean_b CE(y_b, softmax(s_b))`` in numpy.

    ``soft_targets`` p (batch, classes) are probabilities already at temperature T (e.g. :func:`ensemble_soft_targets`);
    entries equal to 0 contribute 0 (0 log 0 = 0). ``labels`` (batch,) integer classes."""
    T = _check_t(T)
    labels = _check_soft(student_logits, soft_targets, labels, alpha)
    p = np.asarray(soft_targets, dtype=np.float64)
    log_q = log_softmax_t(student_logits, T)
    p_log_p = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    kl = (p_log_p - p * log_q).sum(-1).mean()
    ce = -log_softmax_t(student_logits, 1.0)[np.arange(len(labels)), labels].mean()
    return float(alpha * T * T * kl + (1.0 - alpha) * ce)


def soft_target_grad(student_logits: np.ndarray, soft_targets: np.ndarray, labels: np.ndarray, T: float, alpha: float) -> np.ndarray:
    """Gradient of :func:`soft_target_loss` w.r.t. the student's logits, (batch, classes):
    ``(alpha * T * (softmax(s / T) - p) + (1 - alpha) * (softmax(s) - onehot(y))) / batch``."""
    T = _check_t(T)
    labels = _check_soft(student_logits, soft_targets, labels, alpha)
    onehot = np.eye(np.shape(student_logits)[1])[labels]
    q_t, q_1 = softmax_t(np.asarray(student_logits, dtype=np.float64), T), softmax_t(np.asarray(student_logits, dtype=np.float64), 1.0)
    return (alpha * T * (q_t - np.asarray(soft_targets, dtype=np.float64)) + (1.0 - alpha) * (q_1 - onehot)) / len(labels)


# ----------------------------------------------------------------------------- feature distillation


class HintRegressor(nn.Module):
    """FitNets' regressor (Romero et al. 2015): a 1x1 convolution mapping the student's hint-layer
    channels onto the teacher's, trained jointly with the student."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

    def forward(self, student_features: torch.Tensor) -> torch.Tensor:
        return self.proj(student_features)


def hint_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, regressor: nn.Module) -> torch.Tensor:
    """``mean((regressor(student) - teacher)**2)``: the student's features, mapped, should match the teacher's."""
    mapped = regressor(student_features)
    if mapped.shape != teacher_features.shape:
        raise ValueError(f"regressed student features {tuple(mapped.shape)} do not match the teacher's {tuple(teacher_features.shape)}")
    return F.mse_loss(mapped, teacher_features.detach())


def attention_map(features: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Spatial attention of a feature map (Zagoruyko & Komodakis 2017): ``sum_c |A_c|**p``, flattened
    and L2-normalised per example. (N, C, H, W) -> (N, H*W)."""
    if features.dim() != 4:
        raise ValueError(f"features must be (N, C, H, W), got shape {tuple(features.shape)}")
    return F.normalize(features.abs().pow(p).sum(1).flatten(1), dim=1)


def pooled_attention_map(features: torch.Tensor, size: int, p: int = 2) -> torch.Tensor:
    """:func:`attention_map` at a coarser grid: ``sum_c |A_c|**p`` (N, H, W), average-pooled over blocks of
    (H / size) x (W / size) pixels to (N, size, size), flattened and L2-normalised per example (an all-zero map
    stays zero). Lets maps of different sizes be compared, e.g. a 24x24 conv1 with an 8x8 conv2."""
    if features.dim() != 4:
        raise ValueError(f"features must be (N, C, H, W), got shape {tuple(features.shape)}")
    h, w = features.shape[-2:]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or h % size or w % size:
        raise ValueError(f"size must be a positive int dividing the map's height and width {h}x{w}, got {size!r}")
    energy = features.abs().pow(p).sum(1, keepdim=True)
    return F.normalize(F.avg_pool2d(energy, (h // size, w // size)).flatten(1), dim=1)


def attention_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Mean squared difference of the normalised attention maps (the authors' reference form).
    The spatial sizes must match; the channel counts may differ."""
    a_s, a_t = attention_map(student_features, p), attention_map(teacher_features, p).detach()
    if a_s.shape != a_t.shape:
        raise ValueError(f"attention maps differ in size: {tuple(a_s.shape)} vs {tuple(a_t.shape)}; match the spatial sizes")
    return (a_s - a_t).pow(2).mean()


# ----------------------------------------------------------------------------- a training loop


def soft_targets(teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """The teacher's log soft targets ``log softmax(teacher_logits / T)`` for a whole data set, computed once
    (the teacher is fixed, so recomputing them every batch and epoch would be wasted work)."""
    T = _check_t(T)
    _check_logits("teacher_logits", teacher_logits)
    return torch.log_softmax(torch.as_tensor(teacher_logits).detach().float() / T, dim=-1)


def kd_loss_from_soft_targets(student_logits: torch.Tensor, log_p: torch.Tensor, T: float) -> torch.Tensor:
    """:func:`kd_loss` with the teacher's side precomputed by :func:`soft_targets`: equal to
    ``kd_loss(student_logits, teacher_logits, T)`` when ``log_p = soft_targets(teacher_logits, T)``."""
    log_q = torch.log_softmax(student_logits / T, dim=-1)
    return T * T * (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def distill(
    student: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    epochs: int,
    T: float = 4.0,
    alpha: float = 0.9,
    lr: float = 0.05,
    seed: int = 0,
    batch_size: int = 64,
    extra_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    extra_params: list[nn.Parameter] | None = None,
    max_grad_norm: float = 5.0,
) -> nn.Module:
    """Train ``student`` on ``(x, y)`` with :func:`distillation_loss` against precomputed ``teacher_logits``.

    ``teacher_logits=None`` trains from scratch with cross-entropy (the same loop otherwise, so a
    comparison changes only the loss). The batch order depends only on ``seed`` (a fresh random
    permutation of the examples each epoch; the batches are slices of ``x`` indexed by it, no
    per-example DataLoader), so two calls with the same seed and the same initial weights see the
    same batches: a paired comparison. The teacher's soft targets are computed once
    (:func:`soft_targets`), not per batch. ``extra_loss(student, x_batch, index_batch)`` adds a
    feature loss (hint, attention); ``extra_params`` (e.g. a hint regressor) are trained along.
    Gradients are clipped to ``max_grad_norm``: sharp teachers give large early gradients at high
    temperature. Returns ``student``, in eval mode.
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    _check_alpha(alpha)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty and of equal length, got {len(x)} and {len(y)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    log_p = None
    if teacher_logits is not None:
        if len(teacher_logits) != len(x):
            raise ValueError(f"teacher_logits has {len(teacher_logits)} rows for {len(x)} examples")
        log_p = soft_targets(teacher_logits, T)
    T = float(T)
    generator = torch.Generator().manual_seed(seed)
    params = list(student.parameters()) + list(extra_params or [])
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    for _ in range(epochs):
        student.train()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            ib = order[start : start + batch_size]
            xb, yb = x[ib], y[ib]
            logits = student(xb)
            if log_p is None:
                loss = F.cross_entropy(logits, yb)
            else:
                loss = alpha * kd_loss_from_soft_targets(logits, log_p[ib], T)
                if alpha < 1.0:
                    loss = loss + (1.0 - alpha) * F.cross_entropy(logits, yb)
            if extra_loss is not None:
                loss = loss + extra_loss(student, xb, ib)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
        scheduler.step()
    student.eval()
    return student
