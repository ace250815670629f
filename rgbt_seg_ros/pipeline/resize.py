"""Resize or letterbox images to the network input, and map network-resolution results back.

Pixel-centre convention (the one ``cv2.resize`` uses): source x = (dest x − left + 0.5) / s − 0.5,
with ``s`` the content scale and ``left`` the letterbox padding (0 when stretching).
"""
from __future__ import annotations

import cv2
import numpy as np

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.pipeline.kernels import RESIZE_COLUMN_FACTORS, hwc_to_chw, resize_to_chw, upsample_clipped

# INTER_NEAREST_EXACT: nearest neighbour with the same pixel-centre convention as the linear modes
# (plain INTER_NEAREST is shifted by up to half a pixel), so labels line up with the confidence map
_INTERP = {"nearest": cv2.INTER_NEAREST_EXACT, "linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}
_OUTSIDE = -1.0e4  # a map coordinate far outside any image: cv2.remap gives the border value there


class ResizeTransform:
    """Geometry between an image of size ``src_hw`` and the network input ``dst_hw``.

    ``mode="stretch"`` scales each axis independently; ``mode="letterbox"`` keeps the aspect ratio and
    pads with zeros (centred). ``forward`` goes src → dst, ``inverse`` dst → src.
    """

    def __init__(self, src_hw: tuple[int, int], dst_hw: tuple[int, int], mode: str = "stretch"):
        sh, sw = (int(v) for v in src_hw)
        dh, dw = (int(v) for v in dst_hw)
        if min(sh, sw, dh, dw) < 1:
            raise RgbtSegError(f"resize: cannot map {sh}×{sw} to {dh}×{dw}")
        if mode not in ("stretch", "letterbox"):
            raise RgbtSegError(f"resize_mode: {mode!r} is not 'stretch' or 'letterbox'")
        self.src_hw, self.dst_hw, self.mode = (sh, sw), (dh, dw), mode
        if mode == "stretch":
            self.content_hw = (dh, dw)
            self.top = self.left = 0
        else:
            s = min(dh / sh, dw / sw)
            ch, cw = min(dh, max(1, round(sh * s))), min(dw, max(1, round(sw * s)))
            self.content_hw = (ch, cw)
            self.top, self.left = (dh - ch) // 2, (dw - cw) // 2
        self.scale_y = self.content_hw[0] / sh
        self.scale_x = self.content_hw[1] / sw
        self.is_identity = (sh, sw) == (dh, dw)
        self._src_maps: tuple[np.ndarray, np.ndarray] | None = None
        self._nearest: tuple[np.ndarray, np.ndarray] | None = None
        self._row_taps: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._inverse_row_taps: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        # content columns that take every factor-th source column (the one-pass kernels), else 0; 0 for the
        # identity too, which has nothing to resize
        factor = sw // self.content_hw[1]
        self.column_factor = factor if (factor in RESIZE_COLUMN_FACTORS and factor * self.content_hw[1] == sw
                                        and self.left == 0 and not self.is_identity) else 0

    def check_source(self, img: np.ndarray) -> None:
        """One error naming both sizes when ``img`` is not of the source size."""
        if img.shape[:2] != self.src_hw:
            raise RgbtSegError(f"resize: image is {img.shape[0]}×{img.shape[1]}, transform expects "
                               f"{self.src_hw[0]}×{self.src_hw[1]}")

    def _check_result(self, img: np.ndarray) -> None:
        if img.shape[:2] != self.dst_hw:
            raise RgbtSegError(f"resize: result is {img.shape[0]}×{img.shape[1]}, expected "
                               f"{self.dst_hw[0]}×{self.dst_hw[1]}")

    def forward(self, img: np.ndarray, interpolation: str = "linear") -> np.ndarray:
        self.check_source(img)
        if self.is_identity:
            return img
        ch, cw = self.content_hw
        out = cv2.resize(img, (cw, ch), interpolation=_INTERP[interpolation])
        if self.mode == "letterbox" and (ch, cw) != self.dst_hw:
            dh, dw = self.dst_hw
            out = cv2.copyMakeBorder(out, self.top, dh - ch - self.top, self.left, dw - cw - self.left,
                                     cv2.BORDER_CONSTANT, value=0)
        return out

    def inverse(self, img: np.ndarray, interpolation: str = "linear") -> np.ndarray:
        """Network-resolution image (h×w or h×w×C) → source resolution; letterbox padding is cut away."""
        self._check_result(img)
        if self.is_identity:
            return img
        ch, cw = self.content_hw
        content = img[self.top:self.top + ch, self.left:self.left + cw]
        sh, sw = self.src_hw
        return cv2.resize(content, (sw, sh), interpolation=_INTERP[interpolation])

    def nearest_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols): the network pixel each source pixel takes in ``inverse(img, "nearest")``.

        Asked of ``cv2.resize`` itself (an image of indices resized the same way), so a lookup through these
        maps equals ``inverse`` exactly; letterbox padding is skipped.
        """
        if self._nearest is None:
            ch, cw = self.content_hw
            sh, sw = self.src_hw

            def along(n_content: int, n_src: int, offset: int) -> np.ndarray:
                idx = np.arange(n_content, dtype=np.float32).reshape(1, n_content)  # exact integers up to 2^24
                taken = cv2.resize(idx, (n_src, 1), interpolation=_INTERP["nearest"])[0]
                return taken.astype(np.int64) + offset

            self._nearest = (along(ch, sh, self.top), along(cw, sw, self.left))
        return self._nearest

    def row_taps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows0, rows1, weights): the two source rows each content row of ``forward(img, "linear")`` blends and
        the weight of the second, cv2.resize's pixel centres clamped at the edges."""
        if self._row_taps is None:
            self._row_taps = _linear_taps(self.src_hw[0], self.content_hw[0])
        return self._row_taps

    def inverse_row_taps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The same for ``inverse(img, "linear")``: the content rows (from ``top``) each source row blends."""
        if self._inverse_row_taps is None:
            self._inverse_row_taps = _linear_taps(self.content_hw[0], self.src_hw[0])
        return self._inverse_row_taps

    def inverse_clipped(self, img: np.ndarray) -> np.ndarray:
        """``inverse(img, "linear")`` of a float32 image, clipped to ≤ 1: in one pass (``kernels.upsample_clipped``)
        when the source width is the content width times 1–4, else cv2.resize and a clipping pass."""
        self._check_result(img)
        if img.ndim != 2:
            raise RgbtSegError(f"resize: result has shape {img.shape}, expected one channel")
        if not self.column_factor:
            out = np.ascontiguousarray(self.inverse(img, "linear"), np.float32)
            return cv2.min(out, 1.0, dst=out)
        out = np.empty(self.src_hw, np.float32)
        upsample_clipped(np.ascontiguousarray(img, np.float32), *self.inverse_row_taps(), self.column_factor, self.top,
                         out)
        return out

    def src_coords(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 maps (dst_h×dst_w) of the source pixel each network pixel samples; padding far outside."""
        if self._src_maps is None:
            dh, dw = self.dst_hw
            xs = (np.arange(dw, dtype=np.float64) - self.left + 0.5) / self.scale_x - 0.5
            ys = (np.arange(dh, dtype=np.float64) - self.top + 0.5) / self.scale_y - 0.5
            xs[(np.arange(dw) < self.left) | (np.arange(dw) >= self.left + self.content_hw[1])] = _OUTSIDE
            ys[(np.arange(dh) < self.top) | (np.arange(dh) >= self.top + self.content_hw[0])] = _OUTSIDE
            mx, my = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
            self._src_maps = (mx, my)
        return self._src_maps


def _linear_taps(n_src: int, n_dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``n_dst`` resized rows: (first source row, second source row, weight of the second)."""
    y = np.clip((np.arange(n_dst, dtype=np.float64) + 0.5) * (n_src / n_dst) - 0.5, 0.0, n_src - 1.0)
    first = np.floor(y).astype(np.int64)
    return first, np.minimum(first + 1, n_src - 1), (y - first).astype(np.float32)


def preprocess_rgb(rgb: np.ndarray, tf: ResizeTransform, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 RGB → 1×3×h×w float32, ((x / 255) − mean) / std per channel, at the network size.

    When the network width is the RGB width divided by 1–4 (``tf.column_factor``), resize and normalisation are
    one pass (``kernels.resize_to_chw``, in float: within half a grey level of cv2.resize, which rounds to uint8);
    otherwise cv2.resize, then the uint8 HWC → float CHW conversion in one pass.
    """
    std = np.asarray(std, np.float32).reshape(3)
    scale = (1.0 / (255.0 * std)).astype(np.float32)
    offset = (-np.asarray(mean, np.float32).reshape(3) / std).astype(np.float32)
    tf.check_source(rgb)
    out = np.empty((1, 3) + tf.dst_hw, np.float32)
    if tf.column_factor:
        content_h = tf.content_hw[0]
        out[0, :, :tf.top] = offset[:, None, None]  # letterbox padding: the value of a 0 pixel
        out[0, :, tf.top + content_h:] = offset[:, None, None]
        resize_to_chw(np.ascontiguousarray(rgb), *tf.row_taps(), tf.column_factor, scale, offset, out[0], tf.top)
        return out
    hwc_to_chw(np.ascontiguousarray(tf.forward(rgb, "linear")), scale, offset, out[0])
    return out
