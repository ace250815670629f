"""Losses and task-weighting utilities the training config switches on.

* segmentation: cross-entropy with ignore index and class weights, Dice, OHEM cross-entropy;
  :func:`deep_supervision` applies one of them to ``"aux_logits"`` heads of any resolution;
* :func:`kd_kl` — knowledge distillation, KL(teacher ‖ student) on temperature-softened class
  distributions, × T² (Hinton et al. 2015), over labelled pixels;
* :func:`random_patch_mask` / :func:`fusion_loss` — MAFS stage 1 (masked reconstruction: inputs are hidden
  in 32×32 patches at a random ratio and the network's fused image must still carry both sources) and the
  fusion term of stage 2;
* :class:`AlphaFairDWA` — dynamic weight averaging of task losses (Liu et al., CVPR 2019) combined with the
  α-fair utility of each loss (MAFS: α = 0.8, T = 500).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE = 255


def _up(logits: torch.Tensor, size) -> torch.Tensor:
    return logits if logits.shape[-2:] == tuple(size) else F.interpolate(logits, size=size, mode="bilinear",
                                                                         align_corners=False)


def cross_entropy(logits, target, weight=None, ignore_index: int = IGNORE):
    return F.cross_entropy(_up(logits, target.shape[-2:]).float(), target, weight=weight, ignore_index=ignore_index)


def ohem_cross_entropy(logits, target, weight=None, ignore_index: int = IGNORE, thresh: float = 0.7,
                       min_kept: int = 100000):
    """Mean CE over the pixels whose true-class probability is below ``thresh`` (at least ``min_kept`` hardest)."""
    logits = _up(logits, target.shape[-2:]).float()
    pixel = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction="none").flatten()
    valid = target.flatten() != ignore_index
    pixel = pixel[valid]
    if pixel.numel() == 0:
        return logits.sum() * 0.0
    # p_true < thresh  <=>  CE > -log(thresh)
    hard = pixel[pixel > -math.log(thresh)]
    k = min(int(min_kept), pixel.numel())
    if hard.numel() < k:
        hard = torch.topk(pixel, k).values
    return hard.mean()


def dice_loss(logits, target, ignore_index: int = IGNORE, eps: float = 1.0):
    """1 − mean soft Dice over the classes present in the batch (labelled pixels only)."""
    logits = _up(logits, target.shape[-2:]).float()
    k = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)
    prob = logits.softmax(1) * valid
    onehot = F.one_hot(target.clamp(0, k - 1) * valid[:, 0], k).permute(0, 3, 1, 2).float() * valid
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    dice = (2 * inter + eps) / (denom + eps)
    return 1.0 - dice[present].mean() if present.any() else logits.sum() * 0.0


def kd_kl(student_logits, teacher_logits, temperature: float = 4.0, target=None, ignore_index: int = IGNORE):
    """KL(softmax(t/T) ‖ softmax(s/T)) · T², averaged over (labelled) pixels."""
    t = float(temperature)
    teacher_logits = _up(teacher_logits, student_logits.shape[-2:]).detach().float()
    log_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_t = F.log_softmax(teacher_logits / t, dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(1)  # B×H×W
    if target is not None:
        mask = (target != ignore_index).float()
        return (kl * mask).sum() / mask.sum().clamp_min(1.0) * t * t
    return kl.mean() * t * t


def random_patch_mask(batch: int, height: int, width: int, patch: int = 32, ratio=(0.1, 0.7),
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """B×1×H×W float mask, 0 on hidden patches: each image hides a random ratio (uniform in ``ratio``) of its
    ``patch``×``patch`` cells."""
    gh, gw = math.ceil(height / patch), math.ceil(width / patch)
    ratios = torch.empty(batch, 1, 1).uniform_(float(ratio[0]), float(ratio[1]), generator=generator)
    keep = (torch.rand(batch, gh, gw, generator=generator) >= ratios).float()
    mask = keep.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, :height, :width]
    return mask.unsqueeze(1)


def _luma(rgb01: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], device=rgb01.device, dtype=rgb01.dtype).view(1, 3, 1, 1)
    return (rgb01 * w).sum(1, keepdim=True)


def _grad_mag(x: torch.Tensor) -> torch.Tensor:
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype)
    k = torch.stack([kx, kx.t()]).unsqueeze(1)
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k)
    return g.abs().sum(1, keepdim=True)


def fusion_loss(fused: torch.Tensor, rgb01: torch.Tensor, aux01: torch.Tensor, grad_weight: float = 10.0):
    """Intensity + texture loss of a grayscale fused image (in [-1, 1]) against both sources (in [0, 1]):
    L1 to the brighter source and L1 of its gradient magnitude to the stronger source gradient."""
    fused01 = (_up(fused, rgb01.shape[-2:]).float() + 1.0) * 0.5
    y, a = _luma(rgb01.float()), aux01.float().mean(1, keepdim=True)
    intensity = F.l1_loss(fused01, torch.maximum(y, a))
    texture = F.l1_loss(_grad_mag(fused01), torch.maximum(_grad_mag(y), _grad_mag(a)))
    return intensity + grad_weight * texture


class AlphaFairDWA:
    """Weights for K task losses: DWA weights ``w_k = K·softmax(r_k / T)`` from the ratio ``r_k`` of each task's
    mean loss over the last two periods, applied to the α-fair utility ``U_α(L) = L^(1−α) / (1−α)``
    (``log L`` at α = 1), which damps a task whose loss is large relative to the others.

    ``period`` steps make one "epoch" for the ratios; the first two periods use ``w_k = 1``.
    ``alpha = 0`` gives plain DWA. State is a dict of floats (checkpointed with the run).
    """

    def __init__(self, tasks: list[str], alpha: float = 0.8, temperature: float = 500.0, period: int = 100):
        self.tasks, self.alpha, self.temperature, self.period = list(tasks), float(alpha), float(temperature), int(period)
        self.history: list[list[float]] = []  # mean loss per completed period
        self._sum = [0.0] * len(self.tasks)
        self._count = 0

    def weights(self) -> list[float]:
        k = len(self.tasks)
        if len(self.history) < 2:
            return [1.0] * k
        r = [a / max(b, 1e-12) for a, b in zip(self.history[-1], self.history[-2])]
        e = [math.exp(v / self.temperature) for v in r]
        s = sum(e)
        return [k * v / s for v in e]

    def utility(self, loss: torch.Tensor) -> torch.Tensor:
        loss = loss.clamp_min(1e-8)
        if abs(self.alpha - 1.0) < 1e-9:
            return loss.log()
        return loss.pow(1.0 - self.alpha) / (1.0 - self.alpha)

    def combine(self, losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        w = self.weights()
        total = sum(wk * self.utility(losses[t]) for wk, t in zip(w, self.tasks))
        for i, t in enumerate(self.tasks):
            self._sum[i] += float(losses[t].detach())
        self._count += 1
        if self._count == self.period:
            self.history.append([v / self._count for v in self._sum])
            self.history = self.history[-2:]
            self._sum, self._count = [0.0] * len(self.tasks), 0
        return total, {f"weight/{t}": wk for t, wk in zip(self.tasks, w)}

    def state_dict(self) -> dict:
        return {"history": [list(h) for h in self.history], "sum": list(self._sum), "count": self._count}

    def load_state_dict(self, state: dict) -> None:
        self.history = [list(map(float, h)) for h in state["history"]]
        self._sum = list(map(float, state["sum"]))
        self._count = int(state["count"])
