"""Bring the second modality into the RGB pixel grid.

Modes (``RegistrationConfig.mode``):

* ``identity``   pre-registered data (MFNet, PST900): resize only; aspect ratios must agree.
* ``homography`` a fixed 3×3 ``H`` mapping aux pixels to RGB pixels: ``[u v 1]ᵀ_rgb ~ H [u v 1]ᵀ_aux``.
* ``plane``      plane-induced homography from both camera models and the extrinsic aux→rgb
                 (``p_rgb = R p_aux + t``) for the plane ``{X : nᵀX = d}`` in the aux frame (default
                 n = (0, 0, 1): fronto-parallel at distance d). For a point X on it, t = t·(nᵀX)/d, so
                 ``p_rgb = (R + t nᵀ/d) X`` and, in pixels, ``H = K_rgb (R + t nᵀ/d) K_aux⁻¹`` — the textbook
                 ``R − t nᵀ/d`` with the normal pointing the other way (Hartley & Zisserman, plane nᵀX + d = 0).
                 Lens distortion of both cameras is folded into the warp maps.
* ``depth``      per-pixel reprojection (depth_image_proc ``register``): back-project each depth pixel with the
                 depth camera, transform with R, t, project with the RGB camera, keep the nearest (z-buffer);
                 then optionally fill small holes from the nearest valid neighbour.

Warp maps are built once per geometry (camera models, extrinsics, image sizes, network resize) and cached
as float32 ``cv2.remap`` maps; a frame costs one ``cv2.remap``. Depth reprojection is one numba pass per frame
(``kernels.depth_to_rgb_pixels``) and a z-buffer scatter (``kernels.zbuffer_min``).
"""
from __future__ import annotations

import cv2
import numpy as np

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.pipeline.camera import CameraModel, Extrinsics, load_camera, load_extrinsics
from rgbt_seg_ros.pipeline.config import RegistrationConfig
from rgbt_seg_ros.pipeline.kernels import depth_to_rgb_pixels, project_radtan, undistort_radtan, zbuffer_min
from rgbt_seg_ros.pipeline.resize import ResizeTransform

_OUTSIDE = -1.0e4
_UNDISTORT_ITERATIONS = 50
_MAX_CACHED = 4


def plane_homography(K_rgb, K_aux, extrinsics: Extrinsics, distance: float, normal=(0.0, 0.0, 1.0)) -> np.ndarray:
    """3×3 H with ``x_rgb ~ H x_aux`` for pixels seeing the plane nᵀX = distance (aux frame)."""
    n = np.asarray(normal, dtype=np.float64).reshape(3)
    norm = np.linalg.norm(n)
    if norm == 0 or not distance > 0:
        raise RgbtSegError("registration: the plane needs a non-zero normal and a positive distance")
    n = n / norm
    Hn = extrinsics.R + np.outer(extrinsics.t, n) / float(distance)
    H = np.asarray(K_rgb, np.float64) @ Hn @ np.linalg.inv(np.asarray(K_aux, np.float64))
    return H / H[2, 2]


def _radtan_coeffs(cam: CameraModel) -> np.ndarray:
    """k1 k2 p1 p2 k3 k4 k5 k6 (float64) as the numba lens kernels take them: plumb_bob leaves k4..k6 at 0."""
    coeffs = np.zeros(8)
    coeffs[:cam.D.size] = cam.D
    return coeffs


def undistort_pixels(cam: CameraModel, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates → normalised image coordinates (x, y) with z = 1, lens distortion removed."""
    uf = np.ascontiguousarray(u, np.float64).reshape(-1)
    vf = np.ascontiguousarray(v, np.float64).reshape(-1)
    K = cam.K
    if not cam.has_distortion:
        y = (vf - K[1, 2]) / K[1, 1]
        x = (uf - K[0, 2] - K[0, 1] * y) / K[0, 0]
        return x.reshape(u.shape), y.reshape(u.shape)
    if cam.distortion_model == "equidistant":
        out = cv2.fisheye.undistortPoints(np.stack([uf, vf], axis=1)[:, None, :], cam.K, cam.D)
        return out[:, 0, 0].reshape(u.shape), out[:, 0, 1].reshape(u.shape)
    # cv2.undistortPoints' iteration, 50 times for every pixel (cv2's default of 5 is too few for thermal lenses
    # with k1 ≈ −0.4 near the corners), vectorised: within 2e-10 px of cv2 run to 50 iterations or 1e-10 px, at
    # 1/6 of its time (a 1280×720 grid: 79 ms instead of 474 ms); the first pair of a geometry pays this
    x, y = np.empty(uf.size), np.empty(uf.size)
    undistort_radtan(uf, vf, _radtan_coeffs(cam), float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]),
                     _UNDISTORT_ITERATIONS, x, y)
    return x.reshape(u.shape), y.reshape(u.shape)


def project_points(cam: CameraModel, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame points (Z > 0) → pixel coordinates, with the camera's lens distortion.

    The maths of ``cv2.projectPoints`` (which ignores the skew ``K[0, 1]`` once there is distortion) without its
    Jacobian: the Python binding always computes that, 2 × 15 derivatives a point, which made one call on a
    depth frame cost 30× the rest of the reprojection.
    """
    K = cam.K
    if not cam.has_distortion:
        iz = 1.0 / Z
        x, y = X * iz, Y * iz
        return K[0, 0] * x + K[0, 1] * y + K[0, 2], K[1, 1] * y + K[1, 2]
    if cam.distortion_model == "equidistant":
        pts = np.stack([(X / Z).reshape(-1), (Y / Z).reshape(-1)], axis=1).astype(np.float64)[:, None, :]
        img = cv2.fisheye.distortPoints(pts, cam.K, cam.D)
        return img[:, 0, 0].reshape(X.shape), img[:, 0, 1].reshape(X.shape)
    shape, dtype = np.shape(X), np.result_type(X, Y, Z, np.float32)
    X, Y, Z = (np.ascontiguousarray(a, dtype).reshape(-1) for a in (X, Y, Z))
    # float64 results, as cv2 gives: depth reprojection rounds them to pixels, and float32 would move a few
    u, v = np.empty(X.size), np.empty(X.size)
    project_radtan(X, Y, Z, _radtan_coeffs(cam), float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), u, v)
    return u.reshape(shape), v.reshape(shape)


class Registrar:
    """Registration state for one stream pair: geometry, and warp maps cached per geometry."""

    def __init__(self, config: RegistrationConfig | dict | None = None):
        self.config = config if isinstance(config, RegistrationConfig) else RegistrationConfig.from_dict(config or {})
        c = self.config
        self._H = None
        if c.mode == "homography":
            H = np.asarray(c.homography, dtype=np.float64)
            if H.size != 9:
                raise RgbtSegError(f"registration.homography: expected 3×3 values, got {H.size}")
            H = H.reshape(3, 3)
            if abs(np.linalg.det(H)) < 1e-12:
                raise RgbtSegError("registration.homography: the matrix is singular")
            self._H = H
        self._file_rgb = load_camera(c.rgb_camera) if c.rgb_camera else None
        self._file_aux = load_camera(c.aux_camera) if c.aux_camera else None
        self._file_extr = load_extrinsics(c.extrinsics) if c.extrinsics is not None else None
        self.rgb_camera, self.aux_camera, self.extrinsics = self._file_rgb, self._file_aux, self._file_extr
        self._maps: dict[tuple, tuple] = {}
        self._rays: dict[tuple, tuple] = {}
        self.maps_built = 0  # how often warp maps were (re)computed: tests and diagnostics check caching

    def set_geometry(self, rgb_camera: CameraModel | None = None, aux_camera: CameraModel | None = None,
                     extrinsics: Extrinsics | None = None) -> None:
        """Per-call camera models (e.g. the latest CameraInfos) override the configured files."""
        self.rgb_camera = rgb_camera or self._file_rgb
        self.aux_camera = aux_camera or self._file_aux
        self.extrinsics = extrinsics if extrinsics is not None else self._file_extr

    # -- geometry --------------------------------------------------------------------------------
    def _need_geometry(self) -> tuple[CameraModel, CameraModel, Extrinsics]:
        missing = [n for n, v in (("rgb camera", self.rgb_camera), ("aux camera", self.aux_camera),
                                  ("extrinsics", self.extrinsics)) if v is None]
        if missing:
            raise RgbtSegError(f"registration.mode {self.config.mode!r}: needs {', '.join(missing)} "
                               "(CameraInfo or calibration file, and the aux→rgb extrinsics)")
        return self.rgb_camera, self.aux_camera, self.extrinsics

    def _geometry_key(self, aux_hw, rgb_hw) -> tuple:
        c = self.config
        if c.mode == "identity":
            return ("identity", c.aspect_tolerance)
        if c.mode == "homography":
            return ("homography", tuple(self._H.reshape(-1)))
        rgb, aux, ext = self._need_geometry()
        return (c.mode, rgb.key, aux.key, ext.key, c.plane_distance, c.plane_normal)

    def aux_coords(self, u: np.ndarray, v: np.ndarray, aux_hw: tuple[int, int], rgb_hw: tuple[int, int]
                   ) -> tuple[np.ndarray, np.ndarray]:
        """For RGB pixel coordinates (u, v), the aux pixel coordinates that see the same point (float64)."""
        ah, aw = aux_hw
        rh, rw = rgb_hw
        mode = self.config.mode
        if mode == "identity":
            ra, aa = rw / rh, aw / ah
            if abs(ra - aa) > self.config.aspect_tolerance * ra:
                raise RgbtSegError(f"registration identity: aux image {aw}×{ah} and RGB image {rw}×{rh} have different "
                                   "aspect ratios; the sizes cannot be registered (use homography or plane mode)")
            return (u + 0.5) * (aw / rw) - 0.5, (v + 0.5) * (ah / rh) - 0.5
        if mode == "homography":
            Hi = np.linalg.inv(self._H)
            w = Hi[2, 0] * u + Hi[2, 1] * v + Hi[2, 2]
            ok = w > 1e-12
            w = np.where(ok, w, 1.0)
            x = (Hi[0, 0] * u + Hi[0, 1] * v + Hi[0, 2]) / w
            y = (Hi[1, 0] * u + Hi[1, 1] * v + Hi[1, 2]) / w
            return np.where(ok, x, _OUTSIDE), np.where(ok, y, _OUTSIDE)
        if mode == "plane":
            rgb, aux, ext = self._need_geometry()
            rgb, aux = rgb.for_size(rw, rh), aux.for_size(aw, ah)
            x, y = undistort_pixels(rgb, u, v)
            n = np.asarray(self.config.plane_normal, np.float64)
            n /= np.linalg.norm(n)
            Hn_inv = np.linalg.inv(ext.R + np.outer(ext.t, n) / self.config.plane_distance)
            X = Hn_inv[0, 0] * x + Hn_inv[0, 1] * y + Hn_inv[0, 2]
            Y = Hn_inv[1, 0] * x + Hn_inv[1, 1] * y + Hn_inv[1, 2]
            Z = Hn_inv[2, 0] * x + Hn_inv[2, 1] * y + Hn_inv[2, 2]
            ok = Z > 1e-9  # rays that meet the plane in front of the aux camera
            Zs = np.where(ok, Z, 1.0)
            ax, ay = project_points(aux, X / Zs, Y / Zs, np.ones_like(Zs))
            far = ok & (np.abs(ax) < 1e6) & (np.abs(ay) < 1e6)
            return np.where(far, ax, _OUTSIDE), np.where(far, ay, _OUTSIDE)
        raise RgbtSegError("registration.mode 'depth' reprojects depth with register_depth(), not a warp map")

    def _maps_for(self, aux_hw, rgb_hw, tf: ResizeTransform | None):
        geo = self._geometry_key(aux_hw, rgb_hw)
        key = (geo, tuple(aux_hw), tuple(rgb_hw), None if tf is None else (tf.dst_hw, tf.mode))
        hit = self._maps.get(key)
        if hit is not None:
            return hit
        if tf is None:
            u, v = np.meshgrid(np.arange(rgb_hw[1], dtype=np.float64), np.arange(rgb_hw[0], dtype=np.float64))
        else:
            mu, mv = tf.src_coords()
            u, v = mu.astype(np.float64), mv.astype(np.float64)
        outside = (u <= _OUTSIDE / 2) | (v <= _OUTSIDE / 2)
        ax, ay = self.aux_coords(u, v, aux_hw, rgb_hw)
        # A sample within the aux image's own area (its pixel centres ± half a pixel) takes the edge pixel, as
        # cv2.resize does, instead of blending it with the border value (a dark ring when enlarging); past that
        # area the aux camera saw nothing and the border value comes in.
        for coord, size in ((ax, aux_hw[1]), (ay, aux_hw[0])):
            np.clip(coord, 0.0, size - 1.0, out=coord, where=(coord >= -0.5) & (coord <= size - 0.5))
        ax = np.where(outside, _OUTSIDE, ax).astype(np.float32)
        ay = np.where(outside, _OUTSIDE, ay).astype(np.float32)
        # float maps: with OpenCV's vectorised remap they are as fast as fixed-point ones here, and exact
        maps = (ax, ay)
        if len(self._maps) >= _MAX_CACHED:
            self._maps.pop(next(iter(self._maps)))
        self._maps[key] = maps
        self.maps_built += 1
        return maps

    def warp_maps(self, aux_shape: tuple[int, ...], rgb_hw: tuple[int, int], tf: ResizeTransform | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """The float32 ``cv2.remap`` maps ``warp`` uses (aux pixel coordinates per RGB or network pixel, far
        negative outside the view), cached per geometry: the same array objects come back while it holds."""
        if len(aux_shape) != 2 or min(aux_shape) < 2:
            raise RgbtSegError(f"registration: aux image of shape {tuple(aux_shape)} cannot be registered")
        if min(rgb_hw) < 2:
            raise RgbtSegError(f"registration: RGB image of size {rgb_hw} cannot be registered")
        if tf is not None and tuple(tf.src_hw) != tuple(rgb_hw):
            raise RgbtSegError(f"registration: resize transform is for {tf.src_hw}, RGB image is {rgb_hw}")
        return self._maps_for(tuple(aux_shape), tuple(rgb_hw), tf)

    def warp(self, aux: np.ndarray, rgb_hw: tuple[int, int], tf: ResizeTransform | None = None,
             interpolation: int = cv2.INTER_LINEAR, border_value: float = 0.0) -> np.ndarray:
        """Warp an aux image into the RGB grid (``tf=None``) or straight into the network grid of ``tf``.

        Pixels the aux camera does not see get ``border_value`` (clamped to the image dtype's range).
        """
        m1, m2 = self.warp_maps(aux.shape, rgb_hw, tf)
        if aux.dtype.kind in "ui":
            info = np.iinfo(aux.dtype)
            border_value = float(min(max(border_value, info.min), info.max))
        return cv2.remap(aux, m1, m2, interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)

    # -- depth ----------------------------------------------------------------------------------
    def _depth_rays(self, cam: CameraModel, ext: Extrinsics) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per depth pixel, R · ray (ray = undistorted (x, y, 1)), so that p_rgb = z · (R · ray) + t."""
        key = (cam.key, ext.key)
        hit = self._rays.get(key)
        if hit is None:
            u, v = np.meshgrid(np.arange(cam.width, dtype=np.float64), np.arange(cam.height, dtype=np.float64))
            x, y = undistort_pixels(cam, u, v)
            R = ext.R
            hit = tuple((R[i, 0] * x + R[i, 1] * y + R[i, 2]).astype(np.float32) for i in range(3))
            self._rays = {key: hit}
            self.maps_built += 1
        return hit

    def register_depth(self, depth_m: np.ndarray, rgb_hw: tuple[int, int]) -> np.ndarray:
        """float32 depth in metres (0 = invalid) in the depth camera → float32 metres (z in the RGB frame) on the
        RGB grid, 0 where nothing projects. Nearest surface wins (z-buffer)."""
        if depth_m.ndim != 2 or min(depth_m.shape) < 2:
            raise RgbtSegError(f"registration depth: image of shape {depth_m.shape} cannot be registered")
        rgb, dcam, ext = self._need_geometry()
        rh, rw = (int(v) for v in rgb_hw)
        if rh * rw >= 1 << 31:  # pixel indices are int32
            raise RgbtSegError(f"registration depth: an RGB grid of {rw}×{rh} is too large to register depth onto")
        rgb = rgb.for_size(rw, rh)
        dcam = dcam.for_size(depth_m.shape[1], depth_m.shape[0])
        ax, ay, az = self._depth_rays(dcam, ext)
        z = np.ascontiguousarray(depth_m, dtype=np.float32).reshape(-1)
        t = ext.t.astype(np.float32)
        if rgb.has_distortion and rgb.distortion_model == "equidistant":
            index, z_rgb = self._fisheye_targets(rgb, z, ax, ay, az, t, rw, rh)
        else:
            # one pass: p_rgb = z · (R · ray) + t, projected and rounded to the RGB pixel it lands on (or −1)
            K = rgb.K
            index, z_rgb = np.empty(z.size, np.int32), np.empty(z.size, np.float32)
            depth_to_rgb_pixels(z, ax.reshape(-1), ay.reshape(-1), az.reshape(-1), t,
                                np.array([K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]], np.float64),
                                _radtan_coeffs(rgb), rw, rh, index, z_rgb)  # all-zero coefficients: the pinhole
        # z-buffer: the nearest surface wins where several depth pixels land on one RGB pixel; +inf = nothing landed
        out = np.full(rh * rw, np.inf, np.float32)
        zbuffer_min(index, z_rgb, out)
        out = out.reshape(rh, rw)
        if self.config.hole_fill:
            return _fill_marked_holes(out, int(self.config.hole_fill))
        # inf (and only inf) → 0, in one OpenCV pass rather than a boolean-mask assignment
        return cv2.threshold(out, _BIG, 0.0, cv2.THRESH_TOZERO_INV)[1]

    @staticmethod
    def _fisheye_targets(rgb: CameraModel, z, ax, ay, az, t, rw: int, rh: int) -> tuple[np.ndarray, np.ndarray]:
        """``depth_to_rgb_pixels`` for an RGB camera with a fisheye (equidistant) lens, through ``project_points``:
        the RGB pixel index of each depth sample that lands in the image, and its z."""
        X, Y, Z = z * ax.reshape(-1) + t[0], z * ay.reshape(-1) + t[1], z * az.reshape(-1) + t[2]
        sel = np.flatnonzero((z > 0) & (Z > 1e-6))
        u, v = project_points(rgb, X[sel], Y[sel], Z[sel])
        u, v = np.floor(u + 0.5), np.floor(v + 0.5)
        ok = (u >= 0) & (u < rw) & (v >= 0) & (v < rh)
        return (v[ok] * rw + u[ok]).astype(np.int32), Z[sel][ok]


def fill_depth_holes(depth: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Fill invalid (0) pixels that have a valid 3×3 neighbour with the nearest such neighbour's depth.

    Taking the nearest (minimum) depth keeps the z-buffer rule: a foreground edge is not eaten by background.
    Each iteration closes gaps one pixel further; the gaps come from the RGB camera sampling the scene more
    finely than the depth camera.
    """
    out = np.ascontiguousarray(depth, dtype=np.float32)
    _, holes = cv2.threshold(out, 0.0, np.inf, cv2.THRESH_BINARY_INV)  # +inf where invalid (≤ 0), 0 elsewhere
    return _fill_marked_holes(cv2.max(out, holes), int(iterations))


_BIG = 3.0e38  # any valid depth is below it; +inf marks holes


def _fill_marked_holes(marked: np.ndarray, iterations: int) -> np.ndarray:
    """``fill_depth_holes`` on a map with +inf for invalid pixels (what the z-buffer leaves); invalid → 0 on return.

    With holes already at +inf the erosion (a min filter) ignores them directly, and only hole pixels take the
    eroded value: four OpenCV passes per iteration instead of eight, same result.
    """
    kernel = np.ones((3, 3), np.uint8)
    out = marked
    hole = np.empty(out.shape, np.uint8)
    for _ in range(iterations):
        cv2.compare(out, _BIG, cv2.CMP_GT, dst=hole)
        eroded = cv2.erode(out, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=np.inf)
        cv2.copyTo(eroded, hole, out)
    return cv2.threshold(out, _BIG, 0.0, cv2.THRESH_TOZERO_INV)[1]  # still no valid neighbour → 0
