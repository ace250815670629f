"""Datasets in their real on-disk layouts, plus the synthetic scenes, as one kind of object.

Every dataset returns *raw* samples (``read(i)``): what a camera driver would publish, so evaluation
can push them through :class:`~rgbt_seg_ros.pipeline.SegmentationPipeline` exactly like replay does::

    {"rgb": H×W×3 uint8 (RGB order), "aux": 2-D array or H×W×3 (HHA) or None,
     "aux_encoding": "mono8" | "mono16" | "16UC1" | "32FC1" | "hha8",
     "labels": H×W uint8 (``IGNORE`` = 255 is never scored), "name": str, "tags": {"night": bool, ...}}

Layouts (``build_dataset(cfg)`` picks one by ``cfg["type"]``):

* ``mfnet``   ``images/*.png`` (4 channels R,G,B,T), ``labels/*.png``, ``{train,val,test,test_day,test_night}.txt``
* ``pst900``  ``{train,test}/{rgb,thermal,thermal_raw,depth,labels}/*.png``
* ``fmb``     ``{train,test}/{Visible,Infrared,Label}/*.png``
* ``rgbx``    CMX's RGB-X layout (NYU-Depth v2, SUN RGB-D): ``RGB/``, a modal-X folder (``HHA/`` or
  ``Depth/``), ``Label/``, ``train.txt``/``test.txt``; ``label_shift`` maps raw 0 (void) → 255 and k → k−1
* ``folder``  users' own data: ``rgb/``, ``thermal/`` or ``depth/``, ``labels/`` with matching file stems,
  optionally under a split folder (``train/rgb`` …) or listed in ``<split>.txt``
* ``synthetic`` :mod:`rgbt_seg_ros.synthetic` scenes, generated on the fly (thermal as T-linear mono16)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.pipeline.config import NormalizationConfig
from rgbt_seg_ros.pipeline.normalize import normalize_aux, scale_into, value_range
from rgbt_seg_ros.pipeline.palettes import ClassSet, get_class_set

IGNORE = 255
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


# ---------------------------------------------------------------------------------------------- file helpers

def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise RgbtSegError(f"{what}: folder {path} is missing")
    return path


def _index_folder(folder: Path) -> dict[str, Path]:
    """stem → image path (one listing per folder; names are matched by stem across folders)."""
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTS}


def _read_split(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise RgbtSegError(f"{what}: split file {path} is missing")
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            # Lines may be bare stems ("00001D") or paths ("RGB/1.jpg Label/1.png"): keep the first stem.
            names.append(Path(line.split()[0]).stem)
    if not names:
        raise RgbtSegError(f"{what}: split file {path} lists no samples")
    return names


def _lookup(index: dict[str, Path], stem: str, folder: Path, what: str) -> Path:
    try:
        return index[stem]
    except KeyError:
        raise RgbtSegError(f"{what}: {folder} has no image named {stem!r}") from None


def read_image(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    if img is None:
        raise RgbtSegError(f"image {path} is missing or not a readable image")
    return img


def _bgr_to_rgb(img: np.ndarray, path: Path) -> np.ndarray:
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.dtype != np.uint8:
        raise RgbtSegError(f"rgb image {path}: expected 8-bit, got {img.dtype}")
    return img


def _gray(img: np.ndarray) -> np.ndarray:
    # Thermal PNGs are often saved as 3 identical channels.
    return img if img.ndim == 2 else img[..., 0]


def _encoding_of(aux: np.ndarray, modality: str) -> str:
    if aux.ndim == 3:
        return "hha8"
    if aux.dtype == np.uint8:
        return "mono8"
    if aux.dtype == np.uint16:
        return "mono16" if modality == "thermal" else "16UC1"
    return "32FC1"


def _labels(img: np.ndarray, path: Path) -> np.ndarray:
    if img.ndim == 3:  # some tools save label maps as 3 equal channels
        img = img[..., 0]
    if img.dtype != np.uint8:
        if img.max() > 255:
            raise RgbtSegError(f"label image {path}: values above 255 are not supported")
        img = img.astype(np.uint8)
    return img


def _check_same_size(sample: dict, name: str) -> dict:
    h, w = sample["rgb"].shape[:2]
    for key in ("aux", "labels"):
        arr = sample.get(key)
        if arr is not None and arr.shape[:2] != (h, w):
            raise RgbtSegError(f"sample {name}: {key} is {arr.shape[1]}x{arr.shape[0]} but rgb is {w}x{h}")
    return sample


# ---------------------------------------------------------------------------------------------- base

class SegmentationDataset(torch.utils.data.Dataset):
    """A list of raw samples; ``transform`` (e.g. :class:`TrainTransform`) turns one into tensors."""

    name = "dataset"

    def __init__(self, class_set: ClassSet, modality: str, aux_channels: int = 1, transform=None):
        self.class_set = class_set
        self.modality = modality
        self.aux_channels = aux_channels
        self.transform = transform

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, index: int) -> dict:
        raise NotImplementedError

    def __getitem__(self, index: int):
        sample = self.read(index)
        return self.transform(sample, index) if self.transform is not None else sample


class _FileDataset(SegmentationDataset):
    """Rows of (name, rgb path, aux path, label path) resolved at construction, so a broken layout fails early."""

    def __init__(self, rows: list[tuple[str, Path, Path | None, Path]], class_set, modality, aux_channels=1,
                 tags=None):
        super().__init__(class_set, modality, aux_channels)
        self.rows = rows
        self._tags = tags or (lambda name: {})

    def __len__(self) -> int:
        return len(self.rows)

    def read_aux(self, path: Path) -> np.ndarray:
        img = read_image(path)
        return img if self.aux_channels == 3 and img.ndim == 3 else _gray(img)

    def read(self, index: int) -> dict:
        name, rgb_p, aux_p, lab_p = self.rows[index]
        rgb = _bgr_to_rgb(read_image(rgb_p), rgb_p)
        aux = None
        if aux_p is not None:
            aux = self.read_aux(aux_p)
            if aux.ndim == 3:
                aux = cv2.cvtColor(aux, cv2.COLOR_BGR2RGB)
        labels = self.map_labels(_labels(read_image(lab_p), lab_p))
        return _check_same_size({"rgb": rgb, "aux": aux, "aux_encoding": _encoding_of(aux, self.modality)
                                 if aux is not None else None, "labels": labels, "name": name,
                                 "tags": self._tags(name)}, name)

    def map_labels(self, labels: np.ndarray) -> np.ndarray:
        return labels


def _rows(names, what, rgb_dir, aux_dir, label_dir):
    rgb_i, lab_i = _index_folder(rgb_dir), _index_folder(label_dir)
    aux_i = _index_folder(aux_dir) if aux_dir is not None else None
    return [(n, _lookup(rgb_i, n, rgb_dir, what), _lookup(aux_i, n, aux_dir, what) if aux_i is not None else None,
             _lookup(lab_i, n, label_dir, what)) for n in names]


# ---------------------------------------------------------------------------------------------- layouts

class MFNetDataset(SegmentationDataset):
    """MFNet (Ha et al. 2017): 4-channel PNGs (R, G, B, thermal); names end in D (day) or N (night)."""

    name = "mfnet"
    SPLITS = ("train", "val", "test", "test_day", "test_night")

    def __init__(self, root: str | Path, split: str = "train"):
        super().__init__(get_class_set("mfnet"), "thermal", 1)
        root = Path(root)
        what = f"MFNet dataset {root}"
        if split not in self.SPLITS:
            raise RgbtSegError(f"{what}: split {split!r} is not one of {', '.join(self.SPLITS)}")
        img_dir = _need_dir(root / "images", what)
        lab_dir = _need_dir(root / "labels", what)
        names = _read_split(root / f"{split}.txt", what)
        img_i, lab_i = _index_folder(img_dir), _index_folder(lab_dir)
        self.rows = [(n, _lookup(img_i, n, img_dir, what), _lookup(lab_i, n, lab_dir, what)) for n in names]

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, index: int) -> dict:
        name, img_p, lab_p = self.rows[index]
        img = read_image(img_p)
        if img.ndim != 3 or img.shape[2] != 4:
            raise RgbtSegError(f"MFNet image {img_p}: expected 4 channels (R,G,B,thermal), got shape {img.shape}")
        if img.dtype != np.uint8:
            raise RgbtSegError(f"MFNet image {img_p}: expected 8-bit channels, got {img.dtype}")
        # cv2 returns a 4-channel PNG's channels in B,G,R,A order: stored R,G,B,T arrive as B,G,R,T.
        rgb = np.ascontiguousarray(img[..., 2::-1])
        thermal = np.ascontiguousarray(img[..., 3])
        night = name.upper().endswith("N")
        return _check_same_size({"rgb": rgb, "aux": thermal, "aux_encoding": "mono8",
                                 "labels": _labels(read_image(lab_p), lab_p), "name": name,
                                 "tags": {"night": night}}, name)


class PST900Dataset(_FileDataset):
    """PST900 (Shivakumar et al. 2020): ``{train,test}/{rgb,thermal,thermal_raw,depth,labels}``."""

    name = "pst900"

    def __init__(self, root: str | Path, split: str = "train", modality: str = "thermal", aux_folder: str | None = None):
        root = Path(root)
        what = f"PST900 dataset {root}"
        if split not in ("train", "test"):
            raise RgbtSegError(f"{what}: split {split!r} is not 'train' or 'test'")
        base = _need_dir(root / split, what)
        aux_folder = aux_folder or ("thermal" if modality == "thermal" else "depth")
        if aux_folder not in ("thermal", "thermal_raw", "depth"):
            raise RgbtSegError(f"{what}: aux_folder {aux_folder!r} is not thermal, thermal_raw or depth")
        rgb_dir, lab_dir = _need_dir(base / "rgb", what), _need_dir(base / "labels", what)
        aux_dir = _need_dir(base / aux_folder, what)
        names = sorted(_index_folder(rgb_dir))
        if not names:
            raise RgbtSegError(f"{what}: {rgb_dir} holds no images")
        super().__init__(_rows(names, what, rgb_dir, aux_dir, lab_dir), get_class_set("pst900"), modality)


class FMBDataset(_FileDataset):
    """FMB (Liu et al., ICCV 2023): ``{train,test}/{Visible,Infrared,Label}``."""

    name = "fmb"

    def __init__(self, root: str | Path, split: str = "train"):
        root = Path(root)
        what = f"FMB dataset {root}"
        if split not in ("train", "test"):
            raise RgbtSegError(f"{what}: split {split!r} is not 'train' or 'test'")
        base = _need_dir(root / split, what)
        rgb_dir, aux_dir = _need_dir(base / "Visible", what), _need_dir(base / "Infrared", what)
        lab_dir = _need_dir(base / "Label", what)
        names = sorted(_index_folder(rgb_dir))
        if not names:
            raise RgbtSegError(f"{what}: {rgb_dir} holds no images")
        super().__init__(_rows(names, what, rgb_dir, aux_dir, lab_dir), get_class_set("fmb"), "thermal")


class RGBXDataset(_FileDataset):
    """CMX's RGB-X layout (NYU-Depth v2, SUN RGB-D): ``RGB/``, modal-X folder, ``Label/``, ``train.txt``/``test.txt``.

    ``x_folder="HHA"`` gives 3-channel HHA (``aux_channels=3``), ``"Depth"`` single-channel depth.
    ``label_shift``: raw 0 is void → 255 (ignored), raw k → k−1, as CMX's ``gt_transform``.
    """

    name = "rgbx"

    def __init__(self, root: str | Path, split: str = "train", class_set: str = "nyuv2", x_folder: str = "HHA",
                 rgb_folder: str = "RGB", label_folder: str = "Label", label_shift: bool = True):
        root = Path(root)
        what = f"RGB-X dataset {root}"
        rgb_dir, x_dir = _need_dir(root / rgb_folder, what), _need_dir(root / x_folder, what)
        lab_dir = _need_dir(root / label_folder, what)
        names = _read_split(root / f"{split}.txt", what)
        self.label_shift = bool(label_shift)
        aux_channels = 3 if x_folder.upper() == "HHA" else 1
        super().__init__(_rows(names, what, rgb_dir, x_dir, lab_dir), get_class_set(class_set), "depth", aux_channels)

    def map_labels(self, labels: np.ndarray) -> np.ndarray:
        if not self.label_shift:
            return labels
        return (labels.astype(np.int16) - 1).astype(np.uint8)  # 0 - 1 wraps to 255 = ignored


class FolderDataset(_FileDataset):
    """Users' own data: ``rgb/``, ``thermal/`` (or ``depth/``), ``labels/`` with matching stems.

    ``split``: reads ``<root>/<split>/{rgb,…}`` when that folder exists, else ``<root>/<split>.txt`` when it
    exists, else every image in ``<root>/rgb``.
    """

    name = "folder"

    def __init__(self, root: str | Path, split: str | None = None, modality: str = "thermal",
                 class_set: str = "synthetic", aux_folder: str | None = None, aux_channels: int = 1):
        root = Path(root)
        what = f"image-folder dataset {root}"
        _need_dir(root, what)
        base = root / split if split and (root / split).is_dir() else root
        aux_folder = aux_folder or modality
        rgb_dir, aux_dir = _need_dir(base / "rgb", what), _need_dir(base / aux_folder, what)
        lab_dir = _need_dir(base / "labels", what)
        if split and base is root and (root / f"{split}.txt").is_file():
            names = _read_split(root / f"{split}.txt", what)
        else:
            names = sorted(_index_folder(rgb_dir))
        if not names:
            raise RgbtSegError(f"{what}: {rgb_dir} holds no images")
        super().__init__(_rows(names, what, rgb_dir, aux_dir, lab_dir), get_class_set(class_set), modality,
                         aux_channels)


def _whole_number(what: str, value, least: int) -> int:
    """``value`` as an int ≥ ``least``, or one error naming ``what`` (YAML gives "abc", 1.5 or true as easily)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise RgbtSegError(f"{what} must be a whole number ≥ {least}, got {value!r}")
    return value


class SyntheticDataset(SegmentationDataset):
    """Synthetic scenes generated on the fly. ``night``: "mixed" (odd indices at night), "day" or "night"."""

    name = "synthetic"

    def __init__(self, seed: int = 0, length: int = 1000, size: tuple[int, int] = (240, 320), night: str = "mixed",
                 modality: str = "thermal", offset: int = 0, cache: bool = False):
        from rgbt_seg_ros.synthetic import SceneGenerator

        super().__init__(get_class_set("synthetic"), modality, 1)
        seed, length, offset = (_whole_number(f"synthetic dataset: {key}", value, least) for key, value, least in
                                (("seed", seed, 0), ("length", length, 1), ("offset", offset, 0)))
        if not (isinstance(size, (list, tuple)) and len(size) == 2):
            raise RgbtSegError(f"synthetic dataset: size must be [height, width], got {size!r}")
        size = tuple(_whole_number("synthetic dataset: size", v, 8) for v in size)
        if not isinstance(cache, bool):
            raise RgbtSegError(f"synthetic dataset: cache must be true or false, got {cache!r}")
        if night not in ("mixed", "day", "night"):
            raise RgbtSegError(f"synthetic dataset: night {night!r} is not mixed, day or night")
        if modality not in ("thermal", "depth"):
            raise RgbtSegError(f"synthetic dataset: modality {modality!r} is not thermal or depth")
        self.generator = SceneGenerator(seed)
        self.length, self.size, self.night, self.offset = length, size, night, offset
        # Rendering costs more than a training step's data share on a small CPU: with ``cache`` every
        # frame is rendered once per process and reused across epochs (≈ 0.35 MB per 180×320 frame).
        self._cache: dict[int, dict] | None = {} if cache else None

    def __len__(self) -> int:
        return self.length

    def is_night(self, index: int) -> bool:
        return self.night == "night" or (self.night == "mixed" and index % 2 == 1)

    def read(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        night = self.is_night(index)
        f = self.generator.frame(self.offset + index, self.size[0], self.size[1], night=night, modality=self.modality)
        aux = f[self.modality]
        enc = "mono16" if self.modality == "thermal" else "32FC1"
        sample = {"rgb": f["rgb"], "aux": aux, "aux_encoding": enc, "labels": f["labels"],
                  "name": f"synthetic_{self.offset + index:06d}{'N' if night else 'D'}", "tags": {"night": night}}
        if self._cache is not None:
            self._cache[index] = sample
        return sample


DATASET_TYPES = {"mfnet": MFNetDataset, "pst900": PST900Dataset, "fmb": FMBDataset, "rgbx": RGBXDataset,
                 "folder": FolderDataset, "synthetic": SyntheticDataset}


def build_dataset(cfg: dict[str, Any], split: str | None = None) -> SegmentationDataset:
    """``cfg = {"type": <layout>, "root": ..., <layout options>}``; ``split`` overrides ``cfg["split"]``."""
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise RgbtSegError("dataset: config needs a 'type' (one of " + ", ".join(DATASET_TYPES) + ")")
    cfg = dict(cfg)
    kind = cfg.pop("type")
    if kind not in DATASET_TYPES:
        raise RgbtSegError(f"dataset.type: {kind!r} is not one of {', '.join(DATASET_TYPES)}")
    if split is not None:
        cfg["split"] = split
    cls = DATASET_TYPES[kind]
    import inspect

    params = inspect.signature(cls.__init__).parameters
    unknown = [k for k in cfg if k not in params]
    if unknown:
        raise RgbtSegError(f"dataset: {kind} does not take option {unknown[0]!r}; options: "
                           f"{', '.join(p for p in params if p != 'self')}")
    if kind != "synthetic" and "root" not in cfg:
        raise RgbtSegError(f"dataset: {kind} needs 'root' (the dataset folder)")
    return cls(**cfg)


# ---------------------------------------------------------------------------------------------- transforms

def aux_to_raw(aux: np.ndarray, encoding: str, modality: str, norm: NormalizationConfig | None = None
               ) -> tuple[np.ndarray, float, float]:
    """Raw aux image → (float32 H×W×C, lo, hi): the values to resize, and the range that maps them to [0, 1].

    Thermal stays in its own units until after every resize, then :func:`raw_to_unit` clips it, as the
    pipeline warps raw counts and clips afterwards: clipping first would blend clipped values into their
    neighbours at the range's ends, an input the network would never get at run time. NaN/inf temperatures
    are kept (they spread to their resize neighbours, as through the pipeline's warp, and come out 0).
    Depth and HHA come back in [0, 1] already (lo, hi = 0, 1): depth is resized nearest, so the order does not
    matter there; 8-bit depth (pre-scaled, as some RGB-D releases ship it) and 3-channel HHA are divided by
    255, other depth goes through the pipeline's own normalisation.
    """
    if modality == "thermal" and encoding != "hha8":
        lo, hi = value_range(aux, encoding, modality, norm)  # also checks encoding and dtype
        out = aux.astype(np.float32)
    else:
        lo, hi = 0.0, 1.0
        if encoding == "hha8" or (modality == "depth" and encoding == "mono8"):
            out = aux.astype(np.float32) * np.float32(1.0 / 255.0)
        else:
            out, _ = normalize_aux(aux, encoding, modality, norm)
    return (out if out.ndim == 3 else out[..., None]), lo, hi


def raw_to_unit(raw: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(raw − lo)/(hi − lo) clipped to [0, 1]; non-finite values → 0 (the pipeline's ``scale_into``)."""
    return scale_into(raw, lo, hi)


def aux_to_unit(aux: np.ndarray, encoding: str, modality: str, norm: NormalizationConfig | None = None) -> np.ndarray:
    """Raw aux image → float32 H×W×C in [0, 1] at its own size (see :func:`aux_to_raw`)."""
    return raw_to_unit(*aux_to_raw(aux, encoding, modality, norm))


class TrainTransform:
    """Joint augmentation + normalisation → (rgb 3×h×w, aux C×h×w, labels h×w int64) tensors.

    Geometric (scale, crop, flip) on all three; photometric changes on RGB only; modality dropout zeroes
    the aux tensor *after* standardisation — exactly what backends feed when the aux stream is lost.
    With ``train=False`` only the resize to ``size`` and the normalisation happen.
    """

    def __init__(self, size: tuple[int, int], modality: str, rgb_mean, rgb_std, aux_mean, aux_std, train: bool = True,
                 scale: tuple[float, float] = (0.5, 2.0), flip: bool = True, photometric: float = 0.0,
                 aux_dropout: float = 0.0, rgb_dropout: float = 0.0, seed: int = 0,
                 normalization: dict | None = None, ignore_index: int = IGNORE):
        self.size = (int(size[0]), int(size[1]))
        self.modality = modality
        self.rgb_mean = np.asarray(rgb_mean, np.float32)
        self.rgb_std = np.asarray(rgb_std, np.float32)
        self.aux_mean = np.asarray(aux_mean, np.float32).reshape(-1)
        self.aux_std = np.asarray(aux_std, np.float32).reshape(-1)
        self.train, self.scale, self.flip = train, tuple(scale), flip
        self.photometric, self.aux_dropout, self.rgb_dropout = float(photometric), float(aux_dropout), float(rgb_dropout)
        self.seed, self.epoch = int(seed), 0
        self.norm = NormalizationConfig.from_dict(normalization or {})
        self.ignore_index = ignore_index

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, sample: dict, index: int):
        # One generator per (seed, epoch, index): the same run sees the same augmentations, whatever the
        # number of workers or ranks.
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        rgb, labels = sample["rgb"], sample["labels"]
        aux = sample.get("aux")
        raw, lo, hi = aux_to_raw(aux, sample["aux_encoding"], self.modality, self.norm) if aux is not None else \
            (None, 0.0, 1.0)
        if self.train:
            # crop padding as the pipeline fills what the aux camera does not see (and letterbox bands):
            # thermal with the value that standardises to 0, depth with 0 = invalid
            fill = float(self.aux_mean.mean()) if self.modality == "thermal" else 0.0
            rgb, raw, labels = self._geometric(rng, rgb, raw, labels, pad_value=lo + fill * (hi - lo))
            rgb = self._photometric(rng, rgb)
        else:
            h, w = self.size
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
            if raw is not None:
                raw = resize_aux(raw, (w, h), self.modality)
            labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
        aux01 = raw_to_unit(raw, lo, hi) if raw is not None else None
        rgb_t = (rgb.astype(np.float32) / 255.0 - self.rgb_mean) / self.rgb_std
        c = len(self.aux_mean) if aux01 is None else aux01.shape[2]
        if aux01 is None:
            aux_t = np.zeros(rgb.shape[:2] + (c,), np.float32)
        else:
            aux_t = (aux01 - self.aux_mean) / self.aux_std
        if self.train and self.aux_dropout > 0 and rng.random() < self.aux_dropout:
            aux_t = np.zeros_like(aux_t)
        elif self.train and self.rgb_dropout > 0 and rng.random() < self.rgb_dropout:
            rgb_t = np.zeros_like(rgb_t)
        return (torch.from_numpy(np.ascontiguousarray(rgb_t.transpose(2, 0, 1), np.float32)),
                torch.from_numpy(np.ascontiguousarray(aux_t.transpose(2, 0, 1), np.float32)),
                torch.from_numpy(labels.astype(np.int64)))

    def _geometric(self, rng, rgb, aux, labels, pad_value: float = 0.0):
        h, w = self.size
        # Scale relative to the native resolution; the crop then covers part of the (rescaled) image.
        s = float(rng.uniform(*self.scale))
        nh, nw = max(1, int(round(rgb.shape[0] * s))), max(1, int(round(rgb.shape[1] * s)))
        if (nh, nw) != rgb.shape[:2]:
            rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
            labels = cv2.resize(labels, (nw, nh), interpolation=cv2.INTER_NEAREST)
            if aux is not None:
                aux = resize_aux(aux, (nw, nh), self.modality)
        # Pad (labels with ignore) up to the crop size, then crop at a random position.
        ph, pw = max(0, h - nh), max(0, w - nw)
        if ph or pw:
            rgb = cv2.copyMakeBorder(rgb, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            labels = cv2.copyMakeBorder(labels, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=self.ignore_index)
            if aux is not None:
                aux = np.pad(aux, ((0, ph), (0, pw), (0, 0)), constant_values=pad_value)
        y0 = int(rng.integers(0, rgb.shape[0] - h + 1))
        x0 = int(rng.integers(0, rgb.shape[1] - w + 1))
        rgb, labels = rgb[y0:y0 + h, x0:x0 + w], labels[y0:y0 + h, x0:x0 + w]
        if aux is not None:
            aux = aux[y0:y0 + h, x0:x0 + w]
        if self.flip and rng.random() < 0.5:
            rgb, labels = rgb[:, ::-1], labels[:, ::-1]
            if aux is not None:
                aux = aux[:, ::-1]
        return rgb, aux, labels

    def _photometric(self, rng, rgb):
        if self.photometric <= 0:
            return rgb
        p = self.photometric
        img = rgb.astype(np.float32)
        img = img * float(rng.uniform(1 - 0.4 * p, 1 + 0.4 * p)) + float(rng.uniform(-32, 32) * p)  # gain, offset
        mean = img.mean()
        img = (img - mean) * float(rng.uniform(1 - 0.4 * p, 1 + 0.4 * p)) + mean  # contrast
        gray = img.mean(axis=2, keepdims=True)
        img = gray + (img - gray) * float(rng.uniform(1 - 0.5 * p, 1 + 0.5 * p))  # saturation
        if rng.random() < 0.3 * p:
            img = img + rng.normal(0.0, 6.0 * p, img.shape).astype(np.float32)  # sensor noise
        return np.clip(img, 0, 255).astype(np.uint8)


def resize_aux(aux: np.ndarray, wh: tuple[int, int], modality: str) -> np.ndarray:
    """Resize as the inference pipeline does: depth nearest (invalid zeros must not blend into valid depths;
    ``INTER_NEAREST_EXACT``, the pipeline's nearest), thermal bilinear."""
    interpolation = cv2.INTER_NEAREST_EXACT if modality == "depth" else cv2.INTER_LINEAR
    out = cv2.resize(aux, wh, interpolation=interpolation)
    return out if out.ndim == 3 else out[..., None]
