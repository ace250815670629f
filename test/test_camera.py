"""Camera models and extrinsics from CameraInfo messages and calibration files (real ones included)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.pipeline.camera import CameraModel, Extrinsics, _load_yaml, as_camera_model, load_camera, load_extrinsics
from rgbt_seg_ros.pipeline.registration import Registrar

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CALTECH = DATA / "caltech-rgbt-calib"
OPENLORIS = DATA / "openloris-rgbd"
need_caltech = pytest.mark.skipif(not CALTECH.is_dir(), reason="shared/data/caltech-rgbt-calib is absent")
need_openloris = pytest.mark.skipif(not OPENLORIS.is_dir(), reason="shared/data/openloris-rgbd is absent")

K = [500.0, 0.0, 320.0, 0.0, 501.0, 240.0, 0.0, 0.0, 1.0]


def test_from_ros2_and_ros1_style_messages():
    hdr = SimpleNamespace(frame_id="thermal_optical", stamp=SimpleNamespace(sec=1, nanosec=0))
    ros2 = SimpleNamespace(header=hdr, k=K, d=[-0.3, 0.1, 0.001, 0.002, 0.0], p=[0.0] * 12, r=[0.0] * 9,
                           width=640, height=480, distortion_model="plumb_bob")
    ros1 = SimpleNamespace(header=hdr, K=K, D=[-0.3, 0.1, 0.001, 0.002, 0.0], P=[0.0] * 12, R=[0.0] * 9,
                           width=640, height=480, distortion_model="plumb_bob")
    a, b = CameraModel.from_camera_info(ros2), CameraModel.from_camera_info(ros1)
    assert a.key == b.key and a.frame_id == "thermal_optical"
    assert a.K[1, 1] == 501.0 and a.D.shape == (5,) and a.has_distortion
    assert a.P is None and a.R is None  # all-zero P/R mean "not set"


def test_from_rosbags_message_class():
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    CameraInfo = ts.types["sensor_msgs/msg/CameraInfo"]
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    RoI = ts.types["sensor_msgs/msg/RegionOfInterest"]
    msg = CameraInfo(header=Header(stamp=Time(sec=3, nanosec=0), frame_id="rgb"), height=480, width=640,
                     distortion_model="rational_polynomial", d=np.array([0.1, -0.2, 0, 0, 0.01, 0.2, -0.1, 0.02]),
                     k=np.array(K), r=np.eye(3).reshape(-1), p=np.zeros(12), binning_x=0, binning_y=0,
                     roi=RoI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    cam = as_camera_model(msg)
    assert cam.distortion_model == "rational_polynomial" and cam.D.size == 8 and cam.frame_id == "rgb"
    assert np.allclose(cam.R, np.eye(3))


def test_bad_camera_infos_are_named():
    with pytest.raises(RgbtSegError, match="uncalibrated"):
        CameraModel.from_camera_info(SimpleNamespace(k=[0.0] * 9, d=[], width=640, height=480,
                                                     distortion_model="plumb_bob"), "thermal/camera_info")
    with pytest.raises(RgbtSegError, match="thermal/camera_info.*distortion_model"):
        CameraModel.from_camera_info(SimpleNamespace(k=K, d=[0.1], width=640, height=480, distortion_model="magic"),
                                     "thermal/camera_info")
    with pytest.raises(RgbtSegError, match="not a CameraInfo"):
        CameraModel.from_camera_info(SimpleNamespace(width=1), "rgb/camera_info")
    with pytest.raises(RgbtSegError, match="equidistant"):
        CameraModel(K, [0.1, 0.2], 640, 480, "equidistant")


def test_camera_info_roi_is_a_window_of_the_calibrated_frame():
    # a driver capturing a 480×360 window at (80, 60) of its 640×480 calibration, then binning it 2×2
    full = SimpleNamespace(k=K, d=[-0.3, 0.1, 0.0, 0.0, 0.0], width=640, height=480, distortion_model="plumb_bob",
                           p=[500.0, 0, 320.0, 0, 0, 501.0, 240.0, 0, 0, 0, 1.0, 0],
                           roi=SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0))
    crop = SimpleNamespace(**{**vars(full), "roi": SimpleNamespace(x_offset=80, y_offset=60, width=480, height=360)})
    a, b = CameraModel.from_camera_info(full), CameraModel.from_camera_info(crop)
    assert (b.width, b.height) == (480, 360) and b.K[0, 2] == 240.0 and b.K[1, 2] == 180.0 and b.K[0, 0] == 500.0
    assert b.P[0, 2] == 240.0 and b.P[1, 2] == 180.0
    # every ray meets the same pixel: full-frame pixel (u, v) is window pixel (u − 80, v − 60)
    ext = Extrinsics.identity()
    for cam, shift in ((a, 0.0), (b, 1.0)):
        reg = Registrar({"mode": "plane", "plane_distance": 5.0})
        reg.set_geometry(a, cam, ext)
        u, v = np.array([100.0, 400.0]), np.array([70.0, 300.0])
        ax, ay = reg.aux_coords(u, v, (cam.height, cam.width), (480, 640))
        assert np.allclose(ax, u - 80 * shift, atol=1e-6) and np.allclose(ay, v - 60 * shift, atol=1e-6)
    binned = b.for_size(240, 180)  # the window, binned
    assert binned.K[0, 2] == pytest.approx((240.0 + 0.5) / 2 - 0.5)
    bad = SimpleNamespace(**{**vars(full), "roi": SimpleNamespace(x_offset=300, y_offset=0, width=480, height=360)})
    with pytest.raises(RgbtSegError, match="thermal/camera_info: roi 480×360 at \\(300, 0\\) reaches outside"):
        CameraModel.from_camera_info(bad, "thermal/camera_info")


def test_for_size_scales_intrinsics_and_refuses_other_aspect():
    cam = CameraModel(K, np.zeros(5), 640, 480)
    half = cam.for_size(320, 240)
    # the principal point follows the pixel-centre convention of cv2.resize
    assert half.K[0, 0] == pytest.approx(250.0) and half.K[0, 2] == pytest.approx((320.0 + 0.5) / 2 - 0.5)
    with pytest.raises(RgbtSegError, match="cannot be registered"):
        cam.for_size(640, 640)


@need_caltech
def test_caltech_ros_camera_info_yaml_and_kalibr_load_directly():
    rgb = load_camera(CALTECH / "color.yaml")
    th = load_camera(CALTECH / "thermal.yaml")
    assert (rgb.width, rgb.height) == (960, 600) and (th.width, th.height) == (640, 512)
    assert rgb.K[0, 0] == pytest.approx(680.11846194) and th.K[1, 2] == pytest.approx(261.56701122)
    assert th.distortion_model == "plumb_bob" and th.D[0] == pytest.approx(-0.43339599)
    cam1 = load_camera(f"{CALTECH / 'color_thermal_10x10_calib.yaml'}#cam1")
    assert cam1.K[0, 0] == pytest.approx(512.3871332219645) and cam1.D.size == 5 and cam1.D[4] == 0.0
    ext = load_extrinsics(CALTECH / "color_thermal_10x10_calib.yaml")  # cam0 = colour (rgb), cam1 = thermal
    raw = yaml.safe_load((CALTECH / "color_thermal_10x10_calib.yaml").read_text())["cam1"]["T_cn_cnm1"]
    # T_cn_cnm1 maps colour-frame points into the thermal frame; ours maps thermal → colour: inverses
    assert np.allclose(ext.matrix() @ np.asarray(raw), np.eye(4), atol=1e-9)
    assert np.linalg.norm(ext.t) == pytest.approx(0.02506, abs=1e-4)
    # in the thermal/mono file the thermal camera is cam0: name the frames; T_cn_cnm1 is then already aux → rgb
    other = CALTECH / "thermal_mono_10x10_calib.yaml"
    t_m = load_extrinsics(f"{other}#cam1,cam0")
    assert np.allclose(t_m.matrix(), np.asarray(yaml.safe_load(other.read_text())["cam1"]["T_cn_cnm1"]), atol=1e-12)
    assert load_camera(f"{other}#cam0").D[0] == pytest.approx(-0.43715165949170764)
    # the registration config takes these files as they are
    reg = Registrar({"mode": "plane", "rgb_camera": str(CALTECH / "color.yaml"),
                     "aux_camera": str(CALTECH / "thermal.yaml"),
                     "extrinsics": str(CALTECH / "color_thermal_10x10_calib.yaml"), "plane_distance": 20.0})
    out = reg.warp(np.full((512, 640), 1000, np.uint16), (600, 960))
    assert out.shape == (600, 960) and (out == 1000).mean() > 0.5


@need_openloris
def test_openloris_sensors_and_trans_matrix():
    sensors = OPENLORIS / "sensors.yaml"
    col = load_camera(f"{sensors}#d400_color_optical_frame")
    assert (col.width, col.height) == (848, 480)
    # OpenLORIS stores [fx, cx, fy, cy]
    assert col.K[0, 0] == pytest.approx(611.45098876953125) and col.K[0, 2] == pytest.approx(433.2039794921875)
    fish = load_camera(f"{sensors}#t265_fisheye1_optical_frame")
    assert fish.distortion_model == "equidistant" and fish.D.size == 4
    with pytest.raises(RgbtSegError, match="several cameras"):
        load_camera(sensors)
    ext = load_extrinsics(OPENLORIS / "trans_matrix.yaml")  # default: depth → colour of the D400
    assert ext.t[0] == pytest.approx(0.014881294220686)
    # chaining through base_link: fisheye1 → colour equals inv(T_base_colour) · T_base_fisheye1
    via = load_extrinsics(f"{OPENLORIS / 'trans_matrix.yaml'}#d400_color_optical_frame,t265_fisheye1_optical_frame")
    data = _load_yaml(OPENLORIS / "trans_matrix.yaml")["trans_matrix"]
    T = {(d["parent_frame"], d["child_frame"]): d["matrix"] for d in data}
    expect = np.linalg.inv(T[("base_link", "d400_color_optical_frame")]) @ T[("base_link", "t265_fisheye1_optical_frame")]
    assert np.allclose(via.matrix(), expect, atol=1e-9)
    with pytest.raises(RgbtSegError, match="no frame"):
        load_extrinsics(f"{OPENLORIS / 'trans_matrix.yaml'}#d400_color_optical_frame,lidar")


def test_plain_yaml_formats(tmp_path):
    R = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float)
    (tmp_path / "rt.yaml").write_text(yaml.safe_dump({"R": R.tolist(), "t": [0.1, 0.2, 0.3]}))
    (tmp_path / "T.yaml").write_text(yaml.safe_dump({"T_rgb_aux": np.vstack([np.c_[R, [0.1, 0.2, 0.3]],
                                                                               [0, 0, 0, 1]]).tolist()}))
    a, b = load_extrinsics(tmp_path / "rt.yaml"), load_extrinsics(tmp_path / "T.yaml")
    assert np.allclose(a.matrix(), b.matrix())
    assert np.allclose(load_extrinsics({"R": R, "t": [0.1, 0.2, 0.3]}).matrix(), a.matrix())
    assert np.allclose(load_extrinsics(a.matrix()).inverse().matrix() @ a.matrix(), np.eye(4))
    with pytest.raises(RgbtSegError, match="not a rotation"):
        Extrinsics(np.diag([1.0, 2.0, 1.0]), np.zeros(3))
    (tmp_path / "none.yaml").write_text("foo: 1\n")
    with pytest.raises(RgbtSegError, match="no extrinsics"):
        load_extrinsics(tmp_path / "none.yaml")
    with pytest.raises(RgbtSegError, match="not a recognised calibration"):
        load_camera(tmp_path / "none.yaml")
    with pytest.raises(RgbtSegError, match="cannot read"):
        load_camera(tmp_path / "missing.yaml")
    info = {"image_width": 320, "image_height": 240, "camera_name": "cam", "distortion_model": "equidistant",
            "camera_matrix": {"rows": 3, "cols": 3, "data": [200, 0, 160, 0, 200, 120, 0, 0, 1]},
            "distortion_coefficients": {"rows": 1, "cols": 4, "data": [0.01, 0.0, 0.0, 0.0]}}
    (tmp_path / "cam.yaml").write_text(yaml.safe_dump(info))
    cam = load_camera(tmp_path / "cam.yaml")
    assert cam.distortion_model == "equidistant" and cam.K[0, 2] == 160
    del info["image_width"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(info))
    with pytest.raises(RgbtSegError, match="image_width"):
        load_camera(tmp_path / "bad.yaml")
