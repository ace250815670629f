"""Class names and colours of every dataset the package knows, in one place.

Colours are RGB uint8 triples. Where a dataset ships a palette (MFNet's visualisation palette, the
Cityscapes colours FMB's classes share) it is used; otherwise the palette is the deterministic
PASCAL-VOC bit-interleaving colour map (``voc_colormap``), documented in each set's ``notes``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rgbt_seg_ros.errors import RgbtSegError


def voc_colormap(n: int) -> list[tuple[int, int, int]]:
    """PASCAL-VOC colour map: class i's bits are spread over the high bits of R, G and B.

    Deterministic, distinct for any n ≤ 2**24, and familiar to anyone who has looked at VOC masks.
    """
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return colours


@dataclass(frozen=True)
class ClassSet:
    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int | None = None  # label value excluded from loss/metrics (255 for NYU/SUN), None if none
    unlabelled_counts: bool = True  # whether class 0 ("unlabelled"/"background") counts in the dataset's mIoU
    notes: str = ""

    def __post_init__(self):
        if len(self.class_names) != len(self.palette):
            raise RgbtSegError(f"class set {self.name}: {len(self.class_names)} names but {len(self.palette)} colours")
        for c in self.palette:
            if len(c) != 3 or not all(0 <= int(v) <= 255 for v in c):
                raise RgbtSegError(f"class set {self.name}: colour {c} is not an RGB uint8 triple")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def palette_array(self) -> np.ndarray:
        """K×3 uint8."""
        return np.asarray(self.palette, dtype=np.uint8).reshape(-1, 3)


def _set(name, names, palette, **kw) -> ClassSet:
    return ClassSet(name, tuple(names), tuple(tuple(int(v) for v in c) for c in palette), **kw)


# Cityscapes colours, used where FMB/synthetic classes coincide with Cityscapes ones.
_CITYSCAPES = {
    "road": (128, 64, 128), "sidewalk": (244, 35, 232), "building": (70, 70, 70), "pole": (153, 153, 153),
    "traffic light": (250, 170, 30), "traffic sign": (220, 220, 0), "vegetation": (107, 142, 35),
    "sky": (70, 130, 180), "person": (220, 20, 60), "car": (0, 0, 142), "truck": (0, 0, 70), "bus": (0, 60, 100),
    "motorcycle": (0, 0, 230), "bicycle": (119, 11, 32),
}

MFNET = _set(
    "mfnet",
    ["unlabelled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump"],
    [(0, 0, 0), (64, 0, 128), (64, 64, 0), (0, 128, 192), (0, 0, 192), (128, 128, 0), (64, 64, 128),
     (192, 128, 128), (192, 64, 0)],
    ignore_index=None, unlabelled_counts=True,
    notes="Ha et al., IROS 2017. Palette: the one MFNet's public visualisation code uses. mIoU is usually "
          "reported over all 9 classes, unlabelled included.",
)

PST900 = _set(
    "pst900",
    ["background", "fire_extinguisher", "backpack", "hand_drill", "survivor"],
    voc_colormap(5),
    ignore_index=None, unlabelled_counts=True,
    notes="Shivakumar et al., ICRA 2020. No official palette: VOC colour map. mIoU over all 5 classes, "
          "background included.",
)

FMB = _set(
    "fmb",
    ["unlabelled", "road", "sidewalk", "building", "traffic_lamp", "traffic_sign", "vegetation", "sky", "person",
     "car", "truck", "bus", "motorcycle", "bicycle", "pole"],
    [(0, 0, 0)] + [_CITYSCAPES[k] for k in ("road", "sidewalk", "building", "traffic light", "traffic sign",
                                              "vegetation", "sky", "person", "car", "truck", "bus", "motorcycle",
                                              "bicycle", "pole")],
    ignore_index=None, unlabelled_counts=False,
    notes="Liu et al., ICCV 2023 (SegMiF), 'full-time multi-modality benchmark'. Class order as in the public "
          "FMB loaders (background, Road, Sidewalk, Building, Lamp, Sign, Vegetation, Sky, Person, Car, Truck, Bus, "
          "Motorcycle, Bicycle, Pole). Colours: the Cityscapes colour of each class. Reported mIoU usually excludes "
          "class 0.",
)

_NYU40 = ["wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
          "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor_mat", "clothes",
          "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower_curtain", "box", "whiteboard",
          "person", "night_stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
          "otherprop"]

NYUV2 = _set(
    "nyuv2", _NYU40, voc_colormap(41)[1:],
    ignore_index=255, unlabelled_counts=True,  # class 0 is wall, a real class: void is 255
    notes="Silberman et al., ECCV 2012, 40-class mapping of Gupta et al. 2013. Raw label 0 (void) is stored as "
          "255 and ignored; class i here is raw label i+1. Palette: VOC colour map of the raw label.",
)

SUNRGBD = _set(
    "sunrgbd", _NYU40[:37], voc_colormap(38)[1:],
    ignore_index=255, unlabelled_counts=True,  # class 0 is wall, a real class: void is 255
    notes="Song et al., CVPR 2015, the 37-class benchmark (the first 37 NYU-40 classes). Void stored as 255 and "
          "ignored. Palette: VOC colour map of the raw label.",
)

SYNTHETIC = _set(
    "synthetic",
    ["background", "road", "sidewalk", "vegetation", "car", "person"],
    [(70, 70, 70), (128, 64, 128), (244, 35, 232), (107, 142, 35), (0, 0, 142), (220, 20, 60)],
    ignore_index=None, unlabelled_counts=True,
    notes="The package's own synthetic RGB-T scenes (rgbt_seg_ros.synthetic). Cityscapes-like colours.",
)

CLASS_SETS: dict[str, ClassSet] = {s.name: s for s in (MFNET, PST900, FMB, NYUV2, SUNRGBD, SYNTHETIC)}
_ALIASES = {"nyu": "nyuv2", "nyu_depth_v2": "nyuv2", "nyudv2": "nyuv2", "nyu40": "nyuv2", "sun": "sunrgbd",
            "sun_rgbd": "sunrgbd", "pst": "pst900", "segmif": "fmb"}


def get_class_set(name: str) -> ClassSet:
    key = str(name).lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key.replace("_", "") if key.replace("_", "") in CLASS_SETS else key)
    if key not in CLASS_SETS:
        raise RgbtSegError(f"class set {name!r} is unknown; choose one of {', '.join(CLASS_SETS)}")
    return CLASS_SETS[key]


def palette_for(num_classes: int, palette=None) -> np.ndarray:
    """K×3 uint8 palette: the given one (e.g. a model card's) checked, else the VOC colour map."""
    if palette is None:
        return np.asarray(voc_colormap(num_classes), dtype=np.uint8)
    arr = np.asarray(palette)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] < num_classes:
        raise RgbtSegError(f"palette: need {num_classes} RGB triples, got shape {arr.shape}")
    if arr.min() < 0 or arr.max() > 255:
        raise RgbtSegError("palette: values must lie in 0..255")
    return arr.astype(np.uint8)
