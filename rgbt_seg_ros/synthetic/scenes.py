"""Seeded synthetic road scenes: paired RGB + thermal + depth frames with per-pixel labels.

Geometry (metres, right-handed camera convention: x right, y down, z forward). The *world* frame is the
main (RGB) camera's position with zero pitch: the ground is the plane ``y = cam_height``. A scene is a
list of planar, axis-aligned surfaces — the ground (road / sidewalk / grass strips), building facades
along both sides, and upright billboards (cars, people, trees) facing the camera — so every view is
rendered by **ray casting**: each pixel's ray is intersected with the ground, the facades and the
billboards, and the nearest hit wins (a z-buffer). Rendering the scene a second time with another
camera's intrinsics, size and pose is therefore exact (occlusions and parallax included), which is
what the demo-bag writer uses for the thermal camera (:meth:`Scene.render` with ``R``, ``t``); no
plane-at-distance approximation is involved. Textures are anchored in world coordinates, so both
views see the same surface detail; sensor noise is drawn per view.

Modalities:

* ``rgb``: H×W×3 uint8. Day: sunlit, clear. Night: ambient ≈ 4 % of day plus the ego vehicle's
  headlights (falling off with distance), car head/tail lights and lit windows, then strong sensor
  noise — people and unlit cars beyond ~10 m are close to the noise floor.
* ``thermal``: H×W uint16 in centi-kelvin (``counts = T[K] * 100``, the "T-linear" radiometric mode of
  FLIR Boson/Lepton cores), with optics blur, fixed-pattern non-uniformity and temporal noise
  (NETD ≈ 50 mK). At night people (≈ 30–34 °C) and cars' engines/tyres stand out against ~8–12 °C
  surroundings; by day sun-heated asphalt (≈ 35–45 °C) makes people far harder to separate.
  ``thermal_celsius(counts)`` converts back.
* ``depth``: H×W float32, metres along the optical axis (z, as REP 118 32FC1); sky is ``+inf``
  ("too far", REP 118).
* ``labels``: H×W uint8 class ids of the ``synthetic`` class set (names and palette live in
  ``rgbt_seg_ros.pipeline.palettes``): see the ``BACKGROUND`` … ``PERSON`` constants.

Determinism: the same ``(seed, index, night)`` gives the same scene, and the same scene + camera gives
bit-identical images (the noise generators are seeded from the scene and the view).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from rgbt_seg_ros.errors import RgbtSegError

# Class ids of the "synthetic" class set (order fixed; names/palette in pipeline/palettes.py).
BACKGROUND, ROAD, SIDEWALK, VEGETATION, CAR, PERSON = range(6)
NUM_CLASSES = 6

KELVIN_OFFSET = 273.15
_TILE = 256  # world-anchored texture tile size (texels)
_TEXELS_PER_M = 6.0


def thermal_celsius(counts: np.ndarray) -> np.ndarray:
    """Convert T-linear centi-kelvin counts to °C (float32)."""
    return counts.astype(np.float32) / 100.0 - KELVIN_OFFSET


_NOISE_BANK: np.ndarray | None = None


def _gaussian_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit Gaussian sensor noise: a slice of a fixed bank at a seeded offset (drawing millions of normals
    per frame would dominate the render time)."""
    global _NOISE_BANK
    n = int(np.prod(shape))
    if _NOISE_BANK is None or _NOISE_BANK.size < 2 * n:
        _NOISE_BANK = np.random.default_rng(0x5E45).standard_normal(max(2 * n, 1 << 22), dtype=np.float32)
    start = int(rng.integers(0, _NOISE_BANK.size - n + 1))
    return _NOISE_BANK[start:start + n].reshape(shape)


_RAY_CACHE: dict = {}


def _rays(K: np.ndarray, Rw: np.ndarray, h: int, w: int) -> dict:
    """Per-pixel ray directions in the world frame (camera-z component 1) and the direction-only shading
    terms, cached per camera geometry: they do not depend on the camera position, so a moving camera (the
    demo bag) reuses them frame after frame."""
    key = (K.tobytes(), Rw.tobytes(), h, w)
    hit = _RAY_CACHE.get(key)
    if hit is not None:
        return hit
    u = np.arange(w, dtype=np.float32)
    v = np.arange(h, dtype=np.float32)
    m = (Rw @ np.linalg.inv(K)).astype(np.float32)
    dx = m[0, 0] * u[None, :] + m[0, 1] * v[:, None] + m[0, 2]
    dy = m[1, 0] * u[None, :] + m[1, 1] * v[:, None] + m[1, 2]
    dz = m[2, 0] * u[None, :] + m[2, 1] * v[:, None] + m[2, 2]
    rays = {"dx": dx, "dy": dy, "dz": dz,
            # sky gradient coordinate (sqrt of the elevation sine)
            "elev": np.sqrt(np.clip(-dy / np.sqrt(dx * dx + dy * dy + dz * dz), 0.0, 1.0)),
            # the ego low beams: a forward cone (range falloff applied per frame)
            "beam": (0.55 * np.exp(-(np.abs(dx / np.maximum(dz, 1e-3)) / 0.35) ** 2)).astype(np.float32)}
    for a in rays.values():
        a.setflags(write=False)
    if len(_RAY_CACHE) >= 8:
        _RAY_CACHE.pop(next(iter(_RAY_CACHE)))
    _RAY_CACHE[key] = rays
    return rays


def default_intrinsics(width: int, height: int, hfov_deg: float = 70.0) -> np.ndarray:
    """Pinhole K with square pixels, principal point at the image centre and the given horizontal FOV."""
    f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def _pitch_matrix(pitch_rad: float) -> np.ndarray:
    # Camera -> world rotation of a camera pitched down by pitch_rad (about x).
    c, s = math.cos(pitch_rad), math.sin(pitch_rad)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])


def _smooth_noise(rng: np.random.Generator, size: int, octaves: tuple[int, ...]) -> np.ndarray:
    """Tileable-ish multi-octave value noise in roughly [-1, 1], float32 size×size."""
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for cells in octaves:
        coarse = rng.standard_normal((cells, cells)).astype(np.float32)
        coarse = np.concatenate([coarse, coarse[:1]], 0)
        coarse = np.concatenate([coarse, coarse[:, :1]], 1)  # wrap so the tile repeats smoothly
        up = cv2.resize(coarse, (size + size // cells, size + size // cells), interpolation=cv2.INTER_CUBIC)
        out += amp * up[:size, :size]
        total += amp
        amp *= 0.5
    return out / total


@dataclass
class Billboard:
    """An upright rectangle facing the camera (normal along z) standing on the ground."""

    kind: int  # CAR, PERSON or VEGETATION (tree)
    x: float  # centre, lateral (m)
    z: float  # distance (m)
    width: float
    height: float
    albedo: dict = field(default_factory=dict)  # part -> RGB in [0, 1]
    temp: dict = field(default_factory=dict)  # part -> °C
    facing: bool = True  # cars: front towards the camera (headlights) or away (tail lights)
    phase: float = 0.0  # per-object shape variation


@dataclass
class Scene:
    """One frame's world: sampled by :class:`SceneGenerator`, rendered by any camera."""

    seed: int
    index: int
    night: bool
    cam_height: float
    pitch: float  # radians, positive = looking down
    road_center: float  # lateral position of the road centre in the world frame (m)
    road_half: float
    sidewalk: float  # width (m)
    verge: float  # grass strip width beyond the sidewalk (m)
    buildings: list  # (side ±1, z0, z1, height, rgb, temp)
    billboards: list
    ambient_c: float
    road_c: float
    sky_c: float
    textures: dict

    # ------------------------------------------------------------------ rendering
    def render(self, K: np.ndarray | None = None, size: tuple[int, int] = (480, 640), R: np.ndarray | None = None,
               t: np.ndarray | None = None, modalities: tuple[str, ...] = ("rgb", "thermal", "depth")) -> dict:
        """Render the scene from a camera.

        ``size`` is (height, width); ``K`` defaults to :func:`default_intrinsics`. ``R``, ``t`` place this
        camera in the *main* camera's frame (``p_main = R @ p_this + t``, i.e. the pose of this camera
        relative to the RGB camera, as a ROS TF from the RGB optical frame to this camera's optical frame);
        identity/zero renders the main camera. Returns a dict with ``labels`` and the requested
        modalities (``rgb``, ``thermal``, ``depth``).
        """
        h, w = int(size[0]), int(size[1])
        if h < 8 or w < 8:
            raise RgbtSegError(f"synthetic scene: image size {w}x{h} is too small (need at least 8x8)")
        unknown = set(modalities) - {"rgb", "thermal", "depth"}
        if unknown:
            raise RgbtSegError(f"synthetic scene: unknown modality {sorted(unknown)[0]!r}; use rgb, thermal, depth")
        K = default_intrinsics(w, h) if K is None else np.asarray(K, np.float64)
        R = np.eye(3) if R is None else np.asarray(R, np.float64)
        t = np.zeros(3) if t is None else np.asarray(t, np.float64).reshape(3)
        # camera -> world: world = Rw @ p_cam + C
        pitch_r = _pitch_matrix(self.pitch)
        Rw = pitch_r @ R
        C = pitch_r @ t
        want_rgb, want_thermal = "rgb" in modalities, "thermal" in modalities

        # Ray directions (world frame) scaled so that the camera-frame z component is 1: the ray
        # parameter s of a hit is then its depth along this camera's optical axis.
        rays = _rays(K, Rw, h, w)
        dx, dy, dz = rays["dx"], rays["dy"], rays["dz"]
        Cf = C.astype(np.float32)

        # G-buffer: ray casting writes depth, class, a material id and a texture value per pixel;
        # shading is then a handful of look-ups into the material table (fast, full-frame).
        gb = _GBuffer(h, w)
        mats = _Materials(self)
        tex = self.textures
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            self._cast_ground(gb, mats, dx, dy, dz, Cf, tex)
            self._cast_buildings(gb, mats, dx, dy, dz, Cf, tex)
            proj = np.linalg.inv(Rw)  # world -> camera rotation
            for bb in self.billboards:
                self._cast_billboard(bb, gb, mats, K, proj, C, dx, dy, dz, Cf)

        out = {"labels": gb.labels}
        noise_rng = np.random.default_rng([self.seed, self.index, int(self.night), h, w,
                                           *(int(round(abs(float(x)) * 1e4)) for x in (*t, *R.ravel()))])
        if want_rgb:
            out["rgb"] = self._expose(gb, mats, rays, noise_rng)
        if want_thermal:
            out["thermal"] = self._thermal_sensor(gb, mats, noise_rng)
        if "depth" in modalities:
            out["depth"] = gb.depth
        return out

    def _cast_ground(self, gb, mats, dx, dy, dz, Cf, tex):
        # Only rows that look below the horizon can hit the ground (dy is linear in u and v).
        rows = np.flatnonzero((dy > 1e-6).any(axis=1))
        if rows.size == 0:
            return
        sl = (slice(int(rows[0]), None), slice(None))
        dx, dy, dz = dx[sl], dy[sl], dz[sl]
        s = (self.cam_height - Cf[1]) / dy
        hit = (dy > 1e-6) & (s < 400.0)
        s = np.where(hit, s, 0.0)
        X = Cf[0] + s * dx
        Z = Cf[2] + s * dz
        lat = np.abs(X - self.road_center)
        edges = np.array([self.road_half, self.road_half + self.sidewalk, self.road_half + self.sidewalk + self.verge],
                         np.float32)
        zone = np.searchsorted(edges, lat).astype(np.uint8)  # 0 road, 1 sidewalk, 2 grass, 3 building plots
        cls = np.array([ROAD, SIDEWALK, VEGETATION, BACKGROUND], np.uint8)[zone]
        mat = np.array([mats.road, mats.walk, mats.grass, mats.plot], np.uint16)[zone]
        ti = (X * _TEXELS_PER_M).astype(np.int32)
        tj = (Z * _TEXELS_PER_M).astype(np.int32)
        # Lane markings (dashed centre line, solid edge lines; still "road") and paving joints, on the
        # texel grid so no float modulo is needed.
        dash = (tj % int(9 * _TEXELS_PER_M)) < int(4.5 * _TEXELS_PER_M)
        marking = (zone == 0) & (((lat < 0.09) & dash) | (np.abs(lat - (self.road_half - 0.25)) < 0.09))
        mat[marking] = mats.marking
        tl = ((lat - self.road_half) * _TEXELS_PER_M).astype(np.int32)
        joints = (zone == 1) & (((tj % 7) == 0) | ((tl % 7) == 0))
        mat[joints] = mats.joint
        texval = np.take(tex["ground"], (tj & (_TILE - 1)) * _TILE + (ti & (_TILE - 1)))
        gb.write(hit, s, cls, mat, texval, sl)

    def _cast_buildings(self, gb, mats, dx, dy, dz, Cf, tex):
        # One facade plane x = road_center ± offset per side, split along z into buildings.
        for side in (-1, 1):
            ids = [i for i, b in enumerate(self.buildings) if b[0] == side]
            if not ids:
                continue
            xb = self.road_center + side * (self.road_half + self.sidewalk + self.verge)
            # Only columns whose rays point towards this side can reach its facade.
            toward = xb - Cf[0]
            cols = np.flatnonzero((dx * np.float32(np.sign(toward)) > 0).any(axis=0))
            if cols.size == 0:
                continue
            sl = (slice(None), slice(int(cols[0]), int(cols[-1]) + 1))
            dxs, dys, dzs = dx[sl], dy[sl], dz[sl]
            s = toward / dxs
            cand = (s > 0) & (s < gb.depth[sl]) & (Cf[1] + s * dys <= self.cam_height)
            if not cand.any():
                continue
            sc = s[cand]
            Z = Cf[2] + sc * dzs[cand]
            Yh = self.cam_height - (Cf[1] + sc * dys[cand])  # height above ground
            z0s = np.array([self.buildings[i][1] for i in ids], np.float32)
            k = np.clip(np.searchsorted(z0s, Z, side="right") - 1, 0, len(ids) - 1)
            z1s = np.array([self.buildings[i][2] for i in ids], np.float32)
            hs = np.array([self.buildings[i][3] for i in ids], np.float32)
            ok = (Z >= z0s[k]) & (Z <= z1s[k]) & (Yh <= hs[k])
            if not ok.any():
                continue
            hit = np.zeros_like(cand)
            hit[cand] = ok
            Z, Yh, k = Z[ok], Yh[ok], k[ok]
            # Windows on a 3 m grid (decimetre integers avoid slow float modulo).
            zi, yi = (Z * 10.0).astype(np.int32), (Yh * 10.0).astype(np.int32)
            zm, ym = zi % 30, yi % 30
            window = (zm > 10) & (zm < 22) & (ym > 10) & (ym < 22) & (yi > 8)
            lit = window & (tex["fine"][((yi // 30) * 7) & (_TILE - 1), ((zi // 30) * 13) & (_TILE - 1)] > 0.3)
            wall = np.array([mats.building[i] for i in ids], np.uint16)[k]
            mat = np.where(lit, mats.window_lit, np.where(window, mats.window, wall)).astype(np.uint16)
            texval = tex["fine"][(yi * _TEXELS_PER_M / 10).astype(np.int32) & (_TILE - 1),
                                 (zi * _TEXELS_PER_M / 10).astype(np.int32) & (_TILE - 1)]
            gb.write(hit, sc[ok], BACKGROUND, mat, texval, sl)

    def _cast_billboard(self, bb, gb, mats, K, proj, C, dx, dy, dz, Cf):
        h, w = gb.depth.shape
        x0, x1 = bb.x - bb.width / 2, bb.x + bb.width / 2
        y1, y0 = self.cam_height, self.cam_height - bb.height
        corners = np.array([[x0, y0, bb.z], [x1, y0, bb.z], [x0, y1, bb.z], [x1, y1, bb.z]]) - C
        pc = corners @ proj.T
        if (pc[:, 2] <= 0.05).any():
            return  # behind or straddling this camera: skip rather than clip
        uv = pc @ K.T
        uv = uv[:, :2] / uv[:, 2:3]
        c0, c1 = int(max(0, math.floor(uv[:, 0].min()))), int(min(w, math.ceil(uv[:, 0].max()) + 1))
        r0, r1 = int(max(0, math.floor(uv[:, 1].min()))), int(min(h, math.ceil(uv[:, 1].max()) + 1))
        if c0 >= c1 or r0 >= r1:
            return
        sl = (slice(r0, r1), slice(c0, c1))
        s = (bb.z - Cf[2]) / dz[sl]
        a = (Cf[0] + s * dx[sl] - x0) / bb.width  # 0..1 left to right
        b = (Cf[1] + s * dy[sl] - y0) / bb.height  # 0..1 top to bottom
        inside = (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1) & (s > 0) & (s < gb.depth[sl])
        if not inside.any():
            return
        parts = _SHAPES[bb.kind](a, b, bb)
        mask = inside & (parts >= 0)
        if not mask.any():
            return
        mat = mats.parts[id(bb)][np.maximum(parts, 0)]
        texval = self.textures["fine"][np.floor(b * 40).astype(np.int32) & (_TILE - 1),
                                       np.floor(a * 40 + bb.phase * 97).astype(np.int32) & (_TILE - 1)]
        gb.write(mask, s, bb.kind, mat, texval, sl)

    def _expose(self, gb, mats, rays, rng) -> np.ndarray:
        h, w = gb.depth.shape
        mat = gb.material
        sky = mat == 0
        shade = 1.0 + mats.rgb_tex[mat] * gb.texval
        planes = [mats.rgb[:, c][mat] * shade for c in range(3)]
        # Sky gradient by elevation (material 0).
        elev = rays["elev"]
        lo, hi = ((0.78, 0.85, 0.95), (0.35, 0.55, 0.90)) if not self.night else ((0.10, 0.10, 0.16), (0.02, 0.02, 0.05))
        for c in range(3):
            np.copyto(planes[c], lo[c] + (hi[c] - lo[c]) * elev, where=sky)
        if not self.night:
            img = cv2.merge(planes) * 0.95
            img += 0.008 * _gaussian_noise(rng, img.shape)
        else:
            # Moonlight/skyglow plus the ego vehicle's low beams: a forward cone falling off with range.
            d = np.where(sky, 1e3, gb.depth)
            light = 0.035 + rays["beam"] / (1.0 + (d * np.float32(1 / 7.0)) ** 2)
            emit = cv2.merge([mats.emit[:, c][mat] for c in range(3)])
            img = cv2.merge([p * light for p in planes]) + emit
            if mats.has_emission:  # glare around lights
                small = cv2.resize(emit, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
                small = cv2.GaussianBlur(small, (0, 0), sigmaX=max(1.0, w / 640.0))
                img += cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) * 0.6
            # Photon noise grows with the signal; read noise dominates in the dark (high gain).
            sigma = np.sqrt(np.clip(img, 0, None) * 0.004 + 0.022 ** 2)
            img += sigma * _gaussian_noise(rng, img.shape)
        return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def _thermal_sensor(self, gb, mats, rng) -> np.ndarray:
        h, w = gb.depth.shape
        temp_c = mats.temp[gb.material] + mats.temp_tex[gb.material] * gb.texval
        # Thermal optics are softer than visible ones.
        t = cv2.GaussianBlur(temp_c, (0, 0), sigmaX=max(0.6, w / 600.0))
        fpn = cv2.resize(self.textures["fpn"], (w, h), interpolation=cv2.INTER_LINEAR) * 0.35
        col = 0.08 * rng.standard_normal((1, w), dtype=np.float32)  # column non-uniformity
        t += fpn + col + 0.05 * _gaussian_noise(rng, (h, w))
        return np.clip((t + KELVIN_OFFSET) * 100.0 + 0.5, 0, 65535).astype(np.uint16)


class _GBuffer:
    def __init__(self, h: int, w: int):
        self.depth = np.full((h, w), np.inf, np.float32)
        self.labels = np.full((h, w), BACKGROUND, np.uint8)
        self.material = np.zeros((h, w), np.uint16)  # 0 = sky
        self.texval = np.zeros((h, w), np.float32)

    def write(self, mask, depth, label, material, texval, sl=(slice(None), slice(None))):
        """Write a surface where ``mask``; values are full arrays over ``sl``, or 1-D over ``mask``'s pixels."""
        for name, val in (("depth", depth), ("labels", label), ("material", material), ("texval", texval)):
            dst = getattr(self, name)[sl]
            if np.ndim(val) == 2:
                np.copyto(dst, val.astype(dst.dtype, copy=False), where=mask)
            else:
                dst[mask] = val


class _Materials:
    """Per-render material table: RGB albedo, emission (night), temperature (°C) and texture gains."""

    def __init__(self, scene: "Scene"):
        rows = [((0, 0, 0), (0, 0, 0), scene.sky_c, 0.0, 0.0)]  # 0: sky (RGB from the elevation gradient)
        night, amb, road = scene.night, scene.ambient_c, scene.road_c

        def add(rgb, temp, emit=(0, 0, 0), rgb_tex=0.1, temp_tex=0.5):
            rows.append((rgb, emit, temp, rgb_tex, temp_tex))
            return len(rows) - 1

        # Ground materials differ in thermal inertia: asphalt keeps the day's heat longest, concrete less,
        # grass cools radiatively below the air temperature on clear nights.
        self.road = add((0.30, 0.30, 0.31), road, rgb_tex=0.22, temp_tex=1.0)
        self.marking = add((0.85, 0.85, 0.82), road - 1.0, rgb_tex=0.05, temp_tex=0.8)
        self.walk = add((0.62, 0.58, 0.52), road - (2.5 if night else 4.0), rgb_tex=0.2, temp_tex=0.8)
        self.joint = add((0.46, 0.43, 0.39), road - (2.5 if night else 4.0), rgb_tex=0.1, temp_tex=0.8)
        self.grass = add((0.22, 0.45, 0.16), amb - (4.0 if night else 3.0), rgb_tex=0.25, temp_tex=1.2)
        self.plot = add((0.45, 0.40, 0.33), amb - (1.5 if night else 0.0), rgb_tex=0.2, temp_tex=1.2)
        # Glass: cold sky reflection by day, warm rooms behind it at night.
        self.window = add((0.20, 0.24, 0.30), amb - 2.0 if not night else amb + 1.0, rgb_tex=0.05)
        self.window_lit = add((0.20, 0.24, 0.30), amb + 3.0, emit=(0.55, 0.45, 0.25) if night else (0, 0, 0),
                              rgb_tex=0.05)
        self.building = [add(b[4], b[5], rgb_tex=0.08, temp_tex=0.6) for b in scene.buildings]
        self.parts = {}
        for bb in scene.billboards:
            table = np.zeros(_NUM_PARTS, np.uint16)
            for pid, rgb in bb.albedo.items():
                emit = (0, 0, 0)
                if bb.kind == CAR and pid == _LIGHT and night:
                    emit = (1.6, 1.5, 1.2) if bb.facing else (1.2, 0.08, 0.05)
                table[pid] = add(rgb, bb.temp.get(pid, amb), emit=emit, rgb_tex=0.1, temp_tex=0.3)
            self.parts[id(bb)] = table
        self.rgb = np.array([r[0] for r in rows], np.float32)
        self.emit = np.array([r[1] for r in rows], np.float32)
        self.temp = np.array([r[2] for r in rows], np.float32)
        self.rgb_tex = np.array([r[3] for r in rows], np.float32)
        self.temp_tex = np.array([r[4] for r in rows], np.float32)
        self.has_emission = bool(self.emit.any())


# ---------------------------------------------------------------------------- billboard shapes
# A shape maps local coords (a: 0..1 left→right, b: 0..1 top→bottom) to a part id (-1 = transparent).
_BODY, _GLASS, _WHEEL, _LIGHT, _HOT, _SKIN, _SHIRT, _LEGS, _TRUNK, _CROWN = range(10)
_NUM_PARTS = 10


def _car_shape(a, b, bb):
    parts = np.full(a.shape, -1, np.int8)
    lower = b >= 0.38
    cabin = (b < 0.38) & (b >= 0.05) & (a >= 0.14 + 0.1 * (0.38 - b)) & (a <= 0.86 - 0.1 * (0.38 - b))
    parts[lower | cabin] = _BODY
    parts[cabin & (b > 0.1) & (a > 0.2) & (a < 0.8)] = _GLASS
    lights = (b > 0.45) & (b < 0.58) & (((a > 0.04) & (a < 0.18)) | ((a > 0.82) & (a < 0.96)))
    parts[lights] = _LIGHT
    hot = (b > 0.5) & (b < 0.82) & (a > 0.28) & (a < 0.72) if bb.facing else \
        (b > 0.84) & (a > 0.15) & (a < 0.3)  # engine behind the grille, or the exhaust
    parts[hot] = _HOT
    wheels = (b > 0.8) & (((a > 0.06) & (a < 0.26)) | ((a > 0.74) & (a < 0.94)))
    parts[wheels] = _WHEEL
    # Rounded bottom corners between the wheels.
    parts[(b > 0.93) & (a > 0.26) & (a < 0.74)] = -1
    return parts


def _person_shape(a, b, bb):
    parts = np.full(a.shape, -1, np.int8)
    sway = 0.06 * math.sin(bb.phase * 6.283)
    head = ((a - 0.5) / 0.17) ** 2 + ((b - 0.07) / 0.07) ** 2 <= 1.0
    torso = (b >= 0.13) & (b < 0.55) & (a >= 0.22) & (a <= 0.78)
    arms = (b >= 0.15) & (b < 0.5) & (((a >= 0.06 + sway) & (a < 0.2 + sway)) | ((a > 0.8 - sway) & (a <= 0.94 - sway)))
    legs = (b >= 0.55) & (((a >= 0.26 - sway) & (a < 0.47 - sway / 2)) | ((a > 0.53 + sway / 2) & (a <= 0.74 + sway)))
    parts[torso | arms] = _SHIRT
    parts[legs] = _LEGS
    parts[head] = _SKIN
    return parts


def _tree_shape(a, b, bb):
    parts = np.full(a.shape, -1, np.int8)
    wob = 0.08 * np.sin(a * 17.0 + bb.phase * 10.0) * np.cos(b * 13.0 + bb.phase * 7.0)
    crown = ((a - 0.5) / 0.5) ** 2 + ((b - 0.36) / 0.36) ** 2 <= 1.0 + wob
    trunk = (b >= 0.55) & (a >= 0.44) & (a <= 0.56)
    parts[trunk] = _TRUNK
    parts[crown] = _CROWN
    return parts


_SHAPES = {CAR: _car_shape, PERSON: _person_shape, VEGETATION: _tree_shape}

_CAR_COLOURS = np.array([(0.75, 0.08, 0.06), (0.08, 0.15, 0.55), (0.85, 0.85, 0.85), (0.08, 0.08, 0.08),
                         (0.55, 0.57, 0.60), (0.90, 0.75, 0.10), (0.10, 0.40, 0.20), (0.45, 0.30, 0.18)], np.float32)
_SKIN_TONES = np.array([(0.93, 0.76, 0.62), (0.78, 0.57, 0.42), (0.55, 0.38, 0.26), (0.36, 0.24, 0.16)], np.float32)


class SceneGenerator:
    """Seeded generator of synthetic road scenes.

    >>> gen = SceneGenerator(seed=0)
    >>> f = gen.frame(3, 480, 640, night=True)        # rgb, thermal, depth, labels at the main camera
    >>> scene = gen.scene(3, night=True)               # or sample once, render from several cameras
    >>> thermal = scene.render(K_t, (512, 640), R, t, modalities=("thermal",))["thermal"]
    """

    def __init__(self, seed: int = 0, max_people: int = 6, max_cars: int = 5):
        self.seed = int(seed)
        self.max_people = int(max_people)
        self.max_cars = int(max_cars)

    def scene(self, index: int, night: bool) -> Scene:
        rng = np.random.default_rng([self.seed, int(index), int(bool(night)), 0x5CE7E])
        road_half = float(rng.uniform(3.5, 5.5))
        road_center = float(rng.uniform(-road_half + 1.2, road_half - 1.2))
        sidewalk = float(rng.uniform(1.8, 3.5))
        verge = float(rng.uniform(2.0, 7.0))
        if night:
            ambient = float(rng.uniform(4.0, 14.0))
            road_c = ambient + float(rng.uniform(2.0, 5.0))
            sky_c = float(rng.uniform(-40.0, -20.0))
        else:
            ambient = float(rng.uniform(18.0, 30.0))
            road_c = ambient + float(rng.uniform(8.0, 20.0))  # sun-heated asphalt, close to body temperature
            sky_c = float(rng.uniform(-25.0, -5.0))

        buildings = []
        for side in (-1, 1):
            z = float(rng.uniform(-5.0, 15.0))
            while z < 160.0:
                length = float(rng.uniform(8.0, 30.0))
                if rng.random() < 0.8:
                    grey = rng.uniform(0.35, 0.85)
                    tint = rng.uniform(0.85, 1.1, 3)
                    rgb = tuple(float(c) for c in np.clip(grey * tint, 0, 1))
                    tb = ambient + float(rng.uniform(-2.0, 2.0) if night else rng.uniform(0.0, 8.0))
                    buildings.append((side, z, z + length, float(rng.uniform(5.0, 22.0)), rgb, tb))
                z += length + float(rng.uniform(0.0, 6.0))

        billboards: list[Billboard] = []
        # Trees on the grass strip.
        for _ in range(int(rng.integers(2, 12))):
            side = rng.choice((-1, 1))
            x = road_center + side * (road_half + sidewalk + float(rng.uniform(0.6, max(0.7, verge - 0.6))))
            hgt = float(rng.uniform(3.0, 9.0))
            green = np.clip(np.array((0.16, 0.42, 0.12)) * rng.uniform(0.7, 1.3, 3), 0, 1)
            billboards.append(Billboard(VEGETATION, x, float(rng.uniform(4.0, 70.0)), hgt * rng.uniform(0.5, 0.8), hgt,
                                        albedo={_CROWN: tuple(green), _TRUNK: (0.30, 0.22, 0.15)},
                                        temp={_CROWN: ambient - (0.5 if night else 2.0), _TRUNK: ambient + 0.5},
                                        phase=float(rng.random())))
        # Cars in lanes or parked at the kerb, facing either way.
        for _ in range(int(rng.integers(1, self.max_cars + 1))):
            facing = bool(rng.random() < 0.5)
            lane = rng.choice((-1, 1)) * float(rng.uniform(0.2, 0.85)) * road_half
            z = float(rng.uniform(5.0, 35.0))
            width, height = float(rng.uniform(1.7, 2.0)), float(rng.uniform(1.35, 1.75))
            body = tuple(float(c) for c in _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))] * rng.uniform(0.85, 1.1))
            running = rng.random() < 0.85
            tbody = ambient + float(rng.uniform(2.0, 6.0))
            billboards.append(Billboard(
                CAR, road_center + lane, z, width, height,
                albedo={_BODY: body, _GLASS: (0.12, 0.15, 0.20), _WHEEL: (0.05, 0.05, 0.05),
                        _LIGHT: (0.95, 0.95, 0.85) if facing else (0.80, 0.10, 0.08), _HOT: body},
                temp={_BODY: tbody, _GLASS: ambient - 4.0, _WHEEL: ambient + float(rng.uniform(12.0, 25.0)),
                      _LIGHT: tbody + 4.0, _HOT: ambient + (float(rng.uniform(35.0, 60.0)) if running else 8.0)},
                facing=facing, phase=float(rng.random())))
        # People on the sidewalks, some crossing.
        for _ in range(int(rng.integers(1, self.max_people + 1))):
            side = rng.choice((-1, 1))
            if rng.random() < 0.75:
                x = road_center + side * (road_half + float(rng.uniform(0.3, sidewalk - 0.3)))
            else:
                x = road_center + float(rng.uniform(-road_half, road_half))
            hgt = float(rng.uniform(1.55, 1.95))
            shirt = tuple(float(c) for c in rng.uniform(0.05, 0.9, 3))
            legs = tuple(float(c) for c in rng.uniform(0.05, 0.6, 3))
            skin = tuple(float(c) for c in _SKIN_TONES[rng.integers(len(_SKIN_TONES))])
            billboards.append(Billboard(
                PERSON, x, float(rng.uniform(4.0, 25.0)), hgt * 0.32, hgt,
                albedo={_SKIN: skin, _SHIRT: shirt, _LEGS: legs},
                temp={_SKIN: float(rng.uniform(32.0, 35.0)), _SHIRT: float(rng.uniform(27.0, 31.0)),
                      _LEGS: float(rng.uniform(25.0, 29.0))},
                phase=float(rng.random())))

        trng = np.random.default_rng([self.seed, int(index), int(bool(night)), 0x7E47])
        fine = _smooth_noise(trng, _TILE, (64, 128))
        textures = {"fine": fine, "ground": 0.55 * fine + 0.45 * _smooth_noise(trng, _TILE, (4, 8, 16)),
                    "fpn": _smooth_noise(trng, 32, (4, 8))}
        return Scene(self.seed, int(index), bool(night), float(rng.uniform(1.35, 1.75)),
                     math.radians(float(rng.uniform(1.0, 5.0))), road_center, road_half, sidewalk, verge,
                     buildings, billboards, ambient, road_c, sky_c, textures)

    def frame(self, index: int, height: int = 480, width: int = 640, night: bool = False,
              modality: str | tuple[str, ...] = ("rgb", "thermal", "depth"), K: np.ndarray | None = None) -> dict:
        """Render frame ``index`` at the main camera: dict with ``labels`` and the requested modalities.

        ``modality`` may be ``"thermal"`` or ``"depth"`` (rgb + that one) or a tuple of modality names.
        """
        if isinstance(modality, str):
            modality = ("rgb", modality)
        return self.scene(index, night).render(K, (height, width), modalities=tuple(modality))
