"""Registration against analytic ground truth, and the real OpenLORIS depth-to-colour check."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.pipeline.camera import CameraModel, Extrinsics, load_camera, load_extrinsics
from rgbt_seg_ros.pipeline.config import RegistrationConfig
from rgbt_seg_ros.pipeline.registration import (Registrar, fill_depth_holes, plane_homography, project_points,
                                                 undistort_pixels)
from rgbt_seg_ros.pipeline.resize import ResizeTransform

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def render_blobs(points: np.ndarray, hw: tuple[int, int], sigma: float = 1.6) -> np.ndarray:
    """float32 image with a Gaussian blob at each (x, y) (pixel-centre coordinates)."""
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros(hw, np.float32)
    for x, y in points:
        x0, x1 = int(max(0, x - 6 * sigma)), int(min(w, x + 6 * sigma + 1))
        y0, y1 = int(max(0, y - 6 * sigma)), int(min(h, y + 6 * sigma + 1))
        img[y0:y1, x0:x1] += np.exp(-((xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2) / (2 * sigma**2))
    return img


def isolated(*point_sets: np.ndarray, min_dist: float = 14.0) -> np.ndarray:
    """Points whose blobs do not overlap another one in any of the images."""
    keep = np.ones(len(point_sets[0]), bool)
    for pts in point_sets:
        d = np.linalg.norm(pts[:, None] - pts[None], axis=2)
        np.fill_diagonal(d, np.inf)
        keep &= d.min(1) >= min_dist
    return keep


def blob_centroids(img: np.ndarray, expected: np.ndarray, radius: int = 6) -> np.ndarray:
    """Intensity-weighted centroid of the image around each expected position (nan if the window is empty)."""
    out = []
    h, w = img.shape
    for x, y in expected:
        xi, yi = int(round(x)), int(round(y))
        x0, x1, y0, y1 = max(0, xi - radius), min(w, xi + radius + 1), max(0, yi - radius), min(h, yi + radius + 1)
        win = img[y0:y1, x0:x1].astype(np.float64)
        win = np.clip(win - 0.05 * win.max(), 0, None) if win.size else win
        if win.size == 0 or win.sum() <= 0:
            out.append((np.nan, np.nan))
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        out.append(((win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()))
    return np.asarray(out)


def test_homography_mode_against_analytic_positions():
    H = np.array([[1.1, 0.05, 30.0], [-0.03, 1.05, 12.0], [1e-5, 2e-5, 1.0]])
    rng = np.random.default_rng(0)
    aux_pts = np.column_stack([rng.uniform(20, 300, 40), rng.uniform(20, 220, 40)])
    aux = render_blobs(aux_pts, (256, 320))
    reg = Registrar({"mode": "homography", "homography": H.tolist()})
    out = reg.warp(aux, (320, 400))
    ph = np.column_stack([aux_pts, np.ones(len(aux_pts))]) @ H.T
    expect = ph[:, :2] / ph[:, 2:]
    inside = (expect[:, 0] > 8) & (expect[:, 0] < 392) & (expect[:, 1] > 8) & (expect[:, 1] < 312)
    inside &= isolated(aux_pts, expect)
    found = blob_centroids(out, expect[inside])
    err = np.linalg.norm(found - expect[inside], axis=1)
    print(f"homography registration: mean error {err.mean():.3f} px, max {err.max():.3f} px over {err.size} blobs")
    assert err.size >= 15 and err.mean() < 0.1 and err.max() < 0.5


def _rig(models: str = "plumb_bob"):
    if models == "plumb_bob":
        rgb = CameraModel(K=[[700, 0, 322], [0, 698, 238], [0, 0, 1]], D=[-0.12, 0.06, 0.001, -0.0005, 0.0],
                          width=640, height=480, frame_id="rgb")
        th = CameraModel(K=[[410, 0, 158], [0, 411, 130], [0, 0, 1]], D=[-0.38, 0.16, 0.0008, 0.0004, 0.0],
                         width=320, height=256, frame_id="thermal")
    else:  # rational-polynomial RGB lens, fisheye (equidistant) thermal lens
        rgb = CameraModel(K=[[700, 0, 322], [0, 698, 238], [0, 0, 1]],
                          D=[0.3, -0.1, 0.001, -0.0005, 0.01, 0.55, -0.05, 0.02], width=640, height=480,
                          distortion_model="rational_polynomial", frame_id="rgb")
        th = CameraModel(K=[[330, 0, 158], [0, 331, 130], [0, 0, 1]], D=[-0.02, 0.04, -0.03, 0.008],
                         width=320, height=256, distortion_model="equidistant", frame_id="thermal")
    R = cv2.Rodrigues(np.array([0.02, -0.035, 0.01]))[0]
    ext = Extrinsics(R, [0.12, -0.02, 0.01])  # thermal → rgb
    return rgb, th, ext


def _plane_points(d: float, n: int = 60, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.28, 0.28, n) * d
    y = rng.uniform(-0.22, 0.22, n) * d
    return np.column_stack([x, y, np.full(n, d)])  # on the plane z = d of the aux camera


def _project(cam: CameraModel, X: np.ndarray) -> np.ndarray:
    if cam.distortion_model == "equidistant":
        img, _ = cv2.fisheye.projectPoints(X.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), cam.K, cam.D)
    else:
        img, _ = cv2.projectPoints(X.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), cam.K, cam.D)
    return img[:, 0]


@pytest.mark.parametrize("model, D", [
    ("plumb_bob", [-0.43, 0.19, 0.002, -0.001, 0.05]),  # a thermal lens
    ("rational_polynomial", [0.3, -0.1, 0.001, 0.002, 0.02, 0.6, -0.05, 0.03]),  # an Azure Kinect-like colour lens
    ("equidistant", [0.1, -0.05, 0.01, 0.02])])
def test_project_points_is_opencvs_projection(model, D):
    # project_points does cv2.projectPoints' maths without its Jacobian (per depth frame it cost 30× the rest)
    cam = CameraModel(K=[[510, 0, 320], [0, 505, 256], [0, 0, 1]], D=D, width=640, height=512, distortion_model=model)
    rng = np.random.default_rng(3)
    X = np.stack([rng.uniform(-3, 3, 5000), rng.uniform(-2, 2, 5000), rng.uniform(0.5, 10, 5000)], axis=1)
    u, v = project_points(cam, X[:, 0], X[:, 1], X[:, 2])
    np.testing.assert_allclose(np.stack([u, v], axis=1), _project(cam, X), rtol=0, atol=1e-6)


@pytest.mark.parametrize("model, D", [
    ("plumb_bob", [-0.43, 0.19, 0.002, -0.001, 0.05]),  # a thermal lens, strong barrel distortion at the corners
    ("plumb_bob", [-0.1, 0.05, 0.001, -0.0005, 0.01]),
    ("rational_polynomial", [0.3, -0.1, 0.001, 0.002, 0.02, 0.6, -0.05, 0.03])])
def test_undistort_pixels_is_opencvs_undistortion_run_to_convergence(model, D):
    # undistort_pixels runs cv2.undistortPoints' iteration a fixed 50 times (vectorised) instead of until the error
    # bound: on every pixel of the image, corners included, it lands where cv2 does when cv2 runs to 1e-10 px
    cam = CameraModel(K=[[510, 0, 320], [0, 505, 256], [0, 0, 1]], D=D, width=640, height=512, distortion_model=model)
    u, v = np.meshgrid(np.arange(-8.0, 648.0, 0.75), np.arange(-8.0, 520.0, 0.75))
    x, y = undistort_pixels(cam, u, v)
    pts = np.stack([u.reshape(-1), v.reshape(-1)], axis=1)[:, None, :]
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10)
    if hasattr(cv2, "undistortPointsIter"):  # OpenCV 4.x
        ref = cv2.undistortPointsIter(pts, cam.K, cam.D, None, None, crit)[:, 0]
    else:
        ref = cv2.undistortPoints(pts, cam.K, cam.D, criteria=crit)[:, 0]
    err_px = np.hypot(x.reshape(-1) - ref[:, 0], y.reshape(-1) - ref[:, 1]) * 510
    assert err_px.max() < 1e-8
    # and it inverts project_points (round trip in pixels; the rational lens's outer corners converge slowest,
    # to 1e-5 px after 50 iterations, in cv2 as here)
    pu, pv = project_points(cam, x, y, np.ones_like(x))
    assert np.hypot(pu - u, pv - v).max() < 1e-4


@pytest.mark.parametrize("models", ["plumb_bob", "rational+equidistant"])
def test_plane_mode_with_distortion_against_projected_points(models):
    rgb, th, ext = _rig(models)
    d = 4.0
    X = _plane_points(d)
    aux_px = _project(th, X)
    rgb_px = _project(rgb, X @ ext.R.T + ext.t)  # ground truth: p_rgb = R p_aux + t
    ok = (aux_px[:, 0] > 8) & (aux_px[:, 0] < 312) & (aux_px[:, 1] > 8) & (aux_px[:, 1] < 248)
    ok &= (rgb_px[:, 0] > 8) & (rgb_px[:, 0] < 632) & (rgb_px[:, 1] > 8) & (rgb_px[:, 1] < 472)
    ok &= isolated(aux_px, rgb_px)
    aux = render_blobs(aux_px[ok], (256, 320), sigma=1.2)
    reg = Registrar({"mode": "plane", "plane_distance": d})
    reg.set_geometry(rgb, th, ext)
    out = reg.warp(aux, (480, 640))
    err = np.linalg.norm(blob_centroids(out, rgb_px[ok], radius=7) - rgb_px[ok], axis=1)
    print(f"plane-induced registration ({models}): mean error {err.mean():.3f} px, max {err.max():.3f} px, "
          f"{err.size} points")
    assert err.size >= 15 and err.mean() < 0.1 and err.max() < 0.5
    # the same geometry with the extrinsic taken the wrong way round is clearly off: the convention matters
    bad = Registrar({"mode": "plane", "plane_distance": d})
    bad.set_geometry(rgb, th, ext.inverse())
    err_bad = np.linalg.norm(blob_centroids(bad.warp(aux, (480, 640)), rgb_px[ok], radius=7) - rgb_px[ok], axis=1)
    assert np.nanmean(err_bad) > 3.0 or np.isnan(err_bad).mean() > 0.5


def test_plane_homography_formula_matches_projection():
    rgb, th, ext = _rig()
    rgb = CameraModel(rgb.K, np.zeros(5), 640, 480)
    th = CameraModel(th.K, np.zeros(5), 320, 256)
    n = np.array([0.1, -0.2, 1.0])
    n /= np.linalg.norm(n)
    d = 3.0
    rng = np.random.default_rng(2)
    # points on nᵀX = d in the aux frame
    uv = rng.uniform(-1, 1, (50, 2))
    X = np.column_stack([uv, np.zeros(50)])
    X = X - np.outer(X @ n, n) + n * d
    H = plane_homography(rgb.K, th.K, ext, d, n)
    a = _project(th, X)
    b = _project(rgb, X @ ext.R.T + ext.t)
    ph = np.column_stack([a, np.ones(50)]) @ H.T
    assert np.abs(ph[:, :2] / ph[:, 2:] - b).max() < 1e-6


def test_warp_maps_are_cached_per_geometry():
    rgb, th, ext = _rig()
    reg = Registrar({"mode": "plane", "plane_distance": 5.0})
    reg.set_geometry(rgb, th, ext)
    aux = np.random.default_rng(0).integers(0, 65535, (256, 320), dtype=np.uint16)
    tf = ResizeTransform((480, 640), (240, 320))
    for _ in range(3):
        out = reg.warp(aux, (480, 640), tf)
    assert out.shape == (240, 320) and out.dtype == np.uint16
    assert reg.maps_built == 1
    reg.set_geometry(rgb, th, Extrinsics(ext.R, ext.t + [0.01, 0, 0]))  # a new calibration → new maps
    reg.warp(aux, (480, 640), tf)
    assert reg.maps_built == 2
    # the network-grid warp equals the full-resolution warp resized (composition of maps)
    full = reg.warp(aux.astype(np.float32), (480, 640))
    net = reg.warp(aux.astype(np.float32), (480, 640), tf)
    ref = cv2.resize(full, (320, 240), interpolation=cv2.INTER_LINEAR)
    inner = (slice(20, -20), slice(20, -20))
    assert np.median(np.abs(net[inner] - ref[inner])) < 0.02 * 65535


def test_identity_mode_and_unregistrable_sizes():
    aux = np.arange(48 * 64, dtype=np.float32).reshape(48, 64)
    reg = Registrar({"mode": "identity"})
    assert np.array_equal(reg.warp(aux, (48, 64)), aux)  # same size: untouched
    up = reg.warp(aux, (96, 128))
    ref = cv2.resize(aux, (128, 96), interpolation=cv2.INTER_LINEAR)
    assert np.allclose(up, ref, atol=0.05)  # to the edges: samples within the image's area take its edge pixels
    flat = reg.warp(np.full((48, 64), 200, np.uint8), (96, 128), border_value=0)
    assert (flat == 200).all()  # no ring of the border value around an enlarged image
    shifted = Registrar({"mode": "homography", "homography": [[2, 0, 10.0], [0, 2, 0], [0, 0, 1]]})
    out = shifted.warp(np.full((48, 64), 200, np.uint8), (96, 160), border_value=7)
    # aux pixel centre x maps to 2x + 10: the image's area [-0.5, 63.5] covers RGB columns 9..137
    assert (out[:, 10:137] == 200).all() and (out[:, :8] == 7).all() and (out[:, 139:] == 7).all()
    with pytest.raises(RgbtSegError, match="aspect"):
        reg.warp(aux, (100, 64))
    with pytest.raises(RgbtSegError, match="cannot be registered"):
        reg.warp(np.zeros((1, 64), np.float32), (48, 64))
    with pytest.raises(RgbtSegError, match="needs rgb camera"):
        Registrar({"mode": "plane"}).warp(aux, (48, 64))
    with pytest.raises(RgbtSegError, match="singular"):
        Registrar({"mode": "homography", "homography": [[1, 0, 0], [0, 0, 0], [0, 0, 1]]})
    with pytest.raises(RgbtSegError, match="registration.mode"):
        RegistrationConfig(mode="magic")
    # a calibration for another aspect ratio than the image cannot be used
    rgb, th, ext = _rig()
    reg = Registrar({"mode": "plane"})
    reg.set_geometry(rgb, th, ext)
    with pytest.raises(RgbtSegError, match="cannot be registered"):
        reg.warp(np.zeros((256, 256), np.float32), (480, 640))


def _raycast_depth(cam: CameraModel, T_world_cam: np.ndarray) -> np.ndarray:
    """z-depth (camera frame) of a scene in the world (= RGB) frame: wall z = 6, box face z = 2.5 for
    x ∈ [−0.6, 0.4], y ∈ [−0.5, 0.3]. Pinhole cameras without distortion."""
    h, w = cam.height, cam.width
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    rays = np.stack([(u - cam.K[0, 2]) / cam.K[0, 0], (v - cam.K[1, 2]) / cam.K[1, 1], np.ones_like(u)], -1)
    R, o = T_world_cam[:3, :3], T_world_cam[:3, 3]
    dw = rays @ R.T  # ray directions in the world frame, per unit camera z
    depth = np.full((h, w), np.inf)
    for plane_z, box in ((6.0, None), (2.5, (-0.6, 0.4, -0.5, 0.3))):
        s = (plane_z - o[2]) / dw[..., 2]  # camera z at the hit, since rays have z = 1 in the camera
        p = o + dw * s[..., None]
        hit = s > 0
        if box is not None:
            hit &= (p[..., 0] >= box[0]) & (p[..., 0] <= box[1]) & (p[..., 1] >= box[2]) & (p[..., 1] <= box[3])
        depth = np.where(hit & (s < depth), s, depth)
    return depth


def test_depth_reprojection_against_rendered_scene():
    rgb = CameraModel(K=[[520, 0, 319.5], [0, 520, 239.5], [0, 0, 1]], D=np.zeros(5), width=640, height=480)
    # a wider, coarser depth camera: every RGB pixel is seen, but about two RGB pixels per depth pixel
    dep = CameraModel(K=[[240, 0, 160], [0, 240, 120], [0, 0, 1]], D=np.zeros(5), width=320, height=240)
    R = cv2.Rodrigues(np.array([0.0, 0.03, 0.0]))[0]
    ext = Extrinsics(R, [0.08, 0.0, 0.0])  # depth → rgb
    depth_img = _raycast_depth(dep, ext.matrix()).astype(np.float32)
    truth = _raycast_depth(rgb, np.eye(4))
    reg = Registrar({"mode": "depth", "hole_fill": 2})
    reg.set_geometry(rgb, dep, ext)
    out = reg.register_depth(depth_img, (480, 640))
    valid_t = np.isfinite(truth)
    both = valid_t & (out > 0)
    rel = np.abs(out[both] - truth[both]) / truth[both]
    coverage = both.sum() / valid_t.sum()
    print(f"depth reprojection (rendered scene): coverage {coverage:.4f}, median rel. error {np.median(rel):.5f}, "
          f"within 3 %: {(rel < 0.03).mean():.4f}")
    assert coverage > 0.95 and np.median(rel) < 0.005 and (rel < 0.03).mean() > 0.97
    # z-buffer: the box face stays in front where it and the wall land on the same RGB pixels
    assert np.allclose(out[200:260, 250:300], 2.5, rtol=0.01)
    # without hole filling, the sparser depth camera leaves gaps
    bare = Registrar({"mode": "depth", "hole_fill": 0})
    bare.set_geometry(rgb, dep, ext)
    assert ((bare.register_depth(depth_img, (480, 640)) > 0) & valid_t).sum() < 0.5 * valid_t.sum()


def test_zbuffer_keeps_nearest_and_hole_fill_prefers_near():
    cam4 = CameraModel(K=[[4, 0, 1.5], [0, 4, 1.5], [0, 0, 1]], D=np.zeros(5), width=4, height=4)
    cam2 = CameraModel(K=[[2, 0, 0.5], [0, 2, 0.5], [0, 0, 1]], D=np.zeros(5), width=2, height=2)
    d = np.full((4, 4), 5.0, np.float32)
    d[1, 0] = 2.0  # one near pixel among the four that land on rgb pixel (0, 0)
    d[3, 3] = 0.0  # invalid
    reg = Registrar({"mode": "depth", "hole_fill": 0})
    reg.set_geometry(cam2, cam4, Extrinsics.identity())
    out = reg.register_depth(d, (2, 2))
    assert out[0, 0] == pytest.approx(2.0) and out[1, 1] == pytest.approx(5.0)
    filled = fill_depth_holes(np.array([[0, 3, 0], [9, 0, 9], [0, 9, 0]], np.float32), 1)
    assert filled[1, 1] == 3 and filled[0, 0] == 3 and (filled > 0).all()
    with pytest.raises(RgbtSegError, match="too large"):  # pixel indices are int32: refused, not wrapped around
        reg.register_depth(d, (65536, 32768))


def test_depth_reprojection_onto_an_rgb_grid_past_2_to_the_24_pixels():
    # a 17 MP RGB grid: the flat pixel index of the lower rows no longer fits float32's 24-bit mantissa
    rh, rw = 2100, 8192
    rgb = CameraModel(K=[[4100.3, 0, 4095.7], [0, 4100.3, 1050.2], [0, 0, 1]], D=np.zeros(5), width=rw, height=rh)
    dep = CameraModel(K=[[260.1, 0, 159.3], [0, 260.1, 119.6], [0, 0, 1]], D=np.zeros(5), width=320, height=240)
    t = np.array([0.02, 0.001, 0.0])
    depth = (1 + 3 * np.random.default_rng(5).random((240, 320))).astype(np.float32)
    reg = Registrar({"mode": "depth", "hole_fill": 0})
    reg.set_geometry(rgb, dep, Extrinsics(np.eye(3), t))
    out = reg.register_depth(depth, (rh, rw))
    # the same projection in float64, written independently
    v, u = np.mgrid[0:240, 0:320].astype(np.float64)
    z = depth.astype(np.float64)
    X, Y = (u - 159.3) / 260.1 * z + t[0], (v - 119.6) / 260.1 * z + t[1]
    col, row = np.floor(4100.3 * X / z + 4095.7 + 0.5), np.floor(4100.3 * Y / z + 1050.2 + 0.5)
    inside = (col >= 0) & (col < rw) & (row >= 0) & (row < rh)
    ref = np.zeros((rh, rw), bool)
    ref[row[inside].astype(int), col[inside].astype(int)] = True
    lower = slice((1 << 24) // rw + 1, rh)  # rows whose flat index is past 2^24
    assert ref[lower].sum() > 1000
    assert ((out[lower] > 0) != ref[lower]).sum() <= 0.005 * ref[lower].sum()  # float32 rounding at ties only
    assert ((out > 0) != ref).sum() <= 0.001 * ref.sum()


def _register_depth_numpy(reg: Registrar, rgb: CameraModel, dep: CameraModel, ext: Extrinsics, depth, rgb_hw):
    """register_depth's reprojection as whole-image numpy passes (what it was before kernels.depth_to_rgb_pixels),
    hole filling off: float32 p = z · ray + t, pinhole in float32 or the lens through project_points, z-buffer."""
    rh, rw = rgb_hw
    ax, ay, az = reg._depth_rays(dep, ext)
    z = depth.astype(np.float32)
    t = ext.t.astype(np.float32)
    X, Y, Z = z * ax + t[0], z * ay + t[1], z * az + t[2]
    keep = (z > 0) & (Z > 1e-6)
    if rgb.has_distortion:
        u, v = project_points(rgb, X[keep], Y[keep], Z[keep])
        u, v, Zk = np.floor(u + 0.5), np.floor(v + 0.5), Z[keep]
    else:
        K = rgb.K
        iz = np.float32(1.0) / np.maximum(Z, np.float32(1e-6))
        u = (X * iz) * np.float32(K[0, 0]) + (Y * iz) * np.float32(K[0, 1]) + np.float32(K[0, 2]) + np.float32(0.5)
        v = (Y * iz) * np.float32(K[1, 1]) + np.float32(K[1, 2]) + np.float32(0.5)
        u, v, Zk = np.floor(u)[keep], np.floor(v)[keep], Z[keep]
    ok = (u >= 0) & (u < rw) & (v >= 0) & (v < rh)
    out = np.full(rh * rw, np.inf, np.float32)
    np.minimum.at(out, v[ok].astype(np.intp) * rw + u[ok].astype(np.intp), Zk[ok])
    return np.where(np.isinf(out), 0, out).reshape(rh, rw)


@pytest.mark.parametrize("lens", ["pinhole", "skew", "plumb_bob", "rational_polynomial", "equidistant"])
def test_depth_reprojection_equals_the_whole_image_numpy_formulas(lens):
    # the one-pass kernel lands every depth sample on the same RGB pixel as the numpy formulas, rounding included:
    # invalid and negative depths, points behind the RGB camera and points outside its image among them
    rng = np.random.default_rng(11)
    K = np.array([[610.2, 0.0, 423.7], [0.0, 609.8, 241.3], [0.0, 0.0, 1.0]])
    D = {"pinhole": np.zeros(5), "skew": np.zeros(5), "plumb_bob": [0.1, -0.25, 0.001, 0.0005, 0.1],
         "rational_polynomial": [0.1, -0.25, 0.001, 0.0005, 0.1, 0.01, -0.02, 0.03],
         "equidistant": [0.05, -0.01, 0.002, 0.0]}[lens]
    if lens == "skew":
        K[0, 1] = 1.5
    model = lens if lens in ("rational_polynomial", "equidistant") else "plumb_bob"
    rgb = CameraModel(K=K, D=D, width=848, height=480, distortion_model=model)
    dep = CameraModel(K=[[425.1, 0, 421.9], [0, 425.1, 238.2], [0, 0, 1]], D=[0.01, -0.02, 0, 0, 0], width=848, height=480)
    ext = Extrinsics(cv2.Rodrigues(np.array([0.02, -0.3, 0.01]))[0], [0.05, -0.01, 0.3])
    depth = (0.2 + 6 * rng.random((480, 848))).astype(np.float32)
    depth[rng.random(depth.shape) < 0.1] = 0.0
    depth[:5] = -1.0
    reg = Registrar({"mode": "depth", "hole_fill": 0})
    reg.set_geometry(rgb, dep, ext)
    for rgb_hw in ((480, 848), (240, 424)):
        out = reg.register_depth(depth, rgb_hw)
        scaled = rgb.for_size(rgb_hw[1], rgb_hw[0])
        ref = _register_depth_numpy(reg, scaled, dep, ext, depth, rgb_hw)
        assert 0.2 < (ref > 0).mean() < 0.95  # a frame that lands partly outside
        assert np.array_equal(out, ref)


@pytest.mark.skipif(not (DATA / "openloris-rgbd").is_dir(), reason="shared/data/openloris-rgbd is absent")
def test_openloris_raw_depth_onto_colour_matches_device_alignment():
    root = DATA / "openloris-rgbd"
    rgb = load_camera(f"{root / 'sensors.yaml'}#d400_color_optical_frame")
    dep = load_camera(f"{root / 'sensors.yaml'}#d400_depth_optical_frame")
    ext = load_extrinsics(root / "trans_matrix.yaml", rgb="d400_color_optical_frame", aux="d400_depth_optical_frame")
    reg = Registrar({"mode": "depth", "hole_fill": 1})
    reg.set_geometry(rgb, dep, ext)
    names = sorted(p.name for p in (root / "depth").glob("*.png"))
    assert names
    for name in names:
        raw = cv2.imread(str(root / "depth" / name), cv2.IMREAD_UNCHANGED)
        aligned = cv2.imread(str(root / "aligned_depth" / name), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16 and aligned.shape == (rgb.height, rgb.width)
        out = reg.register_depth(raw.astype(np.float32) * 1e-3, aligned.shape)
        dev = aligned > 0
        both = dev & (out > 0)
        coverage = both.sum() / dev.sum()
        ref = aligned[both].astype(np.float64) * 1e-3
        rel = np.abs(out[both] - ref) / ref
        med, w3 = float(np.median(rel)), float((rel <= 0.03).mean())
        print(f"OpenLORIS {name}: coverage of aligned_depth {coverage:.4f}, median rel. diff {med:.4f}, "
              f"within 3 %: {w3:.4f}")
        assert coverage >= 0.95 and med <= 0.015 and w3 >= 0.90
    assert reg.maps_built == 1  # the back-projection rays were computed once for all frames
