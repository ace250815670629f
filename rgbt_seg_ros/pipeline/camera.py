"""Camera models and extrinsics from the formats robots actually carry.

* ``CameraModel.from_camera_info``: any CameraInfo-like object — ROS 2 (``k``, ``d``, ``p``, ``r``),
  ROS 1 / rosbags ROS 1 (``K``, ``D``, ``P``, ``R``), with ``width``, ``height``, ``distortion_model``.
* ``load_camera(path)``: ROS camera_info YAML (camera_calibration format), Kalibr camchain
  (``path#cam1``), OpenLORIS/OpenCV ``sensors.yaml`` (``path#d400_color_optical_frame``).
* ``load_extrinsics(source)``: Kalibr ``T_cn_cnm1`` chains, OpenLORIS ``trans_matrix.yaml``
  parent/child transforms, plain YAML (``R``/``t`` or a 4×4 ``T``), or a 4×4 array.

Convention, everywhere in this package: ``Extrinsics`` maps points of the aux (thermal/depth) camera
frame into the RGB camera frame, ``p_rgb = R · p_aux + t`` (metres, optical frames: x right, y down, z forward).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rgbt_seg_ros.errors import RgbtSegError, first_line

_MODEL_ALIASES = {
    "plumb_bob": "plumb_bob", "radtan": "plumb_bob", "radial-tangential": "plumb_bob", "radial_tangential": "plumb_bob",
    "brown": "plumb_bob", "brown_conrady": "plumb_bob", "": "plumb_bob", "none": "plumb_bob", "pinhole": "plumb_bob",
    "rational_polynomial": "rational_polynomial",
    "equidistant": "equidistant", "fisheye": "equidistant", "kannala-brandt": "equidistant",
    "kannala_brandt": "equidistant", "kannala-brandt4": "equidistant",
}
_D_LEN = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}


def _canonical_model(name: str, where: str) -> str:
    key = str(name or "").strip().lower()
    if key not in _MODEL_ALIASES:
        raise RgbtSegError(f"{where}: distortion_model {name!r} is not supported "
                           "(plumb_bob, rational_polynomial, equidistant)")
    return _MODEL_ALIASES[key]


def _fit_distortion(d, model: str, where: str) -> np.ndarray:
    d = np.asarray(d if d is not None else [], dtype=np.float64).reshape(-1)
    n = _D_LEN[model]
    if model == "equidistant":
        if d.size < 4 or np.any(d[4:] != 0):
            raise RgbtSegError(f"{where}: equidistant distortion needs 4 coefficients, got {d.size}")
        return d[:4].copy()
    if model == "rational_polynomial" and d.size == 14:  # OpenCV's thin-prism/tilt tail, unused when zero
        if np.any(d[8:] != 0):
            raise RgbtSegError(f"{where}: thin-prism/tilt distortion terms are not supported")
        d = d[:8]
    if d.size > n:
        if np.any(d[n:] != 0):
            raise RgbtSegError(f"{where}: {model} takes {n} distortion coefficients, got {d.size}")
        d = d[:n]
    return np.concatenate([d, np.zeros(n - d.size)])


@dataclass(frozen=True, eq=False)
class CameraModel:
    K: np.ndarray  # 3×3
    D: np.ndarray  # plumb_bob: k1 k2 p1 p2 k3; rational_polynomial: k1 k2 p1 p2 k3 k4 k5 k6; equidistant: k1..k4
    width: int
    height: int
    distortion_model: str = "plumb_bob"
    frame_id: str = ""
    P: np.ndarray | None = None  # 3×4 (rectified projection), informational
    R: np.ndarray | None = None  # 3×3 rectification rotation, informational
    _key: tuple = field(default=(), repr=False)

    def __post_init__(self):
        where = f"camera {self.frame_id or '?'}"
        K = np.asarray(self.K, dtype=np.float64)
        if K.size != 9:
            raise RgbtSegError(f"{where}: K needs 9 values, got {K.size}")
        K = K.reshape(3, 3)
        if not (K[0, 0] > 0 and K[1, 1] > 0):
            raise RgbtSegError(f"{where}: K has no focal length (fx={K[0, 0]}, fy={K[1, 1]}); the camera is uncalibrated")
        if int(self.width) < 1 or int(self.height) < 1:
            raise RgbtSegError(f"{where}: width/height must be positive, got {self.width}×{self.height}")
        model = _canonical_model(self.distortion_model, where)
        D = _fit_distortion(self.D, model, where)
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "D", D)
        object.__setattr__(self, "distortion_model", model)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        if self.P is not None:
            P = np.asarray(self.P, dtype=np.float64).reshape(-1)
            object.__setattr__(self, "P", P.reshape(3, 4) if P.size == 12 and P.any() else None)
        if self.R is not None:
            R = np.asarray(self.R, dtype=np.float64).reshape(-1)
            object.__setattr__(self, "R", R.reshape(3, 3) if R.size == 9 and R.any() else None)
        key = (model, self.width, self.height, tuple(np.round(K.reshape(-1), 9)), tuple(np.round(D, 12)))
        object.__setattr__(self, "_key", key)

    @property
    def key(self) -> tuple:
        """Hashable identity of the geometry (used to cache warp maps)."""
        return self._key

    @property
    def has_distortion(self) -> bool:
        return bool(np.any(self.D != 0))

    def for_size(self, width: int, height: int) -> "CameraModel":
        """The model for an image of another size with the same aspect ratio (binning, scaled streams)."""
        if (width, height) == (self.width, self.height):
            return self
        sx, sy = width / self.width, height / self.height
        if abs(sx - sy) > 0.01 * max(sx, sy):
            raise RgbtSegError(f"camera {self.frame_id or '?'}: calibrated for {self.width}×{self.height}, image is "
                               f"{width}×{height} with another aspect ratio; the sizes cannot be registered")
        K = self.K.copy()
        K[0, :] *= sx
        K[1, :] *= sy
        # pixel-centre convention: u' + 0.5 = s (u + 0.5)
        K[0, 2] += 0.5 * sx - 0.5
        K[1, 2] += 0.5 * sy - 0.5
        return CameraModel(K, self.D, width, height, self.distortion_model, self.frame_id)

    @classmethod
    def from_camera_info(cls, msg, where: str = "camera_info") -> "CameraModel":
        """sensor_msgs/CameraInfo (ROS 2 or ROS 1 field names) → the model of the image it describes.

        A non-empty ``roi`` (a subwindow of the calibrated frame, as drivers publish for cropped capture) gives
        the model of that window; binning needs nothing here (``for_size`` scales to the image's size).
        """
        def get(*names):
            for n in names:
                if hasattr(msg, n):
                    return getattr(msg, n)
            return None

        k = get("k", "K")
        if k is None:
            raise RgbtSegError(f"{where}: has no K/k field; not a CameraInfo")
        header = get("header")
        frame_id = getattr(header, "frame_id", "") if header is not None else ""
        K = np.array(k, dtype=np.float64).reshape(-1)
        P = get("p", "P")
        width, height = int(get("width") or 0), int(get("height") or 0)
        roi = get("roi")
        if roi is not None and int(getattr(roi, "width", 0) or 0) and int(getattr(roi, "height", 0) or 0):
            # the image is a subwindow of the calibrated (unbinned) frame: the same lens, the principal point
            # moved by the window's offset; binning then scales it to the image (for_size, pixel centres)
            x0, y0 = int(roi.x_offset), int(roi.y_offset)
            rw, rh = int(roi.width), int(roi.height)
            if x0 < 0 or y0 < 0 or x0 + rw > width or y0 + rh > height:
                raise RgbtSegError(f"{where}: roi {rw}×{rh} at ({x0}, {y0}) reaches outside the calibrated "
                                   f"{width}×{height} frame")
            if (x0, y0, rw, rh) != (0, 0, width, height) and K.size == 9:
                K[2] -= x0
                K[5] -= y0
                if P is not None and np.asarray(P).size == 12:
                    P = np.array(P, dtype=np.float64).reshape(-1)
                    P[0:4] -= x0 * P[8:12]  # image coordinates shifted: rows of P, as for K
                    P[4:8] -= y0 * P[8:12]
                width, height = rw, rh
        try:
            return cls(K=K, D=get("d", "D"), width=width, height=height,
                       distortion_model=get("distortion_model") or "plumb_bob",
                       frame_id=frame_id, P=P, R=get("r", "R"))
        except RgbtSegError as exc:
            raise RgbtSegError(f"{where}: {exc}") from None


# -- YAML ------------------------------------------------------------------------------------------
def _load_yaml(path: str | Path):
    """YAML, including OpenCV FileStorage files (``%YAML:1.0`` and ``!!opencv-matrix``)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RgbtSegError(f"{path}: cannot read ({exc.strerror})") from None
    if text.startswith("%YAML:1.0"):  # OpenCV's directive is not valid YAML 1.1; drop it
        text = text.split("\n", 1)[1] if "\n" in text else ""

    class _Loader(yaml.SafeLoader):
        pass

    def _opencv_matrix(loader, node):
        m = loader.construct_mapping(node, deep=True)
        return np.asarray(m["data"], dtype=np.float64).reshape(int(m["rows"]), int(m["cols"]))

    _Loader.add_constructor("tag:yaml.org,2002:opencv-matrix", _opencv_matrix)
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise RgbtSegError(f"{path}: not valid YAML ({first_line(exc)})") from None


def _split_spec(spec) -> tuple[Path, str | None]:
    s = str(spec)
    if "#" in s:
        p, name = s.rsplit("#", 1)
        return Path(p), name or None
    return Path(s), None


def _matrix(value, rows: int, cols: int, where: str) -> np.ndarray:
    if isinstance(value, dict) and "data" in value:
        value = value["data"]
    a = np.asarray(value, dtype=np.float64)
    if a.size != rows * cols:
        raise RgbtSegError(f"{where}: expected {rows}×{cols} values, got {a.size}")
    return a.reshape(rows, cols)


def load_camera(spec, name: str | None = None) -> CameraModel:
    """Load a CameraModel from a YAML file; ``path#name`` (or ``name``) picks a camera in multi-camera files."""
    path, spec_name = _split_spec(spec)
    name = name or spec_name
    data = _load_yaml(path)
    if not isinstance(data, dict):
        raise RgbtSegError(f"{path}: not a camera calibration file")
    if "camera_matrix" in data:  # ROS camera_calibration / camera_info_manager format
        try:
            return CameraModel(
                K=_matrix(data["camera_matrix"], 3, 3, f"{path}: camera_matrix"),
                D=np.asarray((data.get("distortion_coefficients") or {}).get("data", []), dtype=np.float64),
                width=int(data["image_width"]), height=int(data["image_height"]),
                distortion_model=data.get("distortion_model", "plumb_bob"),
                frame_id=str(data.get("camera_name", "")),
                P=_matrix(data["projection_matrix"], 3, 4, f"{path}: projection_matrix") if "projection_matrix" in data else None,
                R=_matrix(data["rectification_matrix"], 3, 3, f"{path}: rectification_matrix") if "rectification_matrix" in data else None,
            )
        except KeyError as exc:
            raise RgbtSegError(f"{path}: camera_info YAML lacks {exc.args[0]}") from None
        except RgbtSegError as exc:
            raise RgbtSegError(f"{path}: {exc}") from None
    kalibr = {k: v for k, v in data.items() if isinstance(v, dict) and "intrinsics" in v and "resolution" in v}
    if kalibr:
        cam = name or "cam0"
        if cam not in kalibr:
            raise RgbtSegError(f"{path}: no camera {cam!r}; the file has {', '.join(kalibr)}")
        c = kalibr[cam]
        if c.get("camera_model", "pinhole") != "pinhole":
            raise RgbtSegError(f"{path}#{cam}: camera_model {c.get('camera_model')!r} is not supported (pinhole)")
        fu, fv, pu, pv = (float(v) for v in c["intrinsics"])
        return CameraModel(K=[[fu, 0, pu], [0, fv, pv], [0, 0, 1]], D=c.get("distortion_coeffs", []),
                           width=int(c["resolution"][0]), height=int(c["resolution"][1]),
                           distortion_model=c.get("distortion_model", "radtan"), frame_id=cam)
    cams = {k: v for k, v in data.items() if isinstance(v, dict) and v.get("sensor_type") == "camera"}
    if cams:  # OpenLORIS sensors.yaml
        if name is None:
            if len(cams) != 1:
                raise RgbtSegError(f"{path}: several cameras ({', '.join(cams)}); pick one with {path}#NAME")
            name = next(iter(cams))
        if name not in cams:
            raise RgbtSegError(f"{path}: no camera {name!r}; the file has {', '.join(cams)}")
        c = cams[name]
        # OpenLORIS stores intrinsics as [fx, cx, fy, cy]
        fx, cx, fy, cy = np.asarray(c["intrinsics"], dtype=np.float64).reshape(-1)
        model = "equidistant" if str(c.get("model", "")).lower() == "fisheye" else c.get("distortion_model", "plumb_bob")
        return CameraModel(K=[[fx, 0, cx], [0, fy, cy], [0, 0, 1]], D=np.asarray(c.get("distortion_coefficients", [])),
                           width=int(c["width"]), height=int(c["height"]), distortion_model=model, frame_id=name)
    raise RgbtSegError(f"{path}: not a recognised calibration format (camera_info YAML, Kalibr camchain, OpenLORIS sensors.yaml)")


def as_camera_model(obj, where: str = "camera") -> CameraModel:
    """CameraModel passthrough, a YAML path, or a CameraInfo-like message."""
    if isinstance(obj, CameraModel):
        return obj
    if isinstance(obj, (str, Path)):
        return load_camera(obj)
    return CameraModel.from_camera_info(obj, where)


# -- extrinsics ------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Extrinsics:
    """Rigid transform aux → rgb: ``p_rgb = R · p_aux + t``."""

    R: np.ndarray
    t: np.ndarray

    def __post_init__(self):
        R = np.asarray(self.R, dtype=np.float64).reshape(3, 3)
        t = np.asarray(self.t, dtype=np.float64).reshape(3)
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0:
            raise RgbtSegError("extrinsics: R is not a rotation matrix (R·Rᵀ ≠ I or det < 0)")
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "t", t)

    @classmethod
    def identity(cls) -> "Extrinsics":
        return cls(np.eye(3), np.zeros(3))

    @classmethod
    def from_matrix(cls, T) -> "Extrinsics":
        T = _matrix(T, 4, 4, "extrinsics") if not isinstance(T, np.ndarray) or T.shape != (4, 4) else T
        if not np.allclose(T[3], [0, 0, 0, 1]):
            raise RgbtSegError("extrinsics: last row of the 4×4 matrix must be [0, 0, 0, 1]")
        return cls(T[:3, :3], T[:3, 3])

    def matrix(self) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = self.R, self.t
        return T

    def inverse(self) -> "Extrinsics":
        return Extrinsics(self.R.T, -self.R.T @ self.t)

    @property
    def key(self) -> tuple:
        return tuple(np.round(self.matrix().reshape(-1), 9))


def _kalibr_extrinsics(data: dict, rgb: str, aux: str, path) -> Extrinsics:
    cams = sorted((k for k in data if k.startswith("cam") and k[3:].isdigit()), key=lambda k: int(k[3:]))
    for n in (rgb, aux):
        if n not in cams:
            raise RgbtSegError(f"{path}: no camera {n!r}; the file has {', '.join(cams)}")
    # T_cn_cnm1 maps points of camera n−1 into camera n; chain them to get every camera from cam0
    T_from0 = {cams[0]: np.eye(4)}
    for prev, cur in zip(cams, cams[1:]):
        if "T_cn_cnm1" not in data[cur]:
            raise RgbtSegError(f"{path}: {cur} lacks T_cn_cnm1")
        T_from0[cur] = _matrix(data[cur]["T_cn_cnm1"], 4, 4, f"{path}: {cur}.T_cn_cnm1") @ T_from0[prev]
    return Extrinsics.from_matrix(T_from0[rgb] @ np.linalg.inv(T_from0[aux]))


def _tf_list_extrinsics(items: list, rgb: str, aux: str, path) -> Extrinsics:
    # each entry is the pose of child_frame in parent_frame: p_parent = T · p_child (ROS tf convention)
    edges: dict[str, list[tuple[str, np.ndarray]]] = {}
    for it in items:
        T = _matrix(it["matrix"], 4, 4, f"{path}: {it.get('parent_frame')}→{it.get('child_frame')}")
        p, c = str(it["parent_frame"]), str(it["child_frame"])
        edges.setdefault(c, []).append((p, T))  # child → parent
        edges.setdefault(p, []).append((c, np.linalg.inv(T)))
    for n in (rgb, aux):
        if n not in edges:
            raise RgbtSegError(f"{path}: no frame {n!r}; the file has {', '.join(sorted(edges))}")
    # breadth-first search from aux to rgb, composing "points of the current frame → points of next"
    seen, frontier = {aux}, [(aux, np.eye(4))]
    while frontier:
        nxt = []
        for frame, T in frontier:
            if frame == rgb:
                return Extrinsics.from_matrix(T)
            for other, T_step in edges[frame]:
                if other not in seen:
                    seen.add(other)
                    nxt.append((other, T_step @ T))
        frontier = nxt
    raise RgbtSegError(f"{path}: frames {aux!r} and {rgb!r} are not connected")


def load_extrinsics(source, rgb: str | None = None, aux: str | None = None) -> Extrinsics:
    """Extrinsics aux → rgb from an ``Extrinsics``, a 4×4 array, a dict or a YAML file (``path#rgb,aux``)."""
    if isinstance(source, Extrinsics):
        return source
    if isinstance(source, np.ndarray) or isinstance(source, (list, tuple)):
        return Extrinsics.from_matrix(np.asarray(source, dtype=np.float64))
    if isinstance(source, dict):
        return _extrinsics_from_mapping(source, "extrinsics", rgb, aux)
    path, names = _split_spec(source)
    if names:
        parts = names.split(",")
        if len(parts) != 2:
            raise RgbtSegError(f"{source}: name the frames as PATH#RGB_FRAME,AUX_FRAME")
        rgb, aux = rgb or parts[0], aux or parts[1]
    data = _load_yaml(path)
    return _extrinsics_from_mapping(data, str(path), rgb, aux)


def _extrinsics_from_mapping(data, where: str, rgb: str | None, aux: str | None) -> Extrinsics:
    if isinstance(data, dict) and any(isinstance(v, dict) and "T_cn_cnm1" in v for v in data.values()):
        return _kalibr_extrinsics(data, rgb or "cam0", aux or "cam1", where)
    if isinstance(data, dict) and isinstance(data.get("trans_matrix"), list):
        return _tf_list_extrinsics(data["trans_matrix"], rgb or "d400_color_optical_frame",
                                   aux or "d400_depth_optical_frame", where)
    if isinstance(data, dict):
        for key in ("T_rgb_aux", "T", "matrix", "transform"):
            if key in data:
                return Extrinsics.from_matrix(_matrix(data[key], 4, 4, f"{where}: {key}"))
        if "R" in data and "t" in data:
            return Extrinsics(_matrix(data["R"], 3, 3, f"{where}: R"), _matrix(data["t"], 3, 1, f"{where}: t"))
        if "extrinsics" in data:
            return _extrinsics_from_mapping(data["extrinsics"], where, rgb, aux)
    if isinstance(data, list):
        return Extrinsics.from_matrix(_matrix(data, 4, 4, where))
    raise RgbtSegError(f"{where}: no extrinsics found (Kalibr T_cn_cnm1, OpenLORIS trans_matrix, R/t, or a 4×4 T_rgb_aux)")
