"""SegmentationPipeline end to end with a real (tiny) torch network behind the real TorchBackend."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.inference.artifact import ModelCard
from rgbt_seg_ros.inference.torch_backend import TorchBackend
from rgbt_seg_ros.pipeline import CameraModel, Extrinsics, PipelineConfig, SegmentationPipeline, get_class_set
from rgbt_seg_ros.pipeline.registration import plane_homography

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class WarmIsClassOne(torch.nn.Module):
    """1×1 convolution over concat(rgb, aux): class 1 wherever the standardised aux is positive
    (i.e. above the card's aux_mean in [0, 1] terms); class 0 elsewhere."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, num_classes, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[1, 3] = 4.0
        self.seen_aux = []

    def forward(self, rgb, aux):
        self.seen_aux.append(aux.detach().clone())
        return self.conv(torch.cat([rgb, aux], 1))


def make_pipeline(config=None, input_size=(240, 320), modality="thermal", num_classes=2, **card_kw):
    cs = get_class_set("mfnet")
    card = ModelCard(network="test_1x1", num_classes=num_classes, class_names=list(cs.class_names[:num_classes]),
                     palette=[list(c) for c in cs.palette[:num_classes]], input_size=input_size, modality=modality,
                     **card_kw)
    net = WarmIsClassOne(num_classes)
    return SegmentationPipeline(TorchBackend(net, card), config), net


def hot_square(hw, box, cold=20000, hot=30000):
    img = np.full(hw, cold, np.uint16)
    y0, y1, x0, x1 = box
    img[y0:y1, x0:x1] = hot
    return img


def test_identity_pipeline_end_to_end():
    pipe, net = make_pipeline({"normalization": {"thermal_agc": "fixed", "thermal_range": [19000, 31000]}})
    rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    aux = hot_square((480, 640), (100, 300, 200, 500))
    r = pipe.process(rgb, aux, "mono16")
    assert r.aux_used and r.labels.shape == (480, 640) and r.labels.dtype == np.uint8
    assert (r.labels[110:290, 210:490] == 1).all() and (r.labels[:90] == 0).all() and (r.labels[:, :190] == 0).all()
    assert r.colour.shape == (480, 640, 3) and r.colour[200, 300].tolist() == [64, 0, 128]  # MFNet "car" colour
    assert r.confidence.dtype == np.float32 and 0.5 <= r.confidence.min() and r.confidence.max() <= 1.0
    assert r.overlay.shape == (480, 640, 3) and r.registered_aux is None
    for stage in ("preprocess_rgb", "register", "normalize_aux", "infer", "postprocess", "render", "total"):
        assert stage in r.timings and r.timings[stage] >= 0
    # the network saw the aux normalised with the card's mean/std at its input size
    seen = net.seen_aux[-1]
    assert seen.shape == (1, 1, 240, 320)
    assert float(seen.min()) == pytest.approx((1000 / 12000 - 0.5) / 0.25, abs=1e-4)


def test_outputs_not_requested_are_not_computed():
    pipe, _ = make_pipeline()
    rgb = np.zeros((240, 320, 3), np.uint8)
    aux = hot_square((240, 320), (10, 50, 10, 50))
    r = pipe.process(rgb, aux, "mono16", outputs={"labels"})
    assert r.labels is not None and r.colour is None and r.confidence is None and r.overlay is None
    r = pipe.process(rgb, aux, "mono16", outputs={"confidence"})
    assert r.labels is None and r.colour is None and r.confidence is not None and "render" not in r.timings
    r = pipe.process(rgb, aux, "mono16", outputs={"confidence", "registered_aux"})
    assert r.labels is None and r.confidence is not None and r.registered_aux.shape == (240, 320)
    with pytest.raises(RgbtSegError, match="outputs: unknown"):
        pipe.process(rgb, aux, "mono16", outputs={"labels", "depth"})


class Strided(torch.nn.Module):
    """A network that breaks the contract: logits at half the input resolution."""

    def forward(self, rgb, aux):
        return torch.nn.functional.avg_pool2d(torch.cat([rgb[:, :1], aux], 1), 2)


def test_backend_returning_wrong_logit_size_is_named():
    cs = get_class_set("mfnet")
    card = ModelCard(network="strided", num_classes=2, class_names=list(cs.class_names[:2]),
                     palette=[list(c) for c in cs.palette[:2]], input_size=(64, 64))
    pipe = SegmentationPipeline(TorchBackend(Strided(), card))
    with pytest.raises(RgbtSegError, match=r"backend torch-cpu-fp32: returned logits of shape \(1, 2, 32, 32\)"):
        pipe.process(np.zeros((64, 64, 3), np.uint8), None)


def test_rgb_only_when_aux_is_missing():
    pipe, net = make_pipeline()
    r = pipe.process(np.zeros((240, 320, 3), np.uint8), None, "mono16")
    assert not r.aux_used and (r.labels == 0).all()
    assert np.allclose(r.confidence, 0.5)  # two equal logits: the zero aux that modality dropout trains with
    assert float(net.seen_aux[-1].abs().max()) == 0.0


def test_bad_inputs():
    pipe, _ = make_pipeline()
    with pytest.raises(RgbtSegError, match="rgb image"):
        pipe.process(np.zeros((240, 320), np.uint8), None)
    with pytest.raises(RgbtSegError, match="rgb image"):
        pipe.process(np.zeros((240, 320, 3), np.float32), None)
    with pytest.raises(RgbtSegError, match="thermal image: encoding 'bgr8'"):
        pipe.process(np.zeros((240, 320, 3), np.uint8), np.zeros((240, 320), np.uint8), "bgr8")
    with pytest.raises(RgbtSegError, match="aspect"):
        pipe.process(np.zeros((240, 320, 3), np.uint8), np.zeros((240, 240), np.uint8), "mono8")


def test_plane_registration_with_camera_infos_per_call():
    rgb_info = SimpleNamespace(k=[600, 0, 320, 0, 600, 240, 0, 0, 1], d=[0.0] * 5, width=640, height=480,
                               distortion_model="plumb_bob", header=SimpleNamespace(frame_id="rgb"))
    th_cam = CameraModel(K=[[400, 0, 160], [0, 400, 128], [0, 0, 1]], D=np.zeros(5), width=320, height=256)
    ext = Extrinsics(np.eye(3), [0.1, 0.0, 0.0])
    pipe, _ = make_pipeline({"registration": {"mode": "plane", "plane_distance": 2.0},
                             "normalization": {"thermal_agc": "fixed", "thermal_range": [19000, 31000]}})
    aux = hot_square((256, 320), (98, 158, 130, 190))
    r = pipe.process(np.zeros((480, 640, 3), np.uint8), aux, "mono16", rgb_camera=rgb_info, aux_camera=th_cam,
                     extrinsics=ext, outputs={"labels", "registered_aux"})
    H = plane_homography(np.array(rgb_info.k).reshape(3, 3), th_cam.K, ext, 2.0)
    c = H @ np.array([159.5, 127.5, 1.0])
    expect = c[:2] / c[2]  # the square's centre seen by the RGB camera: 30 px to the right of centre
    # outside the thermal view the aux is fed as its mean, 0: this net's decision boundary, so look well inside
    seen = cv2.erode((r.registered_aux > 0).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    ys, xs = np.nonzero((r.labels == 1) & seen)
    assert abs(xs.mean() - expect[0]) < 1.0 and abs(ys.mean() - expect[1]) < 1.0
    assert abs(xs.mean() - 319.5 - 30.0) < 1.0
    ys2, xs2 = np.nonzero(r.registered_aux > 0.5)
    assert abs(xs2.mean() - expect[0]) < 0.5 and r.registered_aux.shape == (480, 640)
    # no calibration at all: a clear error instead of a silent identity
    pipe2, _ = make_pipeline({"registration": {"mode": "plane"}})
    with pytest.raises(RgbtSegError, match="needs rgb camera, aux camera, extrinsics"):
        pipe2.process(np.zeros((480, 640, 3), np.uint8), aux, "mono16")


def test_uncalibrated_camera_info_matters_only_where_intrinsics_are_used():
    # camera_info_manager without a calibration publishes K = 0: identity and homography never read K
    uncalibrated = SimpleNamespace(k=[0.0] * 9, d=[], width=320, height=256, distortion_model="plumb_bob",
                                   header=SimpleNamespace(frame_id="thermal"))
    aux = hot_square((256, 320), (98, 158, 130, 190))
    rgb = np.zeros((480, 640, 3), np.uint8)
    for registration in ({"mode": "identity", "aspect_tolerance": 0.1},
                         {"mode": "homography", "homography": [[2, 0, 0], [0, 2, 0], [0, 0, 1]]}):
        pipe, _ = make_pipeline({"registration": registration})
        r = pipe.process(rgb, aux, "mono16", rgb_camera=uncalibrated, aux_camera=uncalibrated, outputs={"labels"})
        assert r.aux_used and (r.labels == 1).any()
    pipe, _ = make_pipeline({"registration": {"mode": "plane"}})
    with pytest.raises(RgbtSegError, match="camera_info: .*uncalibrated"):
        pipe.process(rgb, aux, "mono16", rgb_camera=uncalibrated, aux_camera=uncalibrated,
                     extrinsics=Extrinsics.identity())


def test_depth_pipeline_and_letterbox():
    cam = CameraModel(K=[[300, 0, 159.5], [0, 300, 119.5], [0, 0, 1]], D=np.zeros(5), width=320, height=240)
    depth = np.full((240, 320), 8000, np.uint16)  # 8 m far ...
    depth[:, :80] = 0  # ... an invalid strip ...
    depth[60:180, 120:200] = 1000  # ... and a near box at 1 m
    cfg = {"registration": {"mode": "depth", "hole_fill": 1}, "normalization": {"depth_range": [0, 10]},
           "resize_mode": "letterbox"}
    pipe, net = make_pipeline(cfg, input_size=(240, 240), modality="depth")
    r = pipe.process(np.zeros((240, 320, 3), np.uint8), depth, "16UC1", rgb_camera=cam, aux_camera=cam,
                     extrinsics=Extrinsics.identity(), outputs={"labels", "registered_aux"})
    # far (0.8) is above the 0.5 threshold; near (0.1) and invalid (0) are below
    assert r.labels.shape == (240, 320)
    assert (r.labels[100:140, 240:300] == 1).all() and (r.labels[80:160, 130:190] == 0).all()
    assert (r.labels[:, 10:60] == 0).all()
    assert np.allclose(r.registered_aux[100, 150], 0.1) and r.registered_aux[100, 20] == 0
    assert np.isfinite(net.seen_aux[-1].numpy()).all() and net.seen_aux[-1].shape == (1, 1, 240, 240)


def test_config_from_dict_and_yaml_name_the_bad_key(tmp_path):
    cfg = PipelineConfig.from_dict({"registration": {"mode": "homography", "homography": np.eye(3).tolist()},
                                    "overlay_alpha": 0.3})
    assert cfg.registration.mode == "homography" and cfg.overlay_alpha == 0.3
    with pytest.raises(RgbtSegError, match=r"registration\.mdoe: unknown key"):
        PipelineConfig.from_dict({"registration": {"mdoe": "plane"}})
    with pytest.raises(RgbtSegError, match=r"pipeline\.colour_alpha: unknown key"):
        PipelineConfig.from_dict({"colour_alpha": 0.3})
    with pytest.raises(RgbtSegError, match="overlay_alpha"):
        PipelineConfig.from_dict({"overlay_alpha": 2})
    with pytest.raises(RgbtSegError, match="resize_mode"):
        PipelineConfig(resize_mode="crop")
    p = tmp_path / "pipe.yaml"
    p.write_text("pipeline:\n  resize_mode: letterbox\n  normalization:\n    thermal_percentiles: [2, 98]\n")
    cfg = PipelineConfig.from_yaml(p)
    assert cfg.resize_mode == "letterbox" and cfg.normalization.thermal_percentiles == (2.0, 98.0)
    p.write_text("pipeline: [unclosed\n")
    with pytest.raises(RgbtSegError, match="not valid YAML"):
        PipelineConfig.from_yaml(p)


@pytest.mark.skipif(not (DATA / "msrs-rgbt").is_dir(), reason="shared/data/msrs-rgbt is absent")
def test_real_msrs_pair_identity():
    vi = sorted((DATA / "msrs-rgbt" / "vi").glob("*.png"))[0]
    rgb = cv2.cvtColor(cv2.imread(str(vi), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    ir = cv2.imread(str(DATA / "msrs-rgbt" / "ir" / vi.name), cv2.IMREAD_UNCHANGED)
    if ir.ndim == 3:
        ir = ir[:, :, 0]
    pipe, _ = make_pipeline(input_size=(480, 640))
    r = pipe.process(rgb, ir, "mono8", outputs={"labels", "colour", "confidence", "overlay", "registered_aux"})
    assert np.allclose(r.registered_aux, ir / 255.0, atol=1e-6)  # same size, identity: the image itself
    decided = np.abs(ir.astype(float) / 255 - 0.5) > 0.02
    agree = (r.labels == (ir > 127.5))[decided].mean()
    assert agree > 0.999 and r.overlay.shape == rgb.shape


FIXED = {"thermal_agc": "fixed", "thermal_range": [19000, 31000]}


def test_card_normalisation_is_used_and_config_keys_override_it_key_by_key():
    rgb = np.zeros((240, 320, 3), np.uint8)
    aux = hot_square((240, 320), (100, 140, 100, 140))  # cold 20000, hot 30000

    def lowest_seen(config=None, **card_kw):
        pipe, net = make_pipeline(config, **card_kw)
        pipe.process(rgb, aux, "mono16", outputs={"labels"})
        return pipe, float(net.seen_aux[-1].min())

    # no card field, no config: per-frame percentile AGC maps the cold background to 0 → (0 − 0.5)/0.25
    _, low = lowest_seen()
    assert low == pytest.approx(-2.0, abs=1e-4)
    # the card's fixed range: 20000 in [19000, 31000] → 1/12
    pipe, low = lowest_seen(normalization=FIXED)
    assert pipe.normalization.thermal_agc == "fixed" and low == pytest.approx((1 / 12 - 0.5) / 0.25, abs=1e-4)
    # a config key replaces only that key: the card's "fixed" stays, the range is the user's
    pipe, low = lowest_seen({"normalization": {"thermal_range": [15000, 35000]}}, normalization=FIXED)
    assert pipe.normalization.thermal_agc == "fixed" and pipe.normalization.thermal_range == (15000.0, 35000.0)
    assert low == pytest.approx((0.25 - 0.5) / 0.25, abs=1e-4)
    # ... and an explicitly set default value still wins over the card
    _, low = lowest_seen(PipelineConfig.from_dict({"normalization": {"thermal_agc": "percentile"}}),
                         normalization=FIXED)
    assert low == pytest.approx(-2.0, abs=1e-4)
    with pytest.raises(RgbtSegError, match="model card normalization.thermal_agc"):
        make_pipeline(normalization={"thermal_agc": "auto"})
    with pytest.raises(RgbtSegError, match="model card normalization.gain: unknown key"):
        make_pipeline(normalization={"gain": 2})


@pytest.mark.parametrize("encoding,dtype,lo,hi,norm", [
    ("mono16", np.uint16, 19000, 31000, FIXED),
    ("mono8", np.uint8, 0, 255, {}),
    ("32FC1", np.float32, -20.0, 60.0, {}),
])
def test_thermal_outside_the_view_is_fed_as_the_mean(encoding, dtype, lo, hi, norm):
    # the thermal image covers only the top-left quarter of the RGB frame (identity homography, half size)
    mean, std = 0.3, 0.2
    pipe, net = make_pipeline({"registration": {"mode": "homography", "homography": np.eye(3).tolist()}},
                              aux_mean=(mean,), aux_std=(std,), normalization=norm)
    aux = np.full((120, 160), lo + 0.9 * (hi - lo), dtype)
    r = pipe.process(np.zeros((240, 320, 3), np.uint8), aux, encoding, outputs={"labels", "registered_aux"})
    seen = net.seen_aux[-1][0, 0].numpy()
    unit = (float(aux[0, 0]) - lo) / (hi - lo)  # 0.9 after the dtype's rounding
    inside = (unit - mean) / std
    assert np.allclose(seen[:110, :150], inside, atol=1e-3)
    # outside: the raw value that standardises to 0, to within the raw dtype's rounding
    one_step = (1.0 if dtype != np.float32 else 0.0) / ((hi - lo) * std)
    assert np.abs(seen[125:, :]).max() <= one_step + 1e-5 and np.abs(seen[:, 165:]).max() <= one_step + 1e-5
    # the registered_aux image for people keeps 0 outside the view
    assert (r.registered_aux[125:, :] == 0).all() and (r.registered_aux[:, 165:] == 0).all()
    assert np.allclose(r.registered_aux[:110, :150], unit, atol=1e-5)


def test_depth_outside_the_view_stays_invalid():
    pipe, net = make_pipeline({"registration": {"mode": "homography", "homography": np.eye(3).tolist()},
                               "normalization": {"depth_range": [0, 10]}}, modality="depth")
    depth = np.full((120, 160), 5000, np.uint16)  # 5 m
    pipe.process(np.zeros((240, 320, 3), np.uint8), depth, "16UC1", outputs={"labels"})
    seen = net.seen_aux[-1][0, 0].numpy()
    assert np.allclose(seen[:110, :150], 0.0, atol=1e-5) and np.allclose(seen[125:, :], (0.0 - 0.5) / 0.25)


@pytest.mark.slow
def test_kernels_are_compiled_when_the_pipeline_is_built_not_on_the_first_frame():
    # a fresh process, so that no earlier test compiled anything: building the pipeline compiles every kernel
    # signature that processing a frame (all outputs, uint8 and uint16 labels) then uses
    code = textwrap.dedent("""
        import numpy as np, sys
        sys.path.insert(0, TEST_DIR)
        from test_pipeline import WarmIsClassOne, hot_square
        from rgbt_seg_ros.inference.artifact import ModelCard
        from rgbt_seg_ros.inference.torch_backend import TorchBackend
        from rgbt_seg_ros.pipeline import SegmentationPipeline, kernels
        for k in (2, 300):  # uint8 labels and the unrolled arg-max, uint16 labels and the tiled one
            card = ModelCard(network="test_1x1", num_classes=k, class_names=[f"c{i}" for i in range(k)],
                             palette=[[i % 256, 0, 0] for i in range(k)], input_size=(48, 64))
            pipe = SegmentationPipeline(TorchBackend(WarmIsClassOne(k), card))
            argmax = kernels.unrolled_argmax(k) if k <= kernels.UNROLL_CONFIDENCE else (kernels.argmax_softmax_tiled,)
            kinds = (*argmax, kernels.hwc_to_chw, kernels.resize_to_chw, kernels.upsample_clipped, kernels.expand_labels,
                     kernels.scale_clip, kernels.two_order_statistics)
            before = [len(kernel.signatures) for kernel in kinds]
            rgb = np.zeros((96, 128, 3), np.uint8)
            pipe.process(rgb, hot_square((96, 128), (10, 50, 10, 50)), "mono16")
            pipe.process(rgb, None, outputs={"labels", "confidence"})
            assert [len(kernel.signatures) for kernel in kinds] == before, (k, before)
            assert min(before) >= 1
        # depth reprojection onto a pinhole and a lens RGB camera, and lens distortion in warp maps (float64)
        from rgbt_seg_ros.pipeline import CameraModel, Extrinsics
        from rgbt_seg_ros.pipeline.registration import Registrar
        kinds = (kernels.project_radtan, kernels.undistort_radtan, kernels.depth_to_rgb_pixels, kernels.zbuffer_min)
        before = [len(kernel.signatures) for kernel in kinds]
        for D in (np.zeros(5), [0.1, -0.2, 1e-3, 1e-3, 0.05]):
            cam = CameraModel(K=[[60, 0, 32], [0, 60, 24], [0, 0, 1]], D=D, width=64, height=48)
            for mode in ("depth", "plane"):
                reg = Registrar({"mode": mode})
                reg.set_geometry(cam, cam, Extrinsics(np.eye(3), [0.05, 0.0, 0.0]))
                if mode == "depth":
                    reg.register_depth(np.ones((48, 64), np.float32), (48, 64))
                else:
                    reg.warp_maps((48, 64), (48, 64))
        assert [len(kernel.signatures) for kernel in kinds] == before and min(before) >= 1, before
        print("ok")
    """).replace("TEST_DIR", repr(str(Path(__file__).parent)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
