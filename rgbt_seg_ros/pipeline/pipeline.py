"""``SegmentationPipeline``: one RGB (+ thermal/depth) pair in, labels / colour / confidence / overlay out.

The same object runs in the rclpy node, the rosbag2 replay tool, ``rgbt-seg infer`` and evaluation.
Everything it returns is at the RGB image's resolution. Outputs that are not requested are not computed.

Stages (names used in ``SegmentationResult.timings``, milliseconds):
``preprocess_rgb`` → ``register`` (aux into the RGB grid, composed with the resize to the network input)
→ ``normalize_aux`` → ``infer`` → ``postprocess`` (arg-max and confidence, confidence at RGB resolution)
→ ``render`` (labels, colour and overlay at RGB resolution, one pass) → ``registered_aux`` (only when
asked for), plus ``total``.

Device path (``PipelineConfig.device_ops``, see ``device_ops.py``): with a backend that runs on torch tensors
(``infer_tensors``: TorchBackend, and OnnxBackend through onnxruntime's I/O binding) on CUDA ("auto") or on
any device ("on"), normalise, resize, registration warp, aux scaling, softmax/arg-max and the resize back run
as torch ops on the network's device: raw images go up once, labels and confidence come down once. Same stage
names; on CUDA each device stage ends with a synchronize so its time is its own. Otherwise (and always for
other backends) everything runs in numpy/OpenCV and torch is never imported here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.pipeline.camera import Extrinsics, as_camera_model
from rgbt_seg_ros.pipeline.config import NormalizationConfig, PipelineConfig, RegistrationConfig
from rgbt_seg_ros.pipeline.kernels import compile_for
from rgbt_seg_ros.pipeline.normalize import depth_to_metres, normalize_depth_metres, scale_into, value_range
from rgbt_seg_ros.pipeline.palettes import palette_for
from rgbt_seg_ros.pipeline.postprocess import colour_lut, label_dtype, logits_to_labels, render
from rgbt_seg_ros.pipeline.registration import Registrar
from rgbt_seg_ros.pipeline.resize import ResizeTransform, preprocess_rgb
from rgbt_seg_ros.pipeline.timing import StageTimer

ALL_OUTPUTS = frozenset({"labels", "colour", "confidence", "overlay", "registered_aux"})
DEFAULT_OUTPUTS = frozenset({"labels", "colour", "confidence", "overlay"})

__all__ = ["ALL_OUTPUTS", "DEFAULT_OUTPUTS", "NormalizationConfig", "PipelineConfig", "RegistrationConfig",
           "SegmentationPipeline", "SegmentationResult"]


@dataclass
class SegmentationResult:
    labels: np.ndarray | None  # H×W uint8 (uint16 past 255 classes)
    colour: np.ndarray | None  # H×W×3 uint8 RGB, palette colours
    confidence: np.ndarray | None  # H×W float32 in [0, 1]
    overlay: np.ndarray | None  # H×W×3 uint8 RGB, colours blended over the RGB image
    registered_aux: np.ndarray | None  # H×W float32 in [0, 1] (0 where invalid / outside the aux view)
    timings: dict[str, float] = field(default_factory=dict)  # ms per stage
    aux_used: bool = False


class SegmentationPipeline:
    """Runs a ``Backend`` (rgbt_seg_ros.inference.base) on RGB + optional aux images.

    ``backend.card`` gives the network input size, the classes and palette, and the normalisation;
    ``config`` (a ``PipelineConfig``, a dict, or None for defaults) gives registration, resize mode,
    overlay alpha and any aux normalisation the user wants to force.

    Aux normalisation (raw thermal/depth → [0, 1]; ``self.normalization``) is resolved key by key:
    a key the config sets explicitly wins, else the model card's ``normalization`` (what the model
    was trained with), else the ``NormalizationConfig`` default. So an empty config reproduces training,
    and ``{"normalization": {"thermal_percentiles": [2, 98]}}`` changes only that key. The card's
    ``aux_mean``/``aux_std`` always apply after it.
    """

    def __init__(self, backend, config: PipelineConfig | dict | None = None):
        self.backend = backend
        self.config = config if isinstance(config, PipelineConfig) else PipelineConfig.from_dict(config or {})
        card = backend.card
        self.card = card
        self.input_size = tuple(self.config.input_size or card.input_size)
        self.num_classes = int(card.num_classes)
        self.palette = palette_for(self.num_classes, getattr(card, "palette", None))
        self._lut = colour_lut(self.palette, self.num_classes)  # covers every id the arg-max can give
        compile_for(label_dtype(self.num_classes), self.num_classes)  # JIT now (or load the cache), not on the first frame
        self.modality = getattr(card, "modality", "thermal")
        self.aux_channels = int(getattr(card, "aux_channels", 1))
        self._rgb_mean = np.asarray(card.rgb_mean, np.float32)
        self._rgb_std = np.asarray(card.rgb_std, np.float32)
        aux_mean = np.asarray(card.aux_mean, np.float32).reshape(-1)
        aux_std = np.asarray(card.aux_std, np.float32).reshape(-1)
        if aux_mean.size not in (1, self.aux_channels) or aux_std.size not in (1, self.aux_channels):
            raise RgbtSegError(f"model card: aux_mean/aux_std have {aux_mean.size}/{aux_std.size} values for "
                               f"aux_channels={self.aux_channels}")
        self._aux_mean = np.broadcast_to(aux_mean, (self.aux_channels,)).copy()
        self._aux_std = np.broadcast_to(aux_std, (self.aux_channels,)).copy()
        self.normalization = self.config.normalization.over_card(getattr(card, "normalization", None))
        # Thermal the aux camera does not see is fed as the raw value that standardises to 0 (the mean):
        # what modality dropout trains and backends feed for a lost stream, rather than the low end of the
        # range, (0 − mean)/std ≈ −2, which the network never saw. Depth keeps 0 = invalid, as its datasets do.
        self._outside_fraction = float(self._aux_mean.mean()) if self.modality == "thermal" else 0.0
        self.registrar = Registrar(self.config.registration)
        self._transforms: dict[tuple, ResizeTransform] = {}
        self._device_ops = self._make_device_ops(backend, self.config.device_ops)

    @property
    def on_device(self) -> bool:
        """True when pre-/post-processing run as torch ops on the backend's device (``device_ops``)."""
        return self._device_ops is not None

    def _make_device_ops(self, backend, mode: str):
        has_tensors = callable(getattr(backend, "infer_tensors", None)) and hasattr(backend, "device")
        if mode == "off" or (mode == "auto" and not (has_tensors and getattr(backend.device, "type", None) == "cuda")):
            return None
        if not has_tensors:
            raise RgbtSegError(f"device_ops: 'on' needs a backend that runs on tensors (torch, onnxruntime), not "
                               f"{getattr(backend, 'name', '?')}; use 'auto' or 'off'")
        from rgbt_seg_ros.pipeline.device_ops import DeviceOps  # torch only on this path

        return DeviceOps(backend.device, self._rgb_mean, self._rgb_std, self._aux_mean, self._aux_std,
                         self.num_classes)

    def warm_up(self, runs: int = 2) -> float:
        """Run the network on blank inputs of its input size; returns the seconds it took.

        The first calls of a network pay one-time costs (oneDNN/cuDNN kernel choice, the CUDA context,
        torch.compile, TensorRT engines: from a second to minutes): at start-up they delay nothing, on the first
        frames they would. Blank inputs are enough: these costs depend on the shapes, which are fixed, and on the
        memory layout, which backends make the same for every input (``TorchBackend._standard_layout``).
        """
        import time

        h, w = self.input_size
        rgb = np.zeros((1, 3, h, w), np.float32)
        aux = np.zeros((1, self.aux_channels, h, w), np.float32)
        t0 = time.perf_counter()
        for _ in range(runs):
            self.backend.infer(rgb, aux)
        return time.perf_counter() - t0

    # -- helpers ------------------------------------------------------------------------------------
    def _transform(self, rgb_hw: tuple[int, int]) -> ResizeTransform:
        key = (rgb_hw, self.input_size, self.config.resize_mode)
        tf = self._transforms.get(key)
        if tf is None:
            tf = ResizeTransform(rgb_hw, self.input_size, self.config.resize_mode)
            self._transforms = {key: tf}  # one live geometry; a new RGB size replaces it
        return tf

    def _aux_tensor(self, img: np.ndarray, lo: float, hi: float) -> np.ndarray:
        """Raw (registered) aux h×w → 1×C×h×w float32: [lo, hi] → [0, 1], clipped, standardised per channel."""
        out = np.empty((1, self.aux_channels) + img.shape[:2], np.float32)
        for c in range(self.aux_channels):
            scale_into(img, lo, hi, float(self._aux_mean[c]), float(self._aux_std[c]), dst=out[0, c])
        return out

    def _check_aux(self, aux, rgb_camera, aux_camera, extrinsics) -> np.ndarray:
        """Validate the aux image (→ 2-D) and set the registration geometry for this call."""
        if not isinstance(aux, np.ndarray) or aux.ndim not in (2, 3) or aux.size == 0:
            raise RgbtSegError(f"{self.modality} image: expected a 2-D array, got "
                               f"{getattr(aux, 'shape', type(aux).__name__)}")
        if aux.ndim == 3:
            if aux.shape[2] != 1:
                raise RgbtSegError(f"{self.modality} image: expected one channel, got {aux.shape[2]}")
            aux = aux[:, :, 0]
        if not self.config.registration.uses_cameras:
            return aux  # no intrinsics used: an uncalibrated CameraInfo (K = 0) must not stop these modes
        rgb_cam = as_camera_model(rgb_camera, "rgb camera_info") if rgb_camera is not None else None
        aux_cam = as_camera_model(aux_camera, f"{self.modality} camera_info") if aux_camera is not None else None
        self.registrar.set_geometry(rgb_cam, aux_cam, extrinsics)
        return aux

    def _check_logits(self, shape, tf: ResizeTransform) -> None:
        if len(shape) != 4 or tuple(shape[:2]) != (1, self.num_classes) or tuple(shape[2:]) != tf.dst_hw:
            raise RgbtSegError(f"backend {getattr(self.backend, 'name', '?')}: returned logits of shape "
                               f"{tuple(shape)}, expected (1, {self.num_classes}, {tf.dst_hw[0]}, {tf.dst_hw[1]})")

    def _finish(self, rgb, labels, label_maps, confidence, registered_full, outputs, timer, aux_used
                ) -> SegmentationResult:
        """Labels, colour and overlay at RGB resolution in one pass (``render``), and the result.

        ``labels`` are at the network resolution with ``label_maps`` = ``tf.nearest_index()`` (CPU path), or
        already at RGB resolution with ``label_maps=None`` (device path: resized on the device, kept as they are).
        """
        want_colour, want_overlay = "colour" in outputs, "overlay" in outputs
        resize_labels = "labels" in outputs and label_maps is not None
        out_labels = labels if "labels" in outputs and label_maps is None else None
        colour = over = None
        if labels is not None and outputs & {"labels", "colour", "overlay"}:
            with timer("render"):  # on both paths, so that both report the same stages
                if resize_labels or want_colour or want_overlay:
                    maps = label_maps or (np.arange(rgb.shape[0]), np.arange(rgb.shape[1]))
                    resized, colour, over = render(labels, *maps, self._lut, rgb, self.config.overlay_alpha,
                                                   resize_labels, want_colour, want_overlay)
                    out_labels = resized if resize_labels else out_labels
        timer.stop_total()
        return SegmentationResult(
            labels=out_labels,
            colour=colour,
            confidence=confidence,
            overlay=over,
            registered_aux=registered_full,
            timings=timer.as_dict(),
            aux_used=aux_used,
        )

    def _process_on_device(self, rgb, aux, aux_encoding, tf: ResizeTransform, outputs, timer) -> SegmentationResult:
        """``process`` with the per-pixel work as torch ops on the backend's device (see ``device_ops.py``)."""
        dev = self._device_ops
        rgb_hw = rgb.shape[:2]
        registered_full = None
        aux_t = None
        with dev.inference():
            with timer("preprocess_rgb"):
                rgb_t = dev.preprocess_rgb(rgb, tf)
                dev.sync()
            if aux is not None:
                ncfg = self.normalization
                if self.config.registration.mode == "depth":
                    # z-buffer reprojection stays on the CPU; its network-size result goes up instead of the raw image
                    with timer("register"):
                        depth_m = depth_to_metres(aux, aux_encoding)
                        reg_m = self.registrar.register_depth(depth_m, rgb_hw)
                    with timer("normalize_aux"):
                        aux_t = dev.upload(self._aux_tensor(tf.forward(reg_m, interpolation="nearest"),
                                                            *ncfg.depth_range))
                        dev.sync()
                    if "registered_aux" in outputs:
                        registered_full = normalize_depth_metres(reg_m, ncfg)[0]
                else:
                    with timer("normalize_aux"):  # the range on the CPU (percentile AGC: a strided subsample)
                        lo, hi = value_range(aux, aux_encoding, self.modality, ncfg)
                    nearest = self.modality == "depth"
                    outside = lo + self._outside_fraction * (hi - lo)
                    with timer("register"):
                        grid = dev.grid(self.registrar.warp_maps(aux.shape, rgb_hw, tf), aux.shape, nearest)
                        warped = dev.warp(aux, grid, nearest=nearest, border=outside)
                        dev.sync()
                    with timer("normalize_aux"):
                        aux_t = dev.scale_aux(warped, lo, hi, is_float=aux.dtype.kind == "f")
                        dev.sync()
                    if "registered_aux" in outputs:
                        with timer("registered_aux"):  # an image for people, on the CPU: 0 outside the aux view
                            interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
                            full = self.registrar.warp(aux, rgb_hw, None, interpolation=interp, border_value=lo)
                            registered_full = scale_into(full, lo, hi)
            with timer("infer"):
                logits = self.backend.infer_tensors(rgb_t, aux_t)
                dev.sync()
            self._check_logits(logits.shape, tf)
            with timer("postprocess"):  # ends with the downloads, which wait for the device
                labels, confidence = dev.postprocess(
                    logits, tf, need_labels=bool(outputs & {"labels", "colour", "overlay"}),
                    need_confidence="confidence" in outputs, label_dtype=label_dtype(self.num_classes))
        return self._finish(rgb, labels, None, confidence, registered_full, outputs, timer, aux_t is not None)

    # -- main entry ---------------------------------------------------------------------------------
    def process(self, rgb: np.ndarray, aux: np.ndarray | None = None, aux_encoding: str = "mono8",
                rgb_camera=None, aux_camera=None, outputs=DEFAULT_OUTPUTS,
                extrinsics: Extrinsics | None = None) -> SegmentationResult:
        """Segment one pair.

        ``rgb``: H×W×3 uint8 in RGB order. ``aux``: the thermal/depth image as decoded from its message
        (encoding ``aux_encoding``: mono8, mono16, 8UC1, 16UC1, 32FC1), or None for RGB-only operation.
        ``rgb_camera``/``aux_camera``: CameraModel or CameraInfo-like objects (override the config's files).
        ``outputs``: subset of ``ALL_OUTPUTS``; others are returned as None and not computed.
        """
        outputs = frozenset(outputs)
        unknown = outputs - ALL_OUTPUTS
        if unknown:
            raise RgbtSegError(f"outputs: unknown {', '.join(sorted(unknown))}; choose from {', '.join(sorted(ALL_OUTPUTS))}")
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            desc = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
            raise RgbtSegError(f"rgb image: expected H×W×3 uint8 (rgb8), got {desc}")
        timer = StageTimer()
        timer.start_total()
        rgb_hw = rgb.shape[:2]
        tf = self._transform(rgb_hw)

        if aux is not None:
            aux = self._check_aux(aux, rgb_camera, aux_camera, extrinsics)
        if self._device_ops is not None:
            return self._process_on_device(rgb, aux, aux_encoding, tf, outputs, timer)

        with timer("preprocess_rgb"):
            rgb_in = preprocess_rgb(rgb, tf, self._rgb_mean, self._rgb_std)

        aux_in = None
        registered_full = None
        if aux is not None:
            ncfg = self.normalization
            if self.config.registration.mode == "depth":
                with timer("register"):
                    depth_m = depth_to_metres(aux, aux_encoding)
                    reg_m = self.registrar.register_depth(depth_m, rgb_hw)  # RGB grid, metres, 0 = invalid
                with timer("normalize_aux"):
                    aux_in = self._aux_tensor(tf.forward(reg_m, interpolation="nearest"), *ncfg.depth_range)
                if "registered_aux" in outputs:
                    registered_full = normalize_depth_metres(reg_m, ncfg)[0]
            else:
                # warp the raw image (cheaper than float, one pass) straight into the network grid, then map
                # [lo, hi] → [0, 1] and standardise in one fused pass; depth is sampled nearest so invalid
                # zeros never blend into valid depths
                with timer("normalize_aux"):
                    lo, hi = value_range(aux, aux_encoding, self.modality, ncfg)
                interp = cv2.INTER_NEAREST if self.modality == "depth" else cv2.INTER_LINEAR
                outside = lo + self._outside_fraction * (hi - lo)
                with timer("register"):
                    warped = self.registrar.warp(aux, rgb_hw, tf, interpolation=interp, border_value=outside)
                with timer("normalize_aux"):
                    aux_in = self._aux_tensor(warped, lo, hi)
                if "registered_aux" in outputs:
                    with timer("registered_aux"):  # an image for people: 0 outside the aux view
                        full = self.registrar.warp(aux, rgb_hw, None, interpolation=interp, border_value=lo)
                        registered_full = scale_into(full, lo, hi)

        with timer("infer"):
            logits = self.backend.infer(rgb_in, aux_in)
        logits = np.asarray(logits)
        self._check_logits(logits.shape, tf)

        confidence = None
        need_labels = bool(outputs & {"labels", "colour", "overlay"})
        with timer("postprocess"):
            labels_s, conf_s = logits_to_labels(logits[0], need_labels=need_labels,
                                                need_confidence="confidence" in outputs)
            if conf_s is not None:
                confidence = tf.inverse_clipped(conf_s)  # bilinear weights may round a hair above 1
        return self._finish(rgb, labels_s, tf.nearest_index(), confidence, registered_full, outputs, timer,
                            aux_in is not None)
