"""Fill output messages from numpy arrays and a SegmentationResult, on any object with the fields.

Works on the generated rclpy message classes and on anything shaped like them, so it is tested
without ROS. Every output copies the RGB header: same stamp and frame_id as the input image.
"""
from __future__ import annotations

import array as array_mod
from typing import Any

import numpy as np

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.io.image import numpy_to_image_fields

_ENCODINGS = {  # numpy (dtype, channels) -> sensor_msgs/Image encoding of our outputs
    (np.dtype(np.uint8), 1): "mono8",
    (np.dtype(np.uint16), 1): "mono16",
    (np.dtype(np.uint8), 3): "rgb8",
    (np.dtype(np.float32), 1): "32FC1",
}


def copy_header(dst, src) -> None:
    dst.stamp.sec = int(src.stamp.sec)
    dst.stamp.nanosec = int(src.stamp.nanosec)
    dst.frame_id = str(src.frame_id)


def output_encoding(array: np.ndarray) -> str:
    channels = 1 if array.ndim == 2 else array.shape[2]
    key = (np.dtype(array.dtype).newbyteorder("="), channels)
    if key not in _ENCODINGS:
        raise RgbtSegError(f"output image: no encoding for dtype {array.dtype} with {channels} channels")
    return _ENCODINGS[key]


def fill_image(msg, array: np.ndarray, header) -> Any:
    """Fill a sensor_msgs/Image with ``array`` (H×W or H×W×3): little-endian, no row padding."""
    fields = numpy_to_image_fields(array, output_encoding(array), as_bytes=True)
    copy_header(msg.header, header)
    msg.height, msg.width, msg.step = fields["height"], fields["width"], fields["step"]
    msg.encoding, msg.is_bigendian = fields["encoding"], fields["is_bigendian"]
    # array('B') is what rclpy stores uint8[] as; building it from bytes is one memcpy, whereas a
    # bytes/list value makes rclpy check every element in Python.
    msg.data = array_mod.array("B", fields["data"])
    return msg


def stamp_seconds(header) -> float:
    return float(header.stamp.sec) + 1e-9 * float(header.stamp.nanosec)


def fill_info(msg, *, header, card, model_file: str, modality: str, aux_used: bool, pair_skew: float,
              latency_total_ms: float, timings: dict[str, float], pairs_processed: int, pairs_dropped: int,
              frames_unpaired: int, colour_factory) -> Any:
    """Fill rgbt_seg_ros/msg/SegmentationInfo. ``colour_factory()`` makes a std_msgs/ColorRGBA."""
    copy_header(msg.header, header)
    msg.model_name = card.network + (f"/{card.variant}" if card.variant else "")
    msg.model_file = str(model_file)
    msg.modality = modality
    msg.class_names = [str(c) for c in card.class_names]
    colours = []
    for r, g, b in card.palette:
        c = colour_factory()
        c.r, c.g, c.b, c.a = r / 255.0, g / 255.0, b / 255.0, 1.0
        colours.append(c)
    msg.colours = colours
    msg.aux_used = bool(aux_used)
    msg.pair_skew = float(pair_skew)
    msg.latency_total_ms = float(latency_total_ms)
    msg.stage_names = [str(k) for k in timings]
    msg.stage_latency_ms = [float(v) for v in timings.values()]
    msg.pairs_processed = int(pairs_processed)
    msg.pairs_dropped = int(pairs_dropped)
    msg.frames_unpaired = int(frames_unpaired)
    return msg
