"""Evaluate a model file on a dataset through the same pipeline code path as replay.

Each raw sample goes through :class:`rgbt_seg_ros.pipeline.SegmentationPipeline` (aux normalisation,
registration, resize to the card's input size, backend, labels back at full resolution) and the labels
are scored at the dataset's own resolution. Two cases cannot take that path and are evaluated with the
training transform instead (resize + the same normalisation, then the backend directly): 3-channel HHA
depth and 8-bit pre-scaled depth, which the pipeline's sensor-message path does not accept (a camera
never publishes them). ``rgb_only=True`` feeds no aux image (the backends then feed zeros, as modality
dropout trains).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.training.datasets import IGNORE, SegmentationDataset, aux_to_raw, raw_to_unit, resize_aux
from rgbt_seg_ros.training.metrics import (ConfusionMatrix, Scores, csv_table, excluded_classes, markdown_table,
                                           plot_confusion)


@dataclass
class EvalResult:
    scores: dict[str, Scores]  # "all" and, where the dataset tags day/night, "day" and "night"
    num_samples: int
    path: str  # "pipeline" or "direct"


def _direct_infer(backend, sample: dict, modality: str, norm) -> np.ndarray:
    card = backend.card
    h, w = card.input_size
    rgb = cv2.resize(sample["rgb"], (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    rgb = ((rgb - np.asarray(card.rgb_mean, np.float32)) / np.asarray(card.rgb_std, np.float32)).transpose(2, 0, 1)
    aux = None
    if sample.get("aux") is not None:
        raw, lo, hi = aux_to_raw(sample["aux"], sample["aux_encoding"], modality, norm)
        a = raw_to_unit(resize_aux(raw, (w, h), modality), lo, hi)  # as training and the pipeline resize it
        aux = ((a - np.asarray(card.aux_mean, np.float32)) / np.asarray(card.aux_std, np.float32)).transpose(2, 0, 1)
        aux = aux[None].astype(np.float32)
    logits = backend.infer(rgb[None].astype(np.float32), aux)
    pred = logits[0].argmax(0).astype(np.uint8)
    H, W = sample["labels"].shape
    return cv2.resize(pred, (W, H), interpolation=cv2.INTER_NEAREST)


def evaluate(backend, dataset: SegmentationDataset, rgb_only: bool = False, pipeline_config: dict | None = None,
             limit: int | None = None, progress: bool = False) -> EvalResult:
    """Score ``backend`` (see :func:`rgbt_seg_ros.inference.create_backend`) on every sample of ``dataset``."""
    from rgbt_seg_ros.pipeline.config import NormalizationConfig, PipelineConfig
    from rgbt_seg_ros.pipeline.pipeline import SegmentationPipeline

    card = backend.card
    cs = dataset.class_set
    if card.num_classes != cs.num_classes:
        raise RgbtSegError(f"model has {card.num_classes} classes but dataset {dataset.name} has {cs.num_classes} "
                           f"({cs.name})")
    if card.modality != dataset.modality and not rgb_only:
        raise RgbtSegError(f"model modality is {card.modality!r} but dataset {dataset.name} provides {dataset.modality!r}")
    pcfg = pipeline_config if isinstance(pipeline_config, PipelineConfig) else \
        PipelineConfig.from_dict(pipeline_config or {})
    pipe = SegmentationPipeline(backend, pcfg)
    norm: NormalizationConfig = pipe.normalization  # the card's, under the config's explicit keys
    excl = excluded_classes(cs)
    cms = {"all": ConfusionMatrix(cs.num_classes, IGNORE)}
    n = len(dataset) if limit is None else min(limit, len(dataset))
    path = "pipeline"
    it = range(n)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="evaluate", dynamic_ncols=True)
    for i in it:
        s = dataset.read(i)
        aux = None if rgb_only else s.get("aux")
        if aux is not None and (s["aux_encoding"] == "hha8" or (dataset.modality == "depth" and s["aux_encoding"] == "mono8")):
            pred = _direct_infer(backend, s, dataset.modality, norm)
            path = "direct"
        else:
            res = pipe.process(s["rgb"], aux, s["aux_encoding"] or "mono8", outputs={"labels"})
            pred = res.labels
        cms["all"].update(pred, s["labels"])
        night = s.get("tags", {}).get("night")
        if night is not None:
            key = "night" if night else "day"
            cms.setdefault(key, ConfusionMatrix(cs.num_classes, IGNORE)).update(pred, s["labels"])
    order = [k for k in ("all", "day", "night") if k in cms]
    scores = {k: cms[k].scores(cs.class_names, excl) for k in order}
    return EvalResult(scores, n, path)


def label_agreement(backends: dict, dataset: SegmentationDataset, reference: str,
                    pipeline_config: dict | None = None, limit: int | None = None) -> dict[str, float]:
    """Fraction of pixels on which each backend's label equals ``backends[reference]``'s label.

    Every backend runs through its own :class:`SegmentationPipeline` with the same config, so the
    comparison covers what users get (registration, normalisation, post-processing), not only the network.
    """
    from rgbt_seg_ros.pipeline.pipeline import SegmentationPipeline

    if reference not in backends:
        raise RgbtSegError(f"label_agreement: reference backend {reference!r} is not among {', '.join(backends)}")
    pipes = {name: SegmentationPipeline(b, pipeline_config) for name, b in backends.items()}
    same = dict.fromkeys(backends, 0)
    total = 0
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        s = dataset.read(i)
        labels = {name: p.process(s["rgb"], s.get("aux"), s["aux_encoding"] or "mono8", outputs={"labels"}).labels
                  for name, p in pipes.items()}
        ref = labels[reference]
        total += ref.size
        for name, lab in labels.items():
            same[name] += int(np.count_nonzero(lab == ref))
    return {name: same[name] / total for name in backends}


def write_report(result: EvalResult, out_dir: str | Path, title: str) -> dict[str, Path]:
    """report.md (tables per score group), metrics.csv, metrics.json and confusion_<group>.png.

    Groups: ``all``, plus ``day`` / ``night`` where the dataset tags samples (MFNet, synthetic)."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    md = [f"# {title}", "", f"{result.num_samples} samples, evaluated through the {result.path} path.", ""]
    excl = result.scores["all"].excluded
    if excl:
        md.append("Excluded from the means by the dataset's convention: "
                  + ", ".join(result.scores["all"].class_names[i] for i in excl) + ".")
        md.append("")
    md.append(markdown_table(result.scores))
    files["report.md"] = out / "report.md"
    files["report.md"].write_text("\n".join(md), encoding="utf-8")
    files["metrics.csv"] = out / "metrics.csv"
    files["metrics.csv"].write_text(csv_table(result.scores), encoding="utf-8")
    files["metrics.json"] = out / "metrics.json"
    files["metrics.json"].write_text(json.dumps({k: v.as_dict() for k, v in result.scores.items()}, indent=2),
                                     encoding="utf-8")
    for k, sc in result.scores.items():
        files[f"confusion_{k}.png"] = plot_confusion(sc.matrix, sc.class_names, out / f"confusion_{k}.png",
                                                     f"{title} — {k}")
    return files
