"""The pipeline's pre- and post-processing as torch ops on the network's device (``PipelineConfig.device_ops``).

When the network runs on a GPU, ``SegmentationPipeline`` keeps the per-frame work there too, so that each frame
crosses the bus once each way: the raw uint8 RGB and the raw thermal/depth image (uint8/uint16/float32) go up,
labels (uint8/uint16) and confidence (float32) come down. The same code runs on any torch device; the tests run
it on ``"cpu"`` against the numpy/OpenCV path, which it reproduces:

* RGB: ``cv2.resize``'s ``INTER_LINEAR`` for uint8 in its own integer arithmetic (11-bit weights and the
  shifts of its vectorised code; two taps per axis, gathered with per-geometry index tensors): bit-identical
  when shrinking, within one uint8 step when enlarging; letterbox padding with the value of a black pixel;
  then ``(x / 255 − mean) / std``.
* aux: the ``Registrar``'s float32 warp maps (already composed with the resize to the network input) become a
  ``grid_sample`` grid once per geometry, cached on the device (bilinear, thermal), or for depth the very source
  pixels ``cv2.remap``'s nearest mode picks, gathered exactly.
  ``cv2.remap``'s constant border is reproduced by sampling ``image − border`` with zero padding and adding
  ``border`` back (bilinear; the nearest gather puts ``border`` where the pixel lies outside); integer images
  are rounded to their grid as ``cv2.remap`` does (which also places samples to 1/32 pixel: differences of a
  fraction of a raw step remain). Then
  ``[lo, hi] → [0, 1]``, clip, standardise per channel (non-finite float values count as ``lo``, as
  ``scale_into`` does).
* logits: arg-max (ties → lowest id) and max-softmax ``1 / Σ exp(l − max)`` at the network resolution, with the
  CPU kernel's rules for a broken network (a NaN logit never wins; an all-NaN pixel gets label 0, confidence 0); the
  letterbox padding is cut away first; labels come back with OpenCV's ``INTER_NEAREST_EXACT`` source indices
  (``ResizeTransform.nearest_index``, the CPU path's own, so they are the very same pixels), confidence bilinearly,
  capped at 1.

What stays on the CPU: the ``[lo, hi]`` range (fixed ranges, or the percentile AGC on a strided subsample of the
host image, as now), the ``depth`` registration mode's z-buffer reprojection (its network-size result is
uploaded instead of the raw image), ``registered_aux`` (an image for people), and colour/overlay, which are
drawn from the downloaded labels (cheaper on the bus than downloading 3-channel images).

Only ``pipeline.py`` imports this module, lazily, when the device path is on; nothing else in the pipeline
imports torch.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from rgbt_seg_ros.pipeline.resize import ResizeTransform

_MAX_CACHED = 4


def _upload(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(device, non_blocking=True)


def linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``cv2.resize`` ``INTER_LINEAR`` along one axis of uint8 images: the two source indices per destination pixel
    and their weights in 1/2048 (float32 positions, clamped at the edges, rounded like OpenCV)."""
    f = ((np.arange(dst) + 0.5) * (1.0 / (dst / src)) - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    frac = (f - i0.astype(np.float32)).astype(np.float32)
    low, high = i0 < 0, i0 >= src - 1
    frac[low | high] = 0.0
    i0[low] = 0
    i0[high] = src - 1
    w0 = np.rint((np.float32(1.0) - frac) * np.float32(2048)).astype(np.int32)
    w1 = np.rint(frac * np.float32(2048)).astype(np.int32)
    return i0, np.minimum(i0 + 1, src - 1), w0, w1


class DeviceOps:
    """Per-pipeline state on one torch device: normalisation constants and per-geometry caches."""

    def __init__(self, device, rgb_mean, rgb_std, aux_mean, aux_std, num_classes: int):
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        rgb_mean = np.asarray(rgb_mean, np.float64).reshape(3)
        rgb_std = np.asarray(rgb_std, np.float64).reshape(3)
        # x (0..255) · a + b per channel; b alone is a black (zero) pixel, the letterbox padding
        self._rgb_a = self._vec(1.0 / (255.0 * rgb_std))
        self._rgb_b = self._vec(-rgb_mean / rgb_std)
        self._aux_mean = np.asarray(aux_mean, np.float64).reshape(-1)
        self._aux_std = np.asarray(aux_std, np.float64).reshape(-1)
        # [0, 1] → standardised per channel: u · (1 / std) − mean / std
        self._aux_a = self._vec(1.0 / self._aux_std)
        self._aux_b = self._vec(-self._aux_mean / self._aux_std)
        self.num_classes = int(num_classes)
        self._grids: list[tuple] = []  # (map x, map y, nearest, grid or (index, inside))
        self._nearest: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._taps: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self.grids_built = 0  # tests check the caching

    def _vec(self, values) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, np.float32).reshape(1, -1, 1, 1), device=self.device)

    # -- plumbing -------------------------------------------------------------------------------------
    def inference(self):
        return torch.inference_mode()

    def sync(self) -> None:
        """Wait for queued kernels, only on CUDA (stage timings would otherwise measure launches only)."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def upload(self, array: np.ndarray) -> torch.Tensor:
        return _upload(array, self.device)

    # -- RGB --------------------------------------------------------------------------------------------
    def _rgb_taps(self, tf: ResizeTransform) -> tuple[torch.Tensor, ...]:
        key = (tf.src_hw, tf.content_hw)
        hit = self._taps.get(key)
        if hit is None:
            (sh, sw), (ch, cw) = tf.src_hw, tf.content_hw
            y0, y1, b0, b1 = linear_taps(sh, ch)
            x0, x1, a0, a1 = linear_taps(sw, cw)

            def t(a: np.ndarray, shape) -> torch.Tensor:
                return torch.from_numpy(np.ascontiguousarray(a).reshape(shape)).to(self.device)

            hit = (t(y0, -1), t(y1, -1), t(b0, (-1, 1, 1)), t(b1, (-1, 1, 1)),
                   t(x0, -1), t(x1, -1), t(a0, (1, -1, 1)), t(a1, (1, -1, 1)))
            self._taps = {key: hit}
        return hit

    def _resize_rgb(self, x: torch.Tensor, tf: ResizeTransform) -> torch.Tensor:
        """H×W×3 uint8 → h×w×3 int32 in 0..255, ``cv2.resize(..., INTER_LINEAR)``'s fixed-point arithmetic."""
        y0, y1, b0, b1, x0, x1, a0, a1 = self._rgb_taps(tf)

        def across(rows: torch.Tensor) -> torch.Tensor:  # horizontal pass, ×2048, then OpenCV's >> 4
            rows = rows.int()
            return (rows.index_select(1, x0) * a0 + rows.index_select(1, x1) * a1) >> 4

        v = ((across(x.index_select(0, y0)) * b0) >> 16) + ((across(x.index_select(0, y1)) * b1) >> 16)
        return ((v + 2) >> 2).clamp_(0, 255)

    def preprocess_rgb(self, rgb: np.ndarray, tf: ResizeTransform) -> torch.Tensor:
        """H×W×3 uint8 → 1×3×h×w float32 normalised (``resize.preprocess_rgb`` on the device)."""
        x = self.upload(rgb)
        if tf.is_identity:
            return x.permute(2, 0, 1).unsqueeze(0).float() * self._rgb_a + self._rgb_b
        ch, cw = tf.content_hw
        x = self._resize_rgb(x, tf).permute(2, 0, 1).unsqueeze(0).float() * self._rgb_a + self._rgb_b
        if (ch, cw) == tf.dst_hw:
            return x
        out = self._rgb_b.expand(1, 3, *tf.dst_hw).clone()
        out[:, :, tf.top:tf.top + ch, tf.left:tf.left + cw] = x
        return out

    # -- aux --------------------------------------------------------------------------------------------
    def grid(self, maps: tuple[np.ndarray, np.ndarray], aux_hw: tuple[int, int], nearest: bool = False):
        """The ``cv2.remap`` maps (aux pixel coordinates, far negative outside) on the device, cached per map pair.

        Bilinear: a ``grid_sample`` grid. Nearest: the source pixel of each output pixel as ``cv2.remap`` picks it
        (coordinates rounded half to even, as its float-map conversion does) and where it lies inside the image,
        for an exact gather: ``grid_sample``'s own rounding of float32 grid positions breaks ties differently.
        """
        mx, my = maps
        for kx, ky, kn, g in self._grids:
            if kx is mx and ky is my and kn == nearest:  # the Registrar caches its maps per geometry: same objects
                return g
        ah, aw = aux_hw
        if nearest:
            ix, iy = np.rint(mx.astype(np.float64)), np.rint(my.astype(np.float64))
            inside = (ix >= 0) & (ix < aw) & (iy >= 0) & (iy < ah)
            flat = np.where(inside, iy * aw + ix, 0).astype(np.int64)
            g = (torch.from_numpy(flat.reshape(-1)).to(self.device), torch.from_numpy(inside).to(self.device))
        else:
            gx = (mx.astype(np.float64) + 0.5) * (2.0 / aw) - 1.0
            gy = (my.astype(np.float64) + 0.5) * (2.0 / ah) - 1.0
            g = torch.from_numpy(np.stack([gx, gy], axis=-1).astype(np.float32)[None]).to(self.device)
        if len(self._grids) >= _MAX_CACHED:
            self._grids.pop(0)
        self._grids.append((mx, my, nearest, g))
        self.grids_built += 1
        return g

    def warp(self, aux: np.ndarray, grid, nearest: bool, border: float) -> torch.Tensor:
        """Raw aux h×w (uint8/uint16/float32) → 1×1×H×W float32 sampled at ``grid`` (``grid(..., nearest)``);
        ``border`` outside the image (rounded and clamped to the raw dtype, as ``cv2.remap`` converts it)."""
        if aux.dtype.kind in "ui":
            info = np.iinfo(aux.dtype)
            border = float(np.clip(np.rint(border), info.min, info.max))
        if aux.dtype == np.uint16:  # up as int16 bits (torch's uint16 has few kernels), unsigned again there
            x = self.upload(aux.view(np.int16)).int().bitwise_and_(0xFFFF).float()[None, None]
        else:
            x = self.upload(aux).float()[None, None]
        if nearest:
            flat, inside = grid
            picked = x.reshape(-1).index_select(0, flat).reshape(inside.shape)
            return torch.where(inside, picked, border)[None, None]
        if border:
            x = x - border
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if border:
            out += border
        if aux.dtype.kind in "ui":
            out.round_()  # cv2.remap of an integer image gives that integer type
        return out

    def scale_aux(self, warped: torch.Tensor, lo: float, hi: float, is_float: bool) -> torch.Tensor:
        """1×1×H×W raw values → 1×C×H×W: ``[lo, hi] → [0, 1]``, clipped, standardised per channel.
        The per-frame ``lo``/``hi`` enter as Python scalars: nothing is uploaded for them."""
        if is_float:
            warped = torch.nan_to_num(warped, nan=lo, posinf=lo, neginf=lo)
        unit = warped.sub(lo).mul_(1.0 / (hi - lo)).clamp_(0.0, 1.0)
        return torch.addcmul(self._aux_b, unit, self._aux_a)

    # -- logits ---------------------------------------------------------------------------------------
    def _nearest_index(self, tf: ResizeTransform) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tf.src_hw, tf.dst_hw, tf.mode)
        hit = self._nearest.get(key)
        if hit is None:
            rows, cols = tf.nearest_index()  # the very pixels the CPU path takes; here the content is cut out first
            hit = (torch.from_numpy(rows - tf.top).to(self.device), torch.from_numpy(cols - tf.left).to(self.device))
            self._nearest = {key: hit}
        return hit

    def postprocess(self, logits: torch.Tensor, tf: ResizeTransform, need_labels: bool, need_confidence: bool,
                    label_dtype: np.dtype) -> tuple[np.ndarray | None, np.ndarray | None]:
        """1×K×h×w logits → (labels H×W, confidence H×W float32) at the source resolution, as numpy arrays."""
        logits = logits.float()
        ch, cw = tf.content_hw
        if (ch, cw) != tf.dst_hw:
            logits = logits[:, :, tf.top:tf.top + ch, tf.left:tf.left + cw]
        labels = conf = None
        k = logits[0]
        nan = torch.isnan(k)
        # the CPU kernel's rules: a NaN logit never wins the arg-max, and an all-NaN pixel gets label 0 and
        # confidence 0 (torch's argmax/amax would let NaN win and spread it into the softmax)
        finite_or_inf = torch.where(nan, float("-inf"), k)  # always: testing for NaN first would sync the device
        if need_labels:
            small = finite_or_inf.argmax(0)  # first maximum: ties go to the lowest class id
            # uint16 ids travel as int16 bits (torch's uint16 has few kernels) and are viewed unsigned on arrival
            small = small.to(torch.uint8 if label_dtype == np.uint8 else torch.int16)
            if not tf.is_identity:
                iy, ix = self._nearest_index(tf)
                small = small.index_select(0, iy).index_select(1, ix)
            labels = small.cpu().numpy().view(label_dtype)
        if need_confidence:
            top = finite_or_inf.amax(0, keepdim=True)
            # exponents below −87 count as exp(−87) ≈ 0, NaN ones (NaN logits, ∞ − ∞) too, as on the CPU
            gap = (k - top).clamp_(min=-87.0).nan_to_num_(nan=-87.0)
            c = torch.exp(gap).sum(0, keepdim=True).reciprocal_().clamp_(max=1.0)
            c = torch.where(nan.all(0, keepdim=True), 0.0, c)[None]
            if not tf.is_identity:
                c = F.interpolate(c, size=tf.src_hw, mode="bilinear", align_corners=False, antialias=False)
            conf = c.clamp_(max=1.0)[0, 0].cpu().numpy()
        return labels, conf


__all__ = ["DeviceOps"]
