"""sensor_msgs/Image and CompressedImage ⇄ numpy: every encoding, row padding, byte order, bad input."""
from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.io.image import (ENCODINGS, compressed_to_numpy, image_to_numpy, message_to_numpy,
                                   numpy_to_compressed_fields, numpy_to_image, numpy_to_image_fields, to_rgb8)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TS = get_typestore(Stores.ROS2_HUMBLE)
Image = TS.types["sensor_msgs/msg/Image"]
Header = TS.types["std_msgs/msg/Header"]
Time = TS.types["builtin_interfaces/msg/Time"]


def _sample(encoding: str, h: int = 5, w: int = 7) -> np.ndarray:
    dtype, ch = ENCODINGS[encoding]
    rng = np.random.default_rng(sum(encoding.encode()))
    shape = (h, w) if ch == 1 else (h, w, ch)
    if dtype.kind == "f":
        return rng.normal(20.0, 15.0, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("pad", [0, 3, 64])
def test_round_trip_every_encoding(encoding, big, pad):
    array = _sample(encoding)
    row = array.shape[1] * array.dtype.itemsize * (array.shape[2] if array.ndim == 3 else 1)
    fields = numpy_to_image_fields(array, encoding, is_bigendian=big, step=row + pad)
    assert fields["step"] == row + pad and len(fields["data"]) == (row + pad) * array.shape[0]
    back = image_to_numpy(SimpleNamespace(**fields))
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_round_trip_through_cdr_with_rosbags_message_class():
    array = _sample("16UC1", 480, 640)
    header = Header(stamp=Time(sec=12, nanosec=345), frame_id="thermal")
    msg = numpy_to_image(array, "16UC1", Image, header, step=640 * 2 + 16)
    raw = TS.serialize_cdr(msg, "sensor_msgs/msg/Image")
    back = TS.deserialize_cdr(raw, "sensor_msgs/msg/Image")
    assert back.header.frame_id == "thermal" and back.step == 1296
    np.testing.assert_array_equal(image_to_numpy(back), array)


def test_big_endian_bytes_written_by_hand():
    # Independent of numpy_to_image_fields: bytes packed with struct, one padding byte per row.
    values = [[1.25, -3.5], [1e6, 0.0]]
    data = b"".join(struct.pack(">2f", *row) + b"\xee" for row in values)
    msg = SimpleNamespace(encoding="32FC1", height=2, width=2, step=9, is_bigendian=1, data=data)
    np.testing.assert_array_equal(image_to_numpy(msg), np.array(values, np.float32))
    data16 = struct.pack(">3H", 1, 256, 65535) + struct.pack(">3H", 2, 3, 4)
    msg16 = SimpleNamespace(encoding="mono16", height=2, width=3, step=6, is_bigendian=True, data=bytearray(data16))
    np.testing.assert_array_equal(image_to_numpy(msg16), [[1, 256, 65535], [2, 3, 4]])
    little = SimpleNamespace(encoding="16SC1", height=1, width=2, step=4, is_bigendian=0,
                             data=list(struct.pack("<2h", -2, 300)))  # a list of ints, as rclpy may hold
    np.testing.assert_array_equal(image_to_numpy(little), [[-2, 300]])


def test_result_owns_memory_and_ignores_extra_bytes():
    data = np.arange(12, dtype=np.uint8)
    msg = SimpleNamespace(encoding="mono8", height=2, width=4, step=5, is_bigendian=0, data=data)
    out = image_to_numpy(msg)
    np.testing.assert_array_equal(out, [[0, 1, 2, 3], [5, 6, 7, 8]])
    data[0] = 99
    assert out[0, 0] == 0


def test_unknown_encoding_names_topic_and_field():
    msg = SimpleNamespace(encoding="yuv422_yuy2", height=2, width=2, step=4, is_bigendian=0, data=bytes(8))
    with pytest.raises(RgbtSegError, match=r"topic /cam/image: field encoding: .*yuv422_yuy2"):
        image_to_numpy(msg, topic="/cam/image")


def test_truncated_data_names_topic_field_and_sizes():
    msg = SimpleNamespace(encoding="rgb8", height=480, width=640, step=1920, is_bigendian=0, data=bytes(30))
    with pytest.raises(RgbtSegError) as info:
        image_to_numpy(msg, topic="/rgb/image")
    text = str(info.value)
    assert "/rgb/image" in text and "field data" in text and "30 bytes" in text and "921600" in text
    assert "\n" not in text


def test_short_step_names_field():
    msg = SimpleNamespace(encoding="mono16", height=2, width=4, step=7, is_bigendian=0, data=bytes(16))
    with pytest.raises(RgbtSegError, match=r"topic /t: field step: 7 bytes .*width 4 x 2"):
        image_to_numpy(msg, topic="/t")


def test_empty_image_names_topic_and_field():
    for h, w in ((0, 0), (0, 4), (3, 0)):
        msg = SimpleNamespace(encoding="mono8", height=h, width=w, step=w, is_bigendian=0, data=b"")
        with pytest.raises(RgbtSegError, match=rf"topic /thermal/image: field height/width: an image of {w}x{h} pixels"):
            image_to_numpy(msg, topic="/thermal/image")


def test_wrong_channel_count_on_output():
    with pytest.raises(RgbtSegError, match="rgb8 needs 3 channel"):
        numpy_to_image_fields(np.zeros((4, 4), np.uint8), "rgb8")


def test_colour_conversions_to_rgb8():
    rgb = _sample("rgb8")
    np.testing.assert_array_equal(to_rgb8(rgb[:, :, ::-1], "bgr8"), rgb)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(to_rgb8(rgba, "rgba8"), rgb)
    np.testing.assert_array_equal(to_rgb8(rgba[:, :, [2, 1, 0, 3]], "bgra8"), rgb)
    grey = _sample("mono8")
    assert (to_rgb8(grey, "mono8") == grey[:, :, None]).all()
    with pytest.raises(RgbtSegError, match="field encoding: 16UC1 is not a colour"):
        to_rgb8(_sample("16UC1"), "16UC1", topic="/x")


def test_compressed_png_is_lossless_and_jpeg_close():
    rgb = _sample("rgb8", 32, 48)
    png = SimpleNamespace(**numpy_to_compressed_fields(rgb, "rgb8", "png"))
    out, enc = message_to_numpy(png)
    assert enc == "rgb8"
    np.testing.assert_array_equal(out, rgb)
    smooth = cv2.GaussianBlur(rgb, (0, 0), 6)
    jpg = SimpleNamespace(**numpy_to_compressed_fields(smooth, "rgb8", "jpeg", quality=95))
    out, enc = compressed_to_numpy(jpg)
    assert enc == "rgb8" and out.shape == smooth.shape
    assert np.abs(out.astype(int) - smooth).mean() < 3.0  # would be ~80 if channels were swapped


def test_sixteen_bit_png_depth_and_compressed_depth():
    depth = _sample("16UC1", 24, 40)
    ok, png = cv2.imencode(".png", depth)
    assert ok
    out, enc = compressed_to_numpy(SimpleNamespace(format="16UC1; png compressed", data=png.tobytes()))
    assert enc == "16UC1" and out.dtype == np.uint16
    np.testing.assert_array_equal(out, depth)
    out, enc = compressed_to_numpy(SimpleNamespace(format="png", data=png.tobytes()))
    assert enc == "mono16"
    # compressed_depth_image_transport: 12-byte config header before the PNG
    cfg = struct.pack("<iff", 0, 0.0, 0.0)
    out, enc = compressed_to_numpy(SimpleNamespace(format="16UC1; compressedDepth png", data=cfg + png.tobytes()))
    assert enc == "16UC1"
    np.testing.assert_array_equal(out, depth)


def test_sixteen_bit_colour_png_is_refused():
    ok, png = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint16))
    with pytest.raises(RgbtSegError, match=r"topic /c: field data: uint16 colour images are not supported"):
        compressed_to_numpy(SimpleNamespace(format="png", data=png.tobytes()), topic="/c")


def test_undecodable_compressed_names_topic():
    with pytest.raises(RgbtSegError, match=r"topic /c: field data: 10 bytes could not be decoded"):
        compressed_to_numpy(SimpleNamespace(format="jpeg", data=bytes(10)), topic="/c")


def test_real_truncated_image_from_fixture_bag():
    bag = DATA / "rosbags-rs-format-fixture" / "test_bag_mcap"
    if not bag.exists():
        pytest.skip("shared data absent")
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as reader:
        conns = [c for c in reader.connections if c.topic == "/test/sensor_msgs/image"]
        _, _, raw = next(reader.messages(conns))
        msg = reader.deserialize(raw, conns[0].msgtype)
    with pytest.raises(RgbtSegError, match=r"/test/sensor_msgs/image: field data: 30 bytes.*921600"):
        image_to_numpy(msg, topic="/test/sensor_msgs/image")


def test_real_jpeg_from_ros1_bag_decodes_at_camera_info_size():
    bag = DATA / "fiducials-ros1-bags" / "aruco_images.bag"
    if not bag.exists():
        pytest.skip("shared data absent")
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as reader:
        conns = {c.topic: c for c in reader.connections}
        img_conn = conns["/raspicam_node/image/compressed"]
        _, _, raw = next(reader.messages([img_conn]))
        msg = reader.deserialize(raw, img_conn.msgtype)
        _, _, raw = next(reader.messages([conns["/raspicam_node/camera_info"]]))
        info = reader.deserialize(raw, "sensor_msgs/msg/CameraInfo")
    out, enc = message_to_numpy(msg)
    assert enc == "rgb8" and out.shape == (info.height, info.width, 3)
    assert out.std() > 5  # a real picture, not a blank buffer
