"""Confusion matrix → per-class IoU / accuracy, mIoU, mAcc; reports and a confusion-matrix plot.

Conventions (``ClassSet.unlabelled_counts`` in ``pipeline/palettes.py`` says which applies):

* MFNet, PST900, synthetic: every class counts, class 0 ("unlabelled"/"background") included, as those
  papers report mIoU;
* FMB: class 0 ("unlabelled") is scored in the matrix but left out of mIoU/mAcc, as FMB results are reported;
* NYU-Depth v2, SUN RGB-D: void pixels are label 255 and never scored; all 40 / 37 classes count.

Pixels whose ground truth is ``ignore_index`` are dropped before counting. A class that never occurs in
the ground truth and is never predicted has an undefined IoU (NaN) and is left out of the means.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rgbt_seg_ros.errors import RgbtSegError

IGNORE = 255


class ConfusionMatrix:
    """Accumulates a K×K matrix: rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int, ignore_index: int | None = IGNORE):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, pred, target) -> None:
        pred = np.asarray(pred).reshape(-1).astype(np.int64)
        target = np.asarray(target).reshape(-1).astype(np.int64)
        if pred.shape != target.shape:
            raise ValueError(f"prediction has {pred.size} pixels, ground truth {target.size}")
        keep = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            ignored = target == self.ignore_index
            keep &= ~ignored
        else:
            ignored = np.zeros_like(keep)
        stray = ~keep & ~ignored
        if stray.any():  # a label map of another class set: metrics without these pixels would look fine
            bad = np.unique(target[stray])
            raise RgbtSegError(f"ground truth holds class ids {', '.join(map(str, bad[:5]))} outside "
                               f"0..{self.num_classes - 1} (ignore index {self.ignore_index}) in {int(stray.sum())} "
                               "pixels; check the dataset's class set and label mapping")
        pred, target = pred[keep], target[keep]
        if pred.size and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(f"prediction holds class ids outside 0..{self.num_classes - 1}")
        self.matrix += np.bincount(target * self.num_classes + pred,
                                   minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.matrix += other.matrix

    def scores(self, class_names=None, exclude: tuple[int, ...] = ()) -> "Scores":
        return scores_from_matrix(self.matrix, class_names, exclude)


@dataclass
class Scores:
    class_names: list[str]
    iou: np.ndarray  # per class, NaN where undefined
    acc: np.ndarray  # per-class recall (pixel accuracy of the class), NaN where the class is absent
    miou: float
    macc: float
    pixel_acc: float
    excluded: list[int] = field(default_factory=list)
    matrix: np.ndarray | None = None

    def as_dict(self) -> dict:
        return {"mIoU": self.miou, "mAcc": self.macc, "pixel_acc": self.pixel_acc,
                "per_class": {n: {"IoU": _f(i), "Acc": _f(a)} for n, i, a in zip(self.class_names, self.iou, self.acc)},
                "excluded_from_means": [self.class_names[i] for i in self.excluded]}


def _f(x) -> float | None:
    return None if not np.isfinite(x) else float(x)


def scores_from_matrix(matrix: np.ndarray, class_names=None, exclude: tuple[int, ...] = ()) -> Scores:
    m = np.asarray(matrix, np.float64)
    k = m.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    tp = np.diag(m)
    gt = m.sum(1)
    pred = m.sum(0)
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    keep = np.ones(k, bool)
    keep[list(exclude)] = False
    miou = float(np.nanmean(iou[keep])) if np.isfinite(iou[keep]).any() else float("nan")
    macc = float(np.nanmean(acc[keep])) if np.isfinite(acc[keep]).any() else float("nan")
    total = m.sum()
    return Scores(names, iou, acc, miou, macc, float(tp.sum() / total) if total else float("nan"),
                  sorted(set(exclude)), np.asarray(matrix))


def excluded_classes(class_set) -> tuple[int, ...]:
    """Classes the dataset's convention leaves out of mIoU (class 0 where ``unlabelled_counts`` is False)."""
    return () if getattr(class_set, "unlabelled_counts", True) else (0,)


def markdown_table(results: dict[str, Scores]) -> str:
    """One column group per split (e.g. all / day / night): per-class IoU and Acc, then the means."""
    splits = list(results)
    names = results[splits[0]].class_names
    head = "| class | " + " | ".join(f"IoU {s} | Acc {s}" for s in splits) + " |"
    sep = "|---|" + "---|---|" * len(splits)
    rows = [head, sep]
    pct = lambda v: "–" if not np.isfinite(v) else f"{100 * v:.1f}"  # noqa: E731
    for i, n in enumerate(names):
        mark = " (not in means)" if i in results[splits[0]].excluded else ""
        rows.append(f"| {n}{mark} | " + " | ".join(f"{pct(results[s].iou[i])} | {pct(results[s].acc[i])}"
                                                   for s in splits) + " |")
    rows.append("| **mean** | " + " | ".join(f"**{pct(results[s].miou)}** | **{pct(results[s].macc)}**"
                                             for s in splits) + " |")
    rows.append("| pixel acc | " + " | ".join(f"{pct(results[s].pixel_acc)} | " for s in splits) + " |")
    return "\n".join(rows) + "\n"


def csv_table(results: dict[str, Scores]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["split", "class", "IoU", "Acc"])
    for split, sc in results.items():
        for n, i, a in zip(sc.class_names, sc.iou, sc.acc):
            w.writerow([split, n, "" if not np.isfinite(i) else f"{i:.6f}", "" if not np.isfinite(a) else f"{a:.6f}"])
        w.writerow([split, "mIoU", f"{sc.miou:.6f}", ""])
        w.writerow([split, "mAcc", "", f"{sc.macc:.6f}"])
    return buf.getvalue()


def plot_confusion(matrix: np.ndarray, class_names, path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (ground truth rows) as a PNG, with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.nan_to_num(m / m.sum(1, keepdims=True))
    k = len(class_names)
    size = max(4.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] < 0.5 else "black")
    ax.set_title(title or "confusion matrix (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
