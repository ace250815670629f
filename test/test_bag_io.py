"""Bag reading (rosbag2 mcap/sqlite3, ROS 1) and atomic rosbag2 writing through rosbags."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag1 import Writer as Ros1Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from bag_checks import mcap_ros2, tree_hash

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.io.bag import SEGMENTATION_INFO, BagReader, BagWriter, output_typestore

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FIDUCIALS = DATA / "fiducials-ros1-bags" / "aruco_images.bag"
FIXTURE = DATA / "rosbags-rs-format-fixture"


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"shared data absent: {path}")






def test_ros1_bag_topics_and_counts():
    _need(FIDUCIALS)
    with BagReader(FIDUCIALS) as bag:
        topics = bag.topics
        assert bag.is_ros1
        assert topics["/raspicam_node/camera_info"].count == 15
        assert topics["/raspicam_node/image/compressed"].msgtype == "sensor_msgs/msg/CompressedImage"
        stamps = [m.log_time for m in bag.messages()]
    assert len(stamps) == 16 and stamps == sorted(stamps)


@pytest.mark.parametrize("storage", ["test_bag_mcap", "test_bag_sqlite3"])
def test_rosbag2_fixture_topics(storage):
    _need(FIXTURE)
    with BagReader(FIXTURE / storage) as bag:
        assert bag.topics["/test/sensor_msgs/image"].count == 2
        assert bag.require_topic("/test/sensor_msgs/image", ["sensor_msgs/msg/Image"]) == "sensor_msgs/msg/Image"


def test_missing_topic_names_it_and_lists_the_bag():
    _need(FIDUCIALS)
    with BagReader(FIDUCIALS) as bag:
        with pytest.raises(RgbtSegError) as info:
            bag.require_topic("/thermal/image", role="--thermal-topic")
    text = str(info.value)
    assert text.startswith("--thermal-topic /thermal/image: not in bag")
    assert "/raspicam_node/image/compressed [sensor_msgs/msg/CompressedImage, 1]" in text and "\n" not in text


def test_wrong_type_is_named():
    _need(FIDUCIALS)
    with BagReader(FIDUCIALS) as bag:
        with pytest.raises(RgbtSegError, match="has type sensor_msgs/msg/CameraInfo, expected sensor_msgs/msg/Image"):
            bag.require_topic("/raspicam_node/camera_info", ["sensor_msgs/msg/Image"])


def test_missing_empty_and_corrupt_bags(tmp_path):
    with pytest.raises(RgbtSegError, match="does not exist"):
        BagReader(tmp_path / "nope").__enter__()
    empty = tmp_path / "empty"
    with BagWriter(empty) as w:
        w.add_connection("/a", "std_msgs/msg/String")
    with pytest.raises(RgbtSegError, match="is empty"):
        BagReader(empty).__enter__()
    junk = tmp_path / "junk.bag"
    junk.write_bytes(b"not a bag at all" * 20)
    with pytest.raises(RgbtSegError, match="corrupt or unreadable"):
        BagReader(junk).__enter__()
    (tmp_path / "folder").mkdir()
    with pytest.raises(RgbtSegError, match="not a rosbag2 folder or ROS 1 bag"):
        BagReader(tmp_path / "folder").__enter__()


def test_truncated_storage_files(tmp_path):
    _need(FIXTURE)
    for name, suffix in (("test_bag_mcap", ".mcap"), ("test_bag_sqlite3", ".db3")):
        copy = tmp_path / name
        shutil.copytree(FIXTURE / name, copy)
        storage = copy / (name + suffix)
        storage.write_bytes(storage.read_bytes()[: storage.stat().st_size // 2])
        with pytest.raises(RgbtSegError, match=f"bag {copy}: corrupt"):
            with BagReader(copy) as bag:
                list(bag.messages())
    if FIDUCIALS.exists():
        cut = tmp_path / "cut.bag"
        cut.write_bytes(FIDUCIALS.read_bytes()[:300000])
        with pytest.raises(RgbtSegError, match="corrupt"):
            with BagReader(cut) as bag:
                list(bag.messages())


@pytest.mark.parametrize("source, storage", [("test_bag_sqlite3", "mcap"), ("test_bag_mcap", "sqlite3")])
def test_rosbag2_copy_is_verbatim(tmp_path, source, storage):
    _need(FIXTURE)
    src = FIXTURE / source
    out = tmp_path / "copy"
    with BagReader(src) as bag, BagWriter(out, storage=storage, protect=[src]) as w:
        originals = []
        for m in bag.messages():  # ~90 message types, 2 messages each
            w.add_connection(m.topic, m.msgtype, *bag.ros2_definition(m.connection))
            w.write_raw(m.topic, m.log_time, bag.to_cdr(m), m.msgtype)
            originals.append((m.topic, m.log_time, bytes(m.raw)))
    with AnyReader([out]) as reader:
        copied = [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]
        types = {c.topic: c.msgtype for c in reader.connections}
    assert sorted(copied) == sorted(originals) and len(copied) == 188
    if storage == "mcap":  # Foxglove's decoder reads every copied message with the copied definitions
        decoded = mcap_ros2(out / "copy.mcap")
        assert len(decoded) == 188
        assert all(schema.name == types[channel.topic] for schema, channel, _, _ in decoded)


def test_ros1_to_rosbag2_readable_bymcap_ros2(tmp_path):
    _need(FIDUCIALS)
    out = tmp_path / "converted"
    with BagReader(FIDUCIALS) as bag, BagWriter(out) as w:
        infos = []
        for m in bag.messages():
            w.add_connection(m.topic, m.msgtype, *bag.ros2_definition(m.connection))
            w.write_raw(m.topic, m.log_time, bag.to_cdr(m))
            if m.topic.endswith("camera_info"):
                infos.append(bag.deserialize(m))  # ROS 1 field names: K, D, ...
    decoded = [d for d in mcap_ros2(out / "converted.mcap") if d[1].topic == "/raspicam_node/camera_info"]
    assert len(decoded) == 15
    for ros1, (schema, _, _, msg) in zip(infos, decoded):
        np.testing.assert_allclose(msg.k, ros1.K)
        assert msg.header.frame_id == ros1.header.frame_id == "raspicam"
        assert msg.header.stamp.nanosec == ros1.header.stamp.nanosec
        assert schema.name == "sensor_msgs/msg/CameraInfo"


def test_ros1_custom_type_keeps_its_definition(tmp_path):
    store = get_typestore(Stores.ROS1_NOETIC)
    store.register(get_types_from_msg("std_msgs/Header header\nint32 a\nfloat64[] b\n", "my_pkg/msg/Thing"))
    src = tmp_path / "custom.bag"
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    with Ros1Writer(src) as w:
        conn = w.add_connection("/thing", "my_pkg/msg/Thing", typestore=store)
        msg = store.types["my_pkg/msg/Thing"](header=Header(seq=9, stamp=Time(sec=3, nanosec=4), frame_id="f"),
                                              a=-7, b=np.array([1.5, 2.5]))
        w.write(conn, 100, store.serialize_ros1(msg, "my_pkg/msg/Thing"))
    out = tmp_path / "out"
    with BagReader(src) as bag, BagWriter(out, storage="sqlite3") as w:
        for m in bag.messages():
            w.add_connection(m.topic, m.msgtype, *bag.ros2_definition(m.connection))
            w.write_raw(m.topic, m.log_time, bag.to_cdr(m))
    with BagReader(out) as bag:
        (m,) = list(bag.messages())
        thing = bag.deserialize(m)
    assert thing.a == -7 and list(thing.b) == [1.5, 2.5] and thing.header.stamp.sec == 3
    assert not hasattr(thing.header, "seq")


def test_segmentation_info_registered_from_msg_file(tmp_path):
    store = output_typestore()
    cls = store.types[SEGMENTATION_INFO]
    fields = [f[0] for f in store.fielddefs[SEGMENTATION_INFO][1]]
    text = (Path(__file__).resolve().parents[1] / "msg" / "SegmentationInfo.msg").read_text()
    for name in fields:
        assert name in text
    assert "stage_latency_ms" in fields and "colours" in fields
    out = tmp_path / "info"
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    Colour = store.types["std_msgs/msg/ColorRGBA"]
    msg = cls(header=Header(stamp=Time(sec=1, nanosec=2), frame_id="rgb"), model_name="m", model_file="f",
              modality="thermal", class_names=["a", "b"], colours=[Colour(r=1.0, g=0.0, b=0.0, a=1.0)] * 2,
              aux_used=True, pair_skew=0.01, latency_total_ms=3.5, stage_names=["infer"],
              stage_latency_ms=np.array([2.5], np.float32), pairs_processed=4, pairs_dropped=1, frames_unpaired=2)
    with BagWriter(out) as w:
        w.write("/rgbt_seg/info", 5, msg, SEGMENTATION_INFO)
    ((schema, _, _, decoded),) = mcap_ros2(out / "info.mcap")
    assert schema.name == SEGMENTATION_INFO
    assert list(decoded.class_names) == ["a", "b"] and decoded.pairs_dropped == 1
    assert abs(decoded.stage_latency_ms[0] - 2.5) < 1e-6


def test_writer_refuses_existing_and_input_overlap(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RgbtSegError, match=r"exists; pass --force"):
        with BagWriter(out):
            pass
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(RgbtSegError, match="overlaps input"):
        with BagWriter(tmp_path / "in", protect=[tmp_path / "in"]):
            pass
    # --force replaces a bag, never a folder of something else (nor a file)
    (tmp_path / "a_file").write_text("mine too")
    for path in (out, tmp_path / "a_file"):
        with pytest.raises(RgbtSegError, match="is not a rosbag2 folder"):
            with BagWriter(path, force=True):
                pass
    assert (out / "keep.txt").read_text() == "mine" and (tmp_path / "a_file").read_text() == "mine too"
    bag = tmp_path / "bag"
    for data in ("old", "new"):
        with BagWriter(bag, force=True) as w:
            w.write("/s", 1, w.msg_class("std_msgs/msg/String")(data=data), "std_msgs/msg/String")
    with BagReader(bag) as r:
        assert [r.deserialize(m).data for m in r.messages()] == ["new"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failed_write_leaves_nothing_and_keeps_old_output(tmp_path, error):
    String = output_typestore().types["std_msgs/msg/String"]
    out = tmp_path / "out"
    with pytest.raises(error):
        with BagWriter(out) as w:
            w.write("/s", 1, String(data="x"), "std_msgs/msg/String")
            raise error("midway")
    assert list(tmp_path.iterdir()) == []
    with BagWriter(out) as w:
        w.write("/s", 1, String(data="first"), "std_msgs/msg/String")
    before = tree_hash(out)
    with pytest.raises(error):
        with BagWriter(out, force=True) as w:
            w.write("/s", 1, String(data="second"), "std_msgs/msg/String")
            raise error("midway")
    assert tree_hash(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("step", ["mkdir", "parents", "open"])
def test_interrupt_while_opening_leaves_nothing(tmp_path, monkeypatch, step):
    # SIGTERM/Ctrl-C between making the temporary folder and the end of __enter__: __exit__ never runs there
    # (CI caught a replay terminated just after the folder appeared, leaving .out.partial-* behind)
    import rgbt_seg_ros.io.bag as bag_module

    real_mkdir = Path.mkdir
    if step == "mkdir":
        def mkdir(self, *args, **kwargs):  # the interrupt lands right after the folder exists
            real_mkdir(self, *args, **kwargs)
            if ".partial-" in self.name:
                raise KeyboardInterrupt
        monkeypatch.setattr(Path, "mkdir", mkdir)
    elif step == "parents":
        def mkdir(self, *args, **kwargs):  # "new" made, then the interrupt, before "new/deeper" exists
            if self.name == "deeper":
                if not self.parent.exists():
                    return real_mkdir(self, *args, **kwargs)  # (the call that makes "new" first)
                raise KeyboardInterrupt
            return real_mkdir(self, *args, **kwargs)
        monkeypatch.setattr(Path, "mkdir", mkdir)
    else:
        def open_(self):
            raise KeyboardInterrupt
        monkeypatch.setattr(bag_module.Writer, "open", open_)
    with pytest.raises(KeyboardInterrupt):
        with BagWriter(tmp_path / "new" / "deeper" / "out"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_interrupted_final_rename_puts_the_old_bag_back(tmp_path, monkeypatch):
    import rgbt_seg_ros.io.bag as bag_module

    String = output_typestore().types["std_msgs/msg/String"]
    out = tmp_path / "out"
    with BagWriter(out) as w:
        w.write("/s", 1, String(data="first"), "std_msgs/msg/String")
    before = tree_hash(out)
    real, moved_aside = os.replace, []

    def replace(src, dst):  # Ctrl-C after the old bag moved aside, as the new one is to move in
        if Path(src) == out.absolute():
            moved_aside.append(dst)
        elif Path(dst) == out.absolute() and not str(src).endswith(".old"):
            raise KeyboardInterrupt  # (putting the old bag back is allowed)
        real(src, dst)

    monkeypatch.setattr(bag_module.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with BagWriter(out, force=True) as w:
            w.write("/s", 1, String(data="second"), "std_msgs/msg/String")
    assert moved_aside and tree_hash(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_errors_are_one_line_and_created_folders_go(tmp_path, monkeypatch):
    String = output_typestore().types["std_msgs/msg/String"]
    out = tmp_path / "new1" / "new2" / "out"
    with pytest.raises(RgbtSegError, match=r"output .*out: cannot write /s \(\[Errno 28\] No space left on device"):
        with BagWriter(out) as w:
            def full(*_):
                raise OSError(28, "No space left on device")
            monkeypatch.setattr(w._writer, "write", full)
            w.write("/s", 1, String(data="x"), "std_msgs/msg/String")
    assert list(tmp_path.iterdir()) == []  # nor new1/new2, made for the output
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")  # --out . (an empty folder)
    with BagWriter(Path("."), force=True) as w:
        w.write("/s", 1, String(data="x"), "std_msgs/msg/String")
    assert (tmp_path / "here" / "metadata.yaml").is_file()


def test_a_custom_type_without_a_stored_definition_is_named(tmp_path):
    import sqlite3

    from rosbags.rosbag2 import StoragePlugin, Writer

    store = get_typestore(Stores.ROS2_HUMBLE)
    store.register(get_types_from_msg("int32 x", "my_pkg/msg/Foo"))
    path = tmp_path / "humble_style"
    with Writer(path, version=8, storage_plugin=StoragePlugin.SQLITE3) as w:
        conn = w.add_connection("/foo", "my_pkg/msg/Foo", typestore=store)
        w.write(conn, 1, store.serialize_cdr(store.types["my_pkg/msg/Foo"](x=3), "my_pkg/msg/Foo"))
    db = next(path.glob("*.db3"))
    with sqlite3.connect(db) as con:  # as rosbag2 before Iron wrote them: no definitions
        con.execute("DELETE FROM message_definitions")
    with BagReader(path) as bag:
        with pytest.raises(RgbtSegError, match="topic /foo: type my_pkg/msg/Foo is not a standard ROS 2 type"):
            bag.ros2_definition(bag.reader.connections[0])


def test_qos_profiles_survive_the_copy(tmp_path):
    from rosbags.interfaces import QosDurability
    from rosbags.rosbag1 import Writer as W1

    from rgbt_seg_ros.io.bag import LATCHED_QOS

    store = get_typestore(Stores.ROS1_NOETIC)
    src = tmp_path / "latched.bag"
    with W1(src) as w:
        latched = w.add_connection("/tf_static", "std_msgs/msg/String", typestore=store, latching=1)
        plain = w.add_connection("/chatter", "std_msgs/msg/String", typestore=store)
        for conn in (latched, plain):
            w.write(conn, 5, store.serialize_ros1(store.types["std_msgs/msg/String"](data="x"), "std_msgs/msg/String"))
    mid, out = tmp_path / "mid", tmp_path / "out"
    for a, b in ((src, mid), (mid, out)):  # ROS 1 -> rosbag2 -> rosbag2
        with BagReader(a) as bag, BagWriter(b, storage="sqlite3") as w:
            for conn in bag.reader.connections:
                w.add_connection(conn.topic, conn.msgtype, *bag.ros2_definition(conn), qos=bag.qos(conn))
            for m in bag.messages():
                w.write_raw(m.topic, m.log_time, bag.to_cdr(m), m.msgtype)
    with BagReader(out) as bag:
        qos = {c.topic: bag.qos(c) for c in bag.reader.connections}
    assert qos["/chatter"] == []
    assert len(qos["/tf_static"]) == 1 and qos["/tf_static"][0].durability == QosDurability.TRANSIENT_LOCAL
    assert qos["/tf_static"][0] == LATCHED_QOS


def test_bare_mcap_file_reads_like_its_folder(tmp_path):
    """A lone .mcap (Foxglove recording, a file copied without metadata.yaml) opens as it is; a storage file
    inside a rosbag2 folder opens the whole folder."""
    _need(FIXTURE)
    folder = FIXTURE / "test_bag_mcap"
    storage_file = next(folder.glob("*.mcap"))
    bare = tmp_path / "lone.mcap"
    shutil.copyfile(storage_file, bare)

    def summary(path):
        with BagReader(path) as bag:
            return {t: (c.msgtype, c.count) for t, c in bag.topics.items()}, [
                (m.topic, m.log_time, bytes(m.raw)) for m in bag.messages()]

    expected = summary(folder)
    assert summary(bare) == expected
    assert summary(storage_file) == expected
