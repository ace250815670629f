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
from rgbt_seg_ros.io.info import info_fields

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
    """Fill rgbt_seg_ros/msg/SegmentationInfo. ``colour_factory()`` makes a std_msgs/ColorRGBA.

    Same content as replay writes (``io.info.info_fields``): the pipeline's ``total`` is not a stage name.
    """
    fields = info_fields(card=card, model_file=model_file, modality=modality, aux_used=aux_used,
                         pair_skew=pair_skew, latency_total_ms=latency_total_ms, timings=timings,
                         pairs_processed=pairs_processed, pairs_dropped=pairs_dropped,
                         frames_unpaired=frames_unpaired)
    copy_header(msg.header, header)
    colours = []
    for r, g, b, a in fields.pop("colours"):
        c = colour_factory()
        c.r, c.g, c.b, c.a = r, g, b, a
        colours.append(c)
    msg.colours = colours
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg
