"""``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` data ⇄ numpy, without ROS.

Works on any object with the message's fields (rosbags dataclasses, rclpy messages, namespaces):
``Image`` needs ``encoding, height, width, step, data, is_bigendian``; ``CompressedImage`` needs
``format, data``. Arrays returned own their memory (row padding removed, native byte order).
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from rgbt_seg_ros.errors import RgbtSegError

# encoding -> (numpy dtype, channels), as sensor_msgs/image_encodings.hpp defines them.
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "8UC3": (np.dtype(np.uint8), 3),
    "16UC1": (np.dtype(np.uint16), 1),
    "16SC1": (np.dtype(np.int16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}


def _where(topic: str | None) -> str:
    return f"topic {topic}: " if topic else ""


def bytes_per_pixel(encoding: str, topic: str | None = None) -> int:
    if encoding not in ENCODINGS:
        raise RgbtSegError(f"{_where(topic)}field encoding: unsupported image encoding {encoding!r} "
                           f"(supported: {', '.join(ENCODINGS)})")
    dtype, channels = ENCODINGS[encoding]
    return dtype.itemsize * channels


def _buffer(data: Any) -> np.ndarray:
    """The message's ``data`` as a flat uint8 array without copying where possible."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    except TypeError:  # a plain sequence of ints (e.g. a list assigned to an rclpy message)
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def image_to_numpy(msg: Any, topic: str | None = None) -> np.ndarray:
    """Decode an Image-like message to H×W (one channel) or H×W×C, honouring ``step`` and ``is_bigendian``."""
    encoding = str(msg.encoding)
    bpp = bytes_per_pixel(encoding, topic)
    dtype, channels = ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise RgbtSegError(f"{_where(topic)}field height/width: an image of {width}x{height} pixels has nothing "
                           "to segment")
    if step < width * bpp:
        raise RgbtSegError(f"{_where(topic)}field step: {step} bytes is shorter than a row "
                           f"(width {width} x {bpp} bytes per pixel for {encoding} = {width * bpp})")
    buf = _buffer(msg.data)
    if buf.size < step * height:
        raise RgbtSegError(f"{_where(topic)}field data: {buf.size} bytes, expected step {step} x height {height} "
                           f"= {step * height} ({encoding} {width}x{height}); the image is truncated")
    big = bool(getattr(msg, "is_bigendian", False))
    src_dtype = dtype.newbyteorder(">" if big else "<") if dtype.itemsize > 1 else dtype
    # A strided view over the padded rows; the copy below drops padding and fixes byte order.
    view = np.ndarray((height, width, channels), dtype=src_dtype, buffer=buf, offset=0,
                      strides=(step, channels * dtype.itemsize, dtype.itemsize))
    out = np.ascontiguousarray(view.astype(dtype.newbyteorder("="), copy=True))
    return out[:, :, 0] if channels == 1 else out


def numpy_to_image_fields(array: np.ndarray, encoding: str, *, is_bigendian: bool = False,
                          step: int | None = None, as_bytes: bool = False) -> dict[str, Any]:
    """The Image fields (except ``header``) for ``array``; ``step`` > row size adds zero padding.

    ``data`` is a uint8 numpy array (what rosbags message classes want) or ``bytes`` with ``as_bytes``
    (what rclpy accepts fastest).
    """
    bpp = bytes_per_pixel(encoding)
    dtype, channels = ENCODINGS[encoding]
    array = np.asarray(array)
    if array.ndim == 2 and channels == 1:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] != channels:
        raise RgbtSegError(f"field encoding: {encoding} needs {channels} channel(s), "
                           f"got an array of shape {array.shape}")
    if array.dtype != dtype:
        if array.dtype.kind != dtype.kind and not (dtype.kind in "iu" and array.dtype.kind in "iu"):
            raise RgbtSegError(f"field encoding: {encoding} needs {dtype} data, got {array.dtype}")
        array = array.astype(dtype)
    height, width = array.shape[:2]
    row = width * bpp
    step = row if step is None else int(step)
    if step < row:
        raise RgbtSegError(f"field step: {step} bytes is shorter than a row ({width} x {bpp} = {row})")
    target = dtype.newbyteorder(">" if is_bigendian else "<") if dtype.itemsize > 1 else dtype
    rows = np.ascontiguousarray(array.astype(target, copy=False)).view(np.uint8).reshape(height, row)
    if step != row:
        padded = np.zeros((height, step), dtype=np.uint8)
        padded[:, :row] = rows
        rows = padded
    data = rows.reshape(-1)
    return {
        "height": height, "width": width, "encoding": encoding, "is_bigendian": int(bool(is_bigendian)),
        "step": step, "data": data.tobytes() if as_bytes else data,
    }


def numpy_to_image(array: np.ndarray, encoding: str, msg_class: Any, header: Any, **kwargs: Any) -> Any:
    """Build an Image message of ``msg_class`` (rosbags or rclpy class) from ``array``."""
    return msg_class(header=header, **numpy_to_image_fields(array, encoding, **kwargs))


def _compressed_kind(fmt: str) -> tuple[str | None, bool]:
    """(original encoding if the format names one, is compressedDepth) from a CompressedImage ``format``."""
    fmt = fmt.strip()
    depth = "compresseddepth" in fmt.lower().replace(" ", "")
    head = fmt.split(";")[0].strip() if ";" in fmt else ""
    return (head if head in ENCODINGS else None), depth


def compressed_to_numpy(msg: Any, topic: str | None = None) -> tuple[np.ndarray, str]:
    """Decode a CompressedImage-like message (JPEG / PNG, 8 or 16 bit, compressedDepth) → (array, encoding).

    Colour comes back as ``rgb8`` (or ``rgba8``), grey as ``mono8`` / ``mono16`` unless the format
    names the original encoding (e.g. ``"16UC1; png compressed"``).
    """
    fmt = str(getattr(msg, "format", ""))
    original, depth = _compressed_kind(fmt)
    buf = _buffer(msg.data)
    header_bytes = 0
    if depth:
        # compressed_depth_image_transport prefixes a 12-byte ConfigHeader (int32 format, float32 quant A, B).
        header_bytes = 12
        if buf.size <= header_bytes:
            raise RgbtSegError(f"{_where(topic)}field data: {buf.size} bytes cannot hold a compressedDepth image")
    image = cv2.imdecode(buf[header_bytes:], cv2.IMREAD_UNCHANGED) if buf.size > header_bytes else None
    if image is None:
        raise RgbtSegError(f"{_where(topic)}field data: {buf.size} bytes could not be decoded as format {fmt!r} "
                           f"(JPEG or PNG expected)")
    if depth:
        if original == "32FC1":
            quant_a, quant_b = np.frombuffer(buf[4:12].tobytes(), dtype="<f4")
            inv = image.astype(np.float32)
            with np.errstate(divide="ignore"):
                out = np.where(inv > 0, quant_a / (inv - quant_b), np.nan).astype(np.float32)
            return out, "32FC1"
        return image.astype(np.uint16, copy=False), original or "16UC1"
    if image.ndim == 3 and image.dtype != np.uint8:
        raise RgbtSegError(f"{_where(topic)}field data: {image.dtype} colour images are not supported "
                           f"(8-bit colour or 8/16-bit grey)")
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), "rgb8"
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA), "rgba8"
    if image.dtype == np.uint16:
        return image, original if original in ("16UC1", "mono16") else "mono16"
    return image, original if original in ("8UC1", "mono8") else "mono8"


def numpy_to_compressed_fields(array: np.ndarray, encoding: str, fmt: str = "jpeg", quality: int = 90) -> dict:
    """CompressedImage fields (``format``, ``data``) as image_transport's compressed plugin writes them."""
    bytes_per_pixel(encoding)
    image = np.asarray(array)
    if encoding in ("rgb8",):
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif encoding == "rgba8":
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    ext = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}.get(fmt)
    if ext is None:
        raise RgbtSegError(f"field format: unsupported compression {fmt!r} (jpeg or png)")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == ".jpg" else []
    ok, data = cv2.imencode(ext, image, params)
    if not ok:
        raise RgbtSegError(f"field format: OpenCV could not encode a {encoding} image as {fmt}")
    colour = "bgr8" if image.ndim == 3 else encoding
    name = "jpeg" if ext == ".jpg" else "png"
    return {"format": f"{encoding}; {name} compressed {colour}", "data": data.reshape(-1)}


def message_to_numpy(msg: Any, topic: str | None = None) -> tuple[np.ndarray, str]:
    """Image or CompressedImage → (array, encoding)."""
    if hasattr(msg, "encoding") and hasattr(msg, "step"):
        return image_to_numpy(msg, topic), str(msg.encoding)
    if hasattr(msg, "format"):
        return compressed_to_numpy(msg, topic)
    raise RgbtSegError(f"{_where(topic)}not an Image or CompressedImage message ({type(msg).__name__})")


def to_rgb8(array: np.ndarray, encoding: str, topic: str | None = None) -> np.ndarray:
    """Any supported colour or 8-bit grey image → H×W×3 uint8 RGB (8UC3 is taken as OpenCV's BGR order)."""
    if encoding == "rgb8":
        return array
    if encoding in ("bgr8", "8UC3"):
        return np.ascontiguousarray(array[:, :, ::-1])
    if encoding == "rgba8":
        return np.ascontiguousarray(array[:, :, :3])
    if encoding == "bgra8":
        return np.ascontiguousarray(array[:, :, 2::-1])
    if encoding in ("mono8", "8UC1"):
        return np.repeat(array[:, :, None], 3, axis=2)
    raise RgbtSegError(f"{_where(topic)}field encoding: {encoding} is not a colour image encoding "
                       f"(rgb8, bgr8, rgba8, bgra8, mono8, 8UC1, 8UC3)")
