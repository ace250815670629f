"""The pipeline's device path (``device_ops``: pre-/post-processing as torch ops on the network's device) against
the numpy/OpenCV path, on device "cpu", with the committed built-in model on synthetic frames."""
from __future__ import annotations

import functools
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import torch

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.inference import builtin_model_path, create_backend
from rgbt_seg_ros.inference.artifact import ModelCard
from rgbt_seg_ros.inference.torch_backend import TorchBackend
from rgbt_seg_ros.pipeline import ALL_OUTPUTS, CameraModel, Extrinsics, PipelineConfig, SegmentationPipeline
from rgbt_seg_ros.synthetic import SceneGenerator
from rgbt_seg_ros.synthetic.scenes import thermal_celsius

HOMOGRAPHY = [[1.15, 0.03, 60.0], [-0.02, 1.1, 40.0], [0.0, 0.0, 1.0]]  # thermal covers the lower right part only
RGB_CAM = CameraModel(K=[[520, 0, 319.5], [0, 520, 179.5], [0, 0, 1]], D=np.zeros(5), width=640, height=360)
TH_CAM = CameraModel(K=[[330, 0, 161], [0, 330, 126], [0, 0, 1]], D=[-0.25, 0.08, 0.001, -0.001, 0.0],
                     width=320, height=256)  # narrower view than the RGB camera, with lens distortion
PLANE_EXT = Extrinsics(cv2.Rodrigues(np.array([0.01, -0.03, 0.005]))[0], [0.08, 0.015, 0.0])


@functools.lru_cache(maxsize=None)
def backend():
    return create_backend(builtin_model_path())


@functools.lru_cache(maxsize=None)
def frame(index: int, height: int, width: int, night: bool):
    return SceneGenerator(0).frame(index, height, width, night=night, modality="thermal")


def thermal(counts: np.ndarray, encoding: str, hw=None) -> np.ndarray:
    """The synthetic mono16 counts (centi-kelvin) in the given encoding, optionally resized (another camera)."""
    if hw is not None:
        counts = cv2.resize(counts, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
    if encoding == "mono16":
        return counts
    if encoding == "32FC1":
        out = thermal_celsius(counts)
        out[:3, :5] = np.nan  # invalid pixels count as the range's low end on both paths
        return out
    lo, hi = np.percentile(counts, [1, 99])
    return np.clip((counts.astype(np.float32) - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def run_both(cfg, rgb, aux, encoding="mono16", outputs=ALL_OUTPUTS, be=None, **kw):
    be = be or backend()
    off = SegmentationPipeline(be, dict(cfg, device_ops="off"))
    on = SegmentationPipeline(be, dict(cfg, device_ops="on"))
    assert on.on_device and not off.on_device
    a = off.process(rgb, aux, encoding, outputs=outputs, **kw)
    b = on.process(rgb, aux, encoding, outputs=outputs, **kw)
    assert sorted(a.timings) == sorted(b.timings) and a.aux_used == b.aux_used
    for name in ALL_OUTPUTS:
        x, y = getattr(a, name), getattr(b, name)
        expected_none = name not in outputs or (name == "registered_aux" and aux is None)
        assert (x is None) == (y is None) == expected_none, name
        if x is not None:
            assert x.shape == y.shape and x.dtype == y.dtype, name
    return a, b, on


def assert_agree(a, b, label_share=0.995, conf_tol=0.02, conf_share=0.99, palette=None):
    if a.labels is not None:
        share = (a.labels == b.labels).mean()
        assert share >= label_share, share
    if a.confidence is not None:
        close = (np.abs(a.confidence - b.confidence) <= conf_tol).mean()
        assert close >= conf_share, close
        assert b.confidence.max() <= 1.0 and b.confidence.min() >= 0.0
    if a.registered_aux is not None:  # computed by the same CPU code on both paths
        assert np.array_equal(a.registered_aux, b.registered_aux)
    if b.colour is not None and b.labels is not None:
        palette = np.asarray(backend().card.palette if palette is None else palette, np.uint8)
        assert np.array_equal(b.colour, palette[b.labels])


REGISTRATIONS = {
    "identity": ({"mode": "identity"}, (180, 320), {}),  # a half-size thermal camera, pre-registered
    "homography": ({"mode": "homography", "homography": HOMOGRAPHY}, None, {}),
    "plane": ({"mode": "plane", "plane_distance": 6.0}, (256, 320),
              {"rgb_camera": RGB_CAM, "aux_camera": TH_CAM, "extrinsics": PLANE_EXT}),
}


@pytest.mark.parametrize("registration", sorted(REGISTRATIONS))
@pytest.mark.parametrize("encoding", ["mono16", "mono8", "32FC1"])
def test_device_path_agrees_with_numpy(registration, encoding):
    reg, aux_hw, geometry = REGISTRATIONS[registration]
    night = encoding == "mono8"
    f = frame(1, 360, 640, night)
    aux = thermal(f["thermal"], encoding, aux_hw)
    a, b, _ = run_both({"registration": reg}, f["rgb"], aux, encoding, **geometry)
    assert a.aux_used and b.labels.shape == (360, 640) and b.labels.dtype == np.uint8
    assert_agree(a, b)
    if registration != "identity":  # part of the frame is outside the thermal view
        assert 0.05 < (b.registered_aux < 1e-4).mean() < 0.7


@pytest.mark.parametrize("registration,encoding", [("homography", "mono16"), ("identity", "32FC1"),
                                                   ("plane", "mono8")])
def test_letterbox(registration, encoding):
    reg, aux_hw, geometry = REGISTRATIONS[registration]
    f = frame(2, 480, 640, False)  # 4:3 into the 16:9 network input: padded left and right
    if registration == "plane":
        geometry = dict(geometry, rgb_camera=CameraModel(K=[[520, 0, 319.5], [0, 520, 239.5], [0, 0, 1]],
                                                         D=np.zeros(5), width=640, height=480))
    aux = thermal(f["thermal"], encoding, (240, 320) if registration == "identity" else aux_hw)
    a, b, on = run_both({"registration": reg, "resize_mode": "letterbox"}, f["rgb"], aux, encoding, **geometry)
    tf = on._transform((480, 640))
    assert tf.left > 0 and b.labels.shape == (480, 640)
    assert_agree(a, b)


def test_rgb_only():
    f = frame(3, 360, 640, False)
    a, b, _ = run_both({}, f["rgb"], None)
    assert not b.aux_used and b.registered_aux is None
    assert_agree(a, b)


@pytest.mark.parametrize("outputs", [{"labels"}, {"confidence"}, {"overlay"}, {"colour", "registered_aux"}])
def test_outputs_not_requested_are_none(outputs):
    f = frame(1, 360, 640, False)
    a, b, _ = run_both({"registration": {"mode": "homography", "homography": HOMOGRAPHY}}, f["rgb"],
                       f["thermal"], "mono16", outputs=outputs)
    assert_agree(a, b)


def test_network_inputs_agree_and_the_grid_is_cached():
    seen = {}

    class Spy:  # records what each path feeds the network
        def __init__(self, inner):
            self.inner, self.card, self.name, self.device = inner, inner.card, inner.name, inner.device

        def infer(self, rgb, aux):
            seen["numpy"] = (rgb, aux)
            return self.inner.infer(rgb, aux)

        def infer_tensors(self, rgb, aux):
            seen["device"] = (rgb.numpy().copy(), aux.numpy().copy())
            return self.inner.infer_tensors(rgb, aux)

    spy = Spy(backend())
    f = frame(2, 480, 640, False)
    cfg = {"registration": REGISTRATIONS["plane"][0], "resize_mode": "letterbox"}
    geometry = dict(REGISTRATIONS["plane"][2], rgb_camera=CameraModel(
        K=[[520, 0, 319.5], [0, 520, 239.5], [0, 0, 1]], D=np.zeros(5), width=640, height=480))
    aux = thermal(f["thermal"], "mono16", (256, 320))
    _, _, on = run_both(cfg, f["rgb"], aux, "mono16", be=spy, outputs={"labels"}, **geometry)
    (rgb_a, aux_a), (rgb_b, aux_b) = seen["numpy"], seen["device"]
    assert rgb_a.shape == rgb_b.shape == (1, 3, 144, 256) and aux_a.shape == aux_b.shape == (1, 1, 144, 256)
    # cv2.resize's own integer arithmetic, reproduced (bit-identical here; one uint8 step allowed)
    lsb = 1.0 / (255 * min(backend().card.rgb_std))
    assert np.abs(rgb_a - rgb_b).max() <= lsb + 1e-5 and (np.abs(rgb_a - rgb_b) < 1e-5).mean() > 0.99
    assert np.abs(aux_a - aux_b).max() < 0.01  # cv2.remap quantises sample positions to 1/32 pixel
    assert np.allclose(rgb_b[0, :, :, :5], rgb_a[0, :, :, :5], atol=1e-6)  # the letterbox padding
    mx, my = on.registrar.warp_maps(aux.shape, (480, 640), on._transform((480, 640)))
    outside = (mx < -1) | (my < -1) | (mx > aux.shape[1]) | (my > aux.shape[0])  # not seen by the thermal camera
    assert 0.1 < outside.mean() < 0.7
    for seen_aux in (aux_a, aux_b):  # fed as the mean: standardised 0, to within the raw dtype's rounding
        assert np.abs(seen_aux[0, 0][outside]).max() < 2e-3
    built, maps = on._device_ops.grids_built, on.registrar.maps_built
    for _ in range(2):
        on.process(f["rgb"], aux, "mono16", outputs={"labels"}, **geometry)
    assert (on._device_ops.grids_built, on.registrar.maps_built) == (built, maps) == (1, 1)


@pytest.fixture(scope="module")
def onnx_builtin(tmp_path_factory):
    from rgbt_seg_ros.inference import load_model
    from rgbt_seg_ros.inference.export import exported_backend

    network, card = load_model(builtin_model_path())
    return exported_backend(network, card, tmp_path_factory.mktemp("onnx"))


def test_onnxruntime_device_path_uses_io_binding_and_agrees(onnx_builtin):
    # the device path with onnxruntime: torch tensors in, onnxruntime writes the logits into a torch tensor
    f = frame(1, 360, 640, False)
    reg, aux_hw, geometry = REGISTRATIONS["plane"]
    aux = thermal(f["thermal"], "mono16", aux_hw)
    a, b, on = run_both({"registration": reg}, f["rgb"], aux, "mono16", be=onnx_builtin, **geometry)
    assert on.backend.name.startswith("onnxruntime-CPU") and on.backend.device.type == "cpu"
    assert_agree(a, b)
    rng = np.random.default_rng(0)
    rgb = torch.from_numpy(rng.standard_normal((1, 3, 144, 256)).astype(np.float32))
    aux_t = torch.from_numpy(rng.standard_normal((1, 1, 144, 256)).astype(np.float32))
    bound = onnx_builtin.infer_tensors(rgb, aux_t)
    assert isinstance(bound, torch.Tensor) and bound.shape == (1, 6, 144, 256)
    assert np.allclose(bound.numpy(), onnx_builtin.infer(rgb.numpy(), aux_t.numpy()), atol=1e-5)
    assert np.allclose(bound.numpy(), backend().infer(rgb.numpy(), aux_t.numpy()), atol=1e-3)  # = torch
    zeros = onnx_builtin.infer_tensors(rgb, None)  # RGB-only: zeros fed, as infer does
    assert np.allclose(zeros.numpy(), onnx_builtin.infer(rgb.numpy(), None), atol=1e-5)
    with pytest.raises(RgbtSegError, match="backend onnxruntime-CPU"):
        onnx_builtin.infer_tensors(torch.cat([rgb, aux_t], 1), aux_t)  # 4 channels where the graph takes 3


class OneByOne(torch.nn.Module):
    """Class 1 where the standardised aux is positive, 0 elsewhere; ``extra`` classes never win."""

    def __init__(self, num_classes=2):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, num_classes, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.fill_(-5.0)
            self.conv.bias[:2] = 0.0
            self.conv.weight[1, 3] = 4.0

    def forward(self, rgb, aux):
        return self.conv(torch.cat([rgb, aux], 1))


def tiny_backend(modality="thermal", num_classes=2):
    card = ModelCard(network="test_1x1", num_classes=num_classes, class_names=[f"c{i}" for i in range(num_classes)],
                     palette=[[i % 256, 0, 0] for i in range(num_classes)], input_size=(96, 160), modality=modality)
    return TorchBackend(OneByOne(num_classes), card)


def test_depth_nearest_warp_and_depth_registration_fallback():
    be = tiny_backend("depth")
    rng = np.random.default_rng(0)
    depth = rng.integers(300, 9000, (120, 160)).astype(np.uint16)
    depth[:, :30] = 0  # invalid
    rgb = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    cfg = {"registration": {"mode": "homography", "homography": [[1.0, 0, 20], [0, 1.0, 10], [0, 0, 1]]},
           "normalization": {"depth_range": [0, 10]}}
    a, b, _ = run_both(cfg, rgb, depth, "16UC1", be=be)
    assert_agree(a, b, label_share=0.999, palette=be.card.palette)
    metres = depth.astype(np.float32) / 1000
    metres[depth == 0] = np.nan
    a, b, _ = run_both(cfg, rgb, metres, "32FC1", be=be)
    assert_agree(a, b, label_share=0.999, palette=be.card.palette)
    cam = CameraModel(K=[[150, 0, 79.5], [0, 150, 59.5], [0, 0, 1]], D=np.zeros(5), width=160, height=120)
    rgb_cam = CameraModel(K=[[300, 0, 159.5], [0, 300, 119.5], [0, 0, 1]], D=np.zeros(5), width=320, height=240)
    a, b, _ = run_both({"registration": {"mode": "depth"}, "resize_mode": "letterbox"}, rgb, depth, "16UC1",
                       be=be, rgb_camera=rgb_cam, aux_camera=cam, extrinsics=Extrinsics.identity())
    assert_agree(a, b, label_share=0.999, palette=be.card.palette)


class FixedLogits(torch.nn.Module):
    """Returns the same logits whatever the input: a broken network's NaN and ±inf, chosen per pixel."""

    def __init__(self, logits: np.ndarray):
        super().__init__()
        self.register_buffer("logits", torch.from_numpy(logits))

    def forward(self, rgb, aux):
        return self.logits.clone()


def test_nan_and_infinite_logits_follow_the_cpu_kernels_rules():
    k, h, w = 3, 6, 8
    logits = np.zeros((1, k, h, w), np.float32)
    logits[0, 1] = 2.0
    logits[0, 2, :, :4] = np.nan  # a NaN never wins: label 1 there
    logits[0, 0, 1, 5] = np.inf  # +inf wins with confidence 1
    logits[0, :, 2, 6] = np.nan  # all NaN: label 0, confidence 0
    logits[0, 1, 3, 6] = -np.inf  # -inf is an ordinary loser
    logits[0, 0, 4, 7], logits[0, 1, 4, 7] = np.nan, 5.0
    card = ModelCard(network="test_fixed", num_classes=k, class_names=["a", "b", "c"],
                     palette=[[0, 0, 0], [255, 0, 0], [0, 255, 0]], input_size=(h, w))
    be = TorchBackend(FixedLogits(logits), card)
    for rgb_hw in ((h, w), (2 * h, 3 * w)):  # the network's size, and resized back up
        rgb = np.zeros(rgb_hw + (3,), np.uint8)
        a, b, _ = run_both({}, rgb, None, outputs={"labels", "confidence"}, be=be)
        assert np.isfinite(b.confidence).all() and (0 <= b.confidence).all() and (b.confidence <= 1).all()
        assert np.array_equal(a.labels, b.labels)
        assert np.allclose(a.confidence, b.confidence, atol=1e-6)
        if rgb_hw == (h, w):
            assert a.labels[0, 0] == 1 and a.labels[1, 5] == 0 and a.labels[2, 6] == 0 and a.labels[3, 6] == 0
            assert a.confidence[1, 5] == 1.0 and a.confidence[2, 6] == 0.0


def test_nearest_warp_picks_the_same_source_pixels_as_cv2_remap():
    # depth is sampled nearest; at an exact 2× downscale every sample lies on a half-pixel tie
    from rgbt_seg_ros.pipeline.device_ops import DeviceOps
    from rgbt_seg_ros.pipeline.registration import Registrar
    from rgbt_seg_ros.pipeline.resize import ResizeTransform

    dev = DeviceOps("cpu", np.zeros(3), np.ones(3), np.zeros(1), np.ones(1), 2)
    rng = np.random.default_rng(7)
    depth = rng.integers(300, 9000, (480, 848)).astype(np.uint16)
    depth[rng.random(depth.shape) < 0.1] = 0  # invalid pixels
    ramp = np.tile(np.arange(848, dtype=np.uint16), (480, 1))
    for cfg in ({"mode": "identity"}, {"mode": "homography", "homography": [[1.02, 0.01, 9.5], [0, 1.0, -4.5], [0, 0, 1]]}):
        reg = Registrar(cfg)
        tf = ResizeTransform((480, 848), (240, 424))
        maps = reg.warp_maps(depth.shape, (480, 848), tf)
        for img in (ramp, depth):
            cpu = reg.warp(img, (480, 848), tf, interpolation=cv2.INTER_NEAREST, border_value=0)
            out = dev.warp(img, dev.grid(maps, img.shape, nearest=True), nearest=True, border=0.0)
            assert np.array_equal(out[0, 0].numpy(), cpu.astype(np.float32)), cfg
    assert dev.grids_built == 2  # one per geometry, reused for both images


def test_uint16_labels_past_256_classes():
    be = tiny_backend(num_classes=300)
    rgb = np.random.default_rng(1).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    aux = np.tile(np.linspace(0, 255, 300).astype(np.uint8), (200, 1))
    a, b, _ = run_both({}, rgb, aux, "mono8", outputs={"labels", "confidence"}, be=be)
    assert b.labels.dtype == np.uint16 and set(np.unique(b.labels)) == {0, 1}
    assert_agree(a, b, label_share=0.995)


def test_device_ops_setting():
    cpu_backend = backend()
    assert not SegmentationPipeline(cpu_backend).on_device  # auto: only on CUDA
    assert PipelineConfig.from_dict({"device_ops": True}).device_ops == "on"  # YAML 1.1's bare `on`
    with pytest.raises(RgbtSegError, match="device_ops: 'fast' is not one of auto, on, off"):
        PipelineConfig.from_dict({"device_ops": "fast"})

    class NumpyBackend:
        card, name = cpu_backend.card, "numpy-test"

    with pytest.raises(RgbtSegError, match="device_ops: 'on' needs a backend that runs on tensors .* not numpy-test"):
        SegmentationPipeline(NumpyBackend(), {"device_ops": "on"})
    assert not SegmentationPipeline(NumpyBackend(), {"device_ops": "auto"}).on_device


def test_numpy_path_never_imports_the_device_module():
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from types import SimpleNamespace
        from rgbt_seg_ros.pipeline import SegmentationPipeline

        card = SimpleNamespace(input_size=(48, 64), num_classes=3, palette=None, modality="thermal", aux_channels=1,
                               rgb_mean=(0.5,) * 3, rgb_std=(0.25,) * 3, aux_mean=(0.5,), aux_std=(0.25,),
                               normalization={})

        class NumpyBackend:
            name = "numpy"
            def __init__(self):
                self.card = card
            def infer(self, rgb, aux):
                return np.concatenate([rgb[:, :2], aux if aux is not None else rgb[:, :1]], 1)

        rgb = np.zeros((60, 80, 3), np.uint8)
        for mode in ("auto", "off"):
            r = SegmentationPipeline(NumpyBackend(), {"device_ops": mode}).process(rgb, np.ones((60, 80), np.uint8))
            assert r.labels.shape == (60, 80)
        assert "torch" not in sys.modules, "torch imported"
        from rgbt_seg_ros.inference import builtin_model_path, create_backend
        pipe = SegmentationPipeline(create_backend(builtin_model_path()))  # auto on the CPU: the numpy path
        pipe.process(rgb, np.ones((60, 80), np.uint8))
        assert not pipe.on_device
        assert "rgbt_seg_ros.pipeline.device_ops" not in sys.modules, "device_ops imported"
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("channels_last", [False, True])
def test_network_sees_one_memory_layout_for_warm_up_frames_and_rgb_only(channels_last):
    # torch.compile guards on strides (size-1 dimensions included): a frame from the device path (a permuted
    # camera image) reaching the network with other strides than the warm-up's blank input compiled it again,
    # on the first live frame
    class StrideSpy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 2, 1)
            self.seen = []

        def forward(self, rgb, aux):
            self.seen.append((rgb.stride(), aux.stride()))
            return self.conv(torch.cat([rgb, aux], 1))

    card = ModelCard(network="spy", num_classes=2, class_names=["a", "b"], palette=[[0, 0, 0], [9, 9, 9]],
                     input_size=(64, 96))
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (120, 180, 3), dtype=np.uint8)
    aux = rng.integers(0, 255, (120, 180), dtype=np.uint8)
    for device_ops in ("off", "on"):
        spy = StrideSpy()
        pipe = SegmentationPipeline(TorchBackend(spy, card, channels_last=channels_last),
                                    {"device_ops": device_ops, "registration": {"mode": "identity"}})
        pipe.warm_up()
        pipe.process(rgb, aux, "mono8")
        pipe.process(rgb, None)
        assert len(spy.seen) == 4 and len(set(spy.seen)) == 1, (device_ops, spy.seen)
