"""Configuration dataclasses of the pipeline, constructible from plain dicts / YAML with errors naming the bad key."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgbt_seg_ros.errors import RgbtSegError, first_line

REGISTRATION_MODES = ("identity", "homography", "plane", "depth")
THERMAL_AGC = ("percentile", "fixed")
RESIZE_MODES = ("stretch", "letterbox")
DEVICE_OPS = ("auto", "on", "off")


def _from_dict(cls, data: Any, where: str):
    if data is None:
        return cls()
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise RgbtSegError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise RgbtSegError(f"{where}.{key}: unknown key; known keys are {', '.join(known)}")
    try:
        obj = cls(**data)
    except RgbtSegError:
        raise
    except (TypeError, ValueError) as exc:
        raise RgbtSegError(f"{where}: {exc}") from None
    return obj


def _pair(value, where: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise RgbtSegError(f"{where}: expected two numbers [low, high], got {value!r}") from None
    if not hi > lo:
        raise RgbtSegError(f"{where}: high ({hi}) must be greater than low ({lo})")
    return lo, hi


@dataclass
class RegistrationConfig:
    """How the second modality is brought into the RGB pixel grid.

    * ``identity``: already registered (MFNet, PST900); only resized. The aspect ratios must agree
      within ``aspect_tolerance``.
    * ``homography``: ``homography`` is a 3×3 matrix mapping aux pixels to RGB pixels (row-major).
    * ``plane``: plane-induced homography from both camera models, the extrinsic aux→rgb
      (``p_rgb = R p_aux + t``) and the plane ``n·X = plane_distance`` in the aux frame.
    * ``depth``: per-pixel reprojection of a depth image with a z-buffer (needs the same extrinsic).

    Camera models and extrinsics may be given here as file paths (ROS camera_info YAML, Kalibr camchain,
    OpenLORIS ``sensors.yaml``/``trans_matrix.yaml``, plain YAML with R/t or a 4×4 matrix) or passed per
    call to ``SegmentationPipeline.process`` (CameraInfo messages win over files).
    """

    mode: str = "identity"
    homography: list | None = None
    rgb_camera: str | None = None  # path; "path#name" selects a camera in a multi-camera file
    aux_camera: str | None = None
    extrinsics: Any = None  # path ("path#rgb_name,aux_name" for multi-frame files) or {"R":..., "t":...} / 4×4
    plane_distance: float = 10.0  # metres
    plane_normal: tuple[float, float, float] = (0.0, 0.0, 1.0)  # in the aux frame
    hole_fill: int = 1  # depth mode: fill holes of up to this many pixels from the nearest valid neighbour
    aspect_tolerance: float = 0.02

    def __post_init__(self):
        if self.mode not in REGISTRATION_MODES:
            raise RgbtSegError(f"registration.mode: {self.mode!r} is not one of {', '.join(REGISTRATION_MODES)}")
        if self.mode == "homography" and self.homography is None:
            raise RgbtSegError("registration.homography: a 3×3 matrix is required when mode is 'homography'")
        if not float(self.plane_distance) > 0:
            raise RgbtSegError(f"registration.plane_distance: must be > 0 metres, got {self.plane_distance}")
        self.plane_distance = float(self.plane_distance)
        if len(self.plane_normal) != 3:
            raise RgbtSegError("registration.plane_normal: expected three numbers")
        self.plane_normal = tuple(float(v) for v in self.plane_normal)
        if int(self.hole_fill) < 0:
            raise RgbtSegError(f"registration.hole_fill: must be ≥ 0, got {self.hole_fill}")
        self.hole_fill = int(self.hole_fill)

    @property
    def uses_cameras(self) -> bool:
        """Whether the mode needs both camera models (CameraInfos or files): plane and depth; identity and
        homography read no intrinsics."""
        return self.mode in ("plane", "depth")

    @classmethod
    def from_dict(cls, data) -> "RegistrationConfig":
        return _from_dict(cls, data, "registration")


@dataclass
class NormalizationConfig:
    """Mapping of the second modality to float32 [0, 1] (see ``normalize.py``).

    A model file records the values it was trained with (``ModelCard.normalization``). A config built by
    ``from_dict`` remembers which keys the mapping set (``explicit_keys``); ``over_card`` puts exactly those
    keys on top of the card's. An object built directly (``NormalizationConfig(...)``) counts as setting
    every key.
    """

    thermal_agc: str = "percentile"  # mono16 raw counts: "percentile" (per frame) or "fixed" (thermal_range)
    thermal_range: tuple[float, float] = (0.0, 65535.0)  # raw counts for "fixed"
    thermal_percentiles: tuple[float, float] = (1.0, 99.0)
    agc_subsample: int = 4  # percentiles are computed on every n-th row and column
    temperature_range: tuple[float, float] = (-20.0, 60.0)  # °C mapped to [0, 1] for 32FC1 thermal
    temperature_unit: str = "C"  # unit of the 32FC1 thermal image: "C" or "K"
    depth_range: tuple[float, float] = (0.0, 10.0)  # metres mapped to [0, 1]; outside → clipped

    def __post_init__(self):
        if self.thermal_agc not in THERMAL_AGC:
            raise RgbtSegError(f"normalization.thermal_agc: {self.thermal_agc!r} is not one of {', '.join(THERMAL_AGC)}")
        self.thermal_range = _pair(self.thermal_range, "normalization.thermal_range")
        self.thermal_percentiles = _pair(self.thermal_percentiles, "normalization.thermal_percentiles")
        if not (0 <= self.thermal_percentiles[0] and self.thermal_percentiles[1] <= 100):
            raise RgbtSegError("normalization.thermal_percentiles: must lie in [0, 100]")
        self.temperature_range = _pair(self.temperature_range, "normalization.temperature_range")
        self.depth_range = _pair(self.depth_range, "normalization.depth_range")
        if self.temperature_unit not in ("C", "K"):
            raise RgbtSegError(f"normalization.temperature_unit: {self.temperature_unit!r} is not 'C' or 'K'")
        if int(self.agc_subsample) < 1:
            raise RgbtSegError(f"normalization.agc_subsample: must be ≥ 1, got {self.agc_subsample}")
        self.agc_subsample = int(self.agc_subsample)

    @classmethod
    def from_dict(cls, data) -> "NormalizationConfig":
        obj = _from_dict(cls, data, "normalization")
        if data is None or isinstance(data, dict):
            obj._explicit = frozenset(data or ())
        return obj

    @property
    def explicit_keys(self) -> frozenset[str]:
        """The keys the user set (see the class docstring)."""
        return getattr(self, "_explicit", frozenset(f.name for f in dataclasses.fields(self)))

    def to_dict(self) -> dict:
        """Every key, JSON-ready (pairs as lists): what the trainer writes into the model card."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def over_card(self, card_normalization: dict | None) -> "NormalizationConfig":
        """The normalisation to run with a model: precedence, key by key, is this config's explicit keys,
        then the model card's ``normalization``, then the defaults. A bad card value names the model card."""
        try:
            base = NormalizationConfig.from_dict(card_normalization or {})
        except RgbtSegError as exc:
            raise RgbtSegError(f"model card {exc}") from None
        merged = base.to_dict()
        mine = self.to_dict()
        merged.update({k: mine[k] for k in self.explicit_keys})
        return NormalizationConfig.from_dict(merged)


@dataclass
class PipelineConfig:
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    # keys set here override the model card's normalisation (NormalizationConfig.over_card); unset keys
    # follow the card, so the default is "whatever the model was trained with"
    normalization: NormalizationConfig = field(default_factory=lambda: NormalizationConfig.from_dict({}))
    resize_mode: str = "stretch"  # "stretch" to the network input, or "letterbox" (keeps aspect, pads)
    overlay_alpha: float = 0.5  # weight of the label colours in the overlay image
    input_size: tuple[int, int] | None = None  # (h, w) override of the model card's input size
    # pre-/post-processing as torch ops on the network's device (pipeline/device_ops.py): "auto" = when the
    # backend is a TorchBackend on CUDA; "on" = whenever the backend is a TorchBackend (any device); "off" = numpy
    device_ops: str = "auto"

    def __post_init__(self):
        self.registration = RegistrationConfig.from_dict(self.registration)
        self.normalization = NormalizationConfig.from_dict(self.normalization)
        if self.resize_mode not in RESIZE_MODES:
            raise RgbtSegError(f"resize_mode: {self.resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
        if not 0.0 <= float(self.overlay_alpha) <= 1.0:
            raise RgbtSegError(f"overlay_alpha: must lie in [0, 1], got {self.overlay_alpha}")
        self.overlay_alpha = float(self.overlay_alpha)
        if isinstance(self.device_ops, bool):  # YAML 1.1 reads a bare on/off as a boolean
            self.device_ops = "on" if self.device_ops else "off"
        if self.device_ops not in DEVICE_OPS:
            raise RgbtSegError(f"device_ops: {self.device_ops!r} is not one of {', '.join(DEVICE_OPS)}")
        if self.input_size is not None:
            try:
                h, w = (int(v) for v in self.input_size)
            except (TypeError, ValueError):
                raise RgbtSegError(f"input_size: expected [height, width], got {self.input_size!r}") from None
            if h < 8 or w < 8:
                raise RgbtSegError(f"input_size: {h}×{w} is too small")
            self.input_size = (h, w)

    @classmethod
    def from_dict(cls, data) -> "PipelineConfig":
        return _from_dict(cls, data, "pipeline")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PipelineConfig":
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise RgbtSegError(f"pipeline config {path}: cannot read ({exc.strerror})") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:  # UnicodeDecodeError: a binary file given by mistake
            raise RgbtSegError(f"pipeline config {path}: not valid YAML ({first_line(exc)})") from None
        if isinstance(data, dict) and "pipeline" in data and len(data) == 1:
            data = data["pipeline"]
        return cls.from_dict(data or {})
