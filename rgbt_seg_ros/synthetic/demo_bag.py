"""A demo rosbag2 that behaves like a real RGB + thermal rig, rendered from the synthetic scenes.

* RGB ``/rgb/image`` 1280×720 rgb8 at 30 Hz; its stamps are the reference clock.
* Thermal ``/thermal/image`` 640×512 mono16 (centi-kelvin counts) at ~9 Hz, free-running: own phase,
  its own clock offset in the header stamps, timing jitter and dropped frames.
* ``/rgb/camera_info`` and ``/thermal/camera_info`` with every image (same header).
* The thermal camera sits beside the RGB camera (a few cm baseline and a small rotation), so its
  images are *not* registered: the pipeline must warp them (plane-induced homography).
* The ego camera drives forward through one synthetic scene; every message is rendered at its own
  capture time, so pairing skew shows up as real misalignment, as it does on a vehicle.

RGB is ray-cast at half resolution and upscaled ×2 (geometry-consistent: the half-size intrinsics are
derived with the same pixel-centre convention ``cv2.resize`` uses) to keep the demo fast on a CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.io.bag import CAMERA_INFO, IMAGE, BagWriter
from rgbt_seg_ros.io.image import numpy_to_image_fields
from rgbt_seg_ros.synthetic.scenes import SceneGenerator, default_intrinsics

TOPICS = {"rgb": "/rgb/image", "rgb_info": "/rgb/camera_info",
          "thermal": "/thermal/image", "thermal_info": "/thermal/camera_info"}
FRAME_IDS = {"rgb": "rgb_optical_frame", "thermal": "thermal_optical_frame"}
START_NS = 1_700_000_000_000_000_000  # a fixed epoch: the same spec writes the same bag


def _rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    y, p, r = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return ry @ rx @ rz


@dataclass
class DemoBagSpec:
    frames: int = 30  # RGB frames (1 s at 30 Hz)
    seed: int = 0
    scene_index: int = 7
    night: bool = True
    speed: float = 2.0  # m/s, ego forward motion
    rgb_rate: float = 30.0
    rgb_size: tuple[int, int] = (720, 1280)  # (height, width)
    rgb_hfov_deg: float = 70.0
    thermal_rate: float = 9.0
    thermal_size: tuple[int, int] = (512, 640)
    thermal_hfov_deg: float = 50.0
    thermal_phase: float = 0.021  # s after the first RGB frame
    thermal_clock_offset: float = 0.0123  # s added to the thermal header stamps (unsynchronised clock)
    thermal_jitter: float = 0.002  # s, std of the capture-time jitter
    thermal_drop: float = 0.12  # probability that a thermal frame is lost
    latency: float = 0.004  # s between capture and the bag's receive (log) time
    # thermal camera pose in the RGB optical frame: p_rgb = R p_thermal + t
    thermal_rotation_deg: tuple[float, float, float] = (1.5, -1.0, 0.5)  # yaw, pitch, roll
    thermal_translation: tuple[float, float, float] = (0.08, 0.015, 0.0)  # m
    plane_distance: float = 8.0  # m, the plane the demo's registration assumes

    @property
    def extrinsic_R(self) -> np.ndarray:
        return _rotation(*self.thermal_rotation_deg)

    @property
    def extrinsic_t(self) -> np.ndarray:
        return np.asarray(self.thermal_translation, dtype=np.float64)


@dataclass
class DemoBagResult:
    path: Path
    spec: DemoBagSpec
    rgb_K: np.ndarray
    thermal_K: np.ndarray
    counts: dict = field(default_factory=dict)
    thermal_dropped: int = 0

    def pipeline_config(self) -> dict:
        """Pipeline configuration that registers this bag's thermal images (plane-induced homography)."""
        return {"registration": {
            "mode": "plane",
            "extrinsics": {"R": self.spec.extrinsic_R.tolist(), "t": self.spec.extrinsic_t.tolist()},
            "plane_distance": float(self.spec.plane_distance),
        }}


def _camera_info(store, header, K: np.ndarray, height: int, width: int):
    P = np.zeros((3, 4))
    P[:, :3] = K
    roi = store.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                          do_rectify=False)
    return store.types[CAMERA_INFO](header=header, height=height, width=width, distortion_model="plumb_bob",
                                    d=np.zeros(5), k=K.reshape(-1).astype(np.float64),
                                    r=np.eye(3).reshape(-1), p=P.reshape(-1), binning_x=0, binning_y=0, roi=roi)


def _half_size_K(K: np.ndarray) -> np.ndarray:
    # u_half = (u_full + 0.5) / 2 - 0.5 (pixel centres, as cv2.resize maps them)
    Kh = K.copy()
    Kh[0, 0] /= 2
    Kh[1, 1] /= 2
    Kh[0, 2] = (K[0, 2] + 0.5) / 2 - 0.5
    Kh[1, 2] = (K[1, 2] + 0.5) / 2 - 0.5
    return Kh


def write_demo_bag(out: str | Path, spec: DemoBagSpec | None = None, *, storage: str = "mcap",
                   force: bool = False, progress: Callable[[int, int], None] | None = None) -> DemoBagResult:
    """Render and write the demo bag to ``out`` (atomically). ``progress(done, total)`` is called per image."""
    spec = spec or DemoBagSpec()
    if spec.frames < 1:
        raise RgbtSegError(f"--frames: need at least 1 frame, got {spec.frames}")
    rng = np.random.default_rng([spec.seed, 0xD3E0])
    scene = SceneGenerator(seed=spec.seed).scene(spec.scene_index, night=spec.night)
    rh, rw = spec.rgb_size
    th, tw = spec.thermal_size
    rgb_K = default_intrinsics(rw, rh, spec.rgb_hfov_deg)
    rgb_K_half = _half_size_K(rgb_K)
    thermal_K = default_intrinsics(tw, th, spec.thermal_hfov_deg)
    R_th, t_th = spec.extrinsic_R, spec.extrinsic_t

    duration = spec.frames / spec.rgb_rate
    events = []  # (log_ns, kind, capture_s, stamp_ns)
    for i in range(spec.frames):
        cap = i / spec.rgb_rate
        stamp = START_NS + round(cap * 1e9)
        events.append((stamp + round(spec.latency * 1e9), "rgb", cap, stamp))
    dropped = 0
    k = 0
    while True:
        cap = spec.thermal_phase + k / spec.thermal_rate + float(rng.normal(0.0, spec.thermal_jitter))
        k += 1
        if cap >= duration:
            break
        if rng.random() < spec.thermal_drop:
            dropped += 1
            continue
        stamp = START_NS + round((cap + spec.thermal_clock_offset) * 1e9)
        events.append((START_NS + round((cap + 2 * spec.latency) * 1e9), "thermal", max(cap, 0.0), stamp))
    events.sort(key=lambda e: e[0])

    result = DemoBagResult(Path(out), spec, rgb_K, thermal_K, thermal_dropped=dropped)
    with BagWriter(out, storage=storage, force=force) as writer:
        store = writer.typestore
        Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
        Image = store.types[IMAGE]
        for name in ("rgb", "rgb_info", "thermal", "thermal_info"):
            writer.add_connection(TOPICS[name], CAMERA_INFO if name.endswith("info") else IMAGE)
        for done, (log_ns, kind, cap, stamp) in enumerate(events, 1):
            # The ego camera has moved forward by speed × capture time (z forward in the RGB frame).
            ego = np.array([0.0, 0.0, spec.speed * cap])
            header = Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id=FRAME_IDS[kind])
            if kind == "rgb":
                half = scene.render(rgb_K_half, (rh // 2, rw // 2), np.eye(3), ego, modalities=("rgb",))["rgb"]
                rgb = cv2.resize(half, (rw, rh), interpolation=cv2.INTER_LINEAR)
                writer.write(TOPICS["rgb"], log_ns, Image(header=header, **numpy_to_image_fields(rgb, "rgb8")), IMAGE)
                writer.write(TOPICS["rgb_info"], log_ns, _camera_info(store, header, rgb_K, rh, rw), CAMERA_INFO)
            else:
                thermal = scene.render(thermal_K, (th, tw), R_th, t_th + ego, modalities=("thermal",))["thermal"]
                writer.write(TOPICS["thermal"], log_ns,
                             Image(header=header, **numpy_to_image_fields(thermal, "mono16")), IMAGE)
                writer.write(TOPICS["thermal_info"], log_ns, _camera_info(store, header, thermal_K, th, tw),
                             CAMERA_INFO)
            if progress is not None:
                progress(done, len(events))
        result.counts = dict(writer.counts)
    return result

