"""rosbag2 (sqlite3, mcap) and ROS 1 bag reading, and atomic rosbag2 writing, through ``rosbags``.

* ``BagReader``: topics with types and counts, time-ordered raw messages, deserialisation, and the CDR
  bytes + ROS 2 definition to copy each input message into a rosbag2 (verbatim for rosbag2 inputs,
  converted byte-level by rosbags for ROS 1 inputs).
* ``BagWriter``: writes into a temporary sibling folder and renames it into place only when the bag
  is complete; on any error or Ctrl-C the temporary folder is removed. It never overwrites without
  ``force`` and refuses to write over the input.
"""
from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

from rosbags.highlevel import AnyReader
from rosbags.interfaces import (Connection, ConnectionExtRosbag1, ConnectionExtRosbag2, MessageDefinitionFormat,
                                Nodetype, Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime)
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from rgbt_seg_ros.errors import RgbtSegError, first_line

# Definitions used for rosbag2 files that carry none (written before Iron) and for output types.
DEFAULT_ROS2_STORE = Stores.ROS2_HUMBLE
# rosbag2 metadata version 8 (Jazzy); rosbags 0.11 writes 8 or 9, and 8 is read by more ros2 bag releases.
ROSBAG2_VERSION = 8
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
SEGMENTATION_INFO = "rgbt_seg_ros/msg/SegmentationInfo"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"


_INFINITE = QosTime(2147483647, 4294967295)  # rmw's "infinite" duration, as rosbag2 records it
# A latched ROS 1 topic (e.g. /tf_static) replays as transient-local, so late subscribers still get it.
LATCHED_QOS = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, _INFINITE,
                  _INFINITE, QosLiveliness.AUTOMATIC, _INFINITE, False)


@lru_cache(maxsize=1)
def _segmentation_info_types() -> dict:
    path = Path(__file__).resolve().parents[1] / "msg" / "SegmentationInfo.msg"
    return get_types_from_msg(path.read_text(encoding="utf-8"), SEGMENTATION_INFO)


def output_typestore() -> Typestore:
    """ROS 2 standard types plus the package's own ``rgbt_seg_ros/msg/SegmentationInfo``."""
    store = get_typestore(DEFAULT_ROS2_STORE)
    store.register(_segmentation_info_types())
    return store


def _same_wire_format(src: Typestore, dst: Typestore, src_type: str, dst_type: str) -> bool:
    """True when both definitions serialise identically (field names may differ, e.g. ROS 1 ``K`` vs ``k``).

    ``std_msgs/msg/Header`` counts as equal: rosbags' ROS 1 → CDR conversion drops ``seq`` itself.
    """
    if src_type == dst_type == "std_msgs/msg/Header":
        return True
    if src_type not in src.fielddefs or dst_type not in dst.fielddefs:
        return False
    a, b = src.fielddefs[src_type][1], dst.fielddefs[dst_type][1]
    if len(a) != len(b):
        return False
    for (_, fa), (_, fb) in zip(a, b):
        if fa[0] != fb[0]:
            return False
        if fa[0] in (Nodetype.ARRAY, Nodetype.SEQUENCE):
            (ea, na), (eb, nb) = fa[1], fb[1]
            if na != nb:
                return False
            fa, fb = ea, eb
            if fa[0] != fb[0]:
                return False
        if fa[0] == Nodetype.NAME:
            if not _same_wire_format(src, dst, fa[1], fb[1]):
                return False
        elif fa != fb:
            return False
    return True


@dataclass
class TopicSummary:
    name: str
    msgtype: str
    count: int


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    log_time: int  # ns, the bag's receive time
    raw: bytes | memoryview
    connection: Connection


class BagReader:
    """A rosbag2 folder (sqlite3 or mcap) or a ROS 1 ``.bag`` file, opened as a context manager."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._reader: AnyReader | None = None
        self._out_store: Typestore | None = None
        self._converters: dict[str, Typestore] = {}  # ROS 1 msgtype -> ROS 2 store

    # -- opening -------------------------------------------------------------------------------------
    def __enter__(self) -> "BagReader":
        if not self.path.exists():
            raise RgbtSegError(f"bag {self.path} does not exist")
        bag_path = self.path
        if self.path.is_file() and self.path.suffix in (".mcap", ".db3") \
                and (self.path.parent / "metadata.yaml").is_file():
            bag_path = self.path.parent  # one storage file of a rosbag2 folder: read the whole bag
        # otherwise a bare .mcap / .db3 without metadata.yaml (Foxglove, copied files) is read as it is
        try:
            reader = AnyReader([bag_path], default_typestore=get_typestore(DEFAULT_ROS2_STORE))
            reader.open()
        except FileNotFoundError as exc:
            raise RgbtSegError(f"bag {self.path}: not a rosbag2 folder or ROS 1 bag ({first_line(exc)})") from None
        except Exception as exc:  # rosbags raises several reader/typesys errors for damaged files
            raise RgbtSegError(f"bag {self.path}: corrupt or unreadable ({first_line(exc)})") from None
        self._reader = reader
        if reader.message_count == 0:
            reader.close()
            self._reader = None
            raise RgbtSegError(f"bag {self.path} is empty: it holds no messages")
        return self

    def __exit__(self, *exc) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def reader(self) -> AnyReader:
        if self._reader is None:
            raise RgbtSegError(f"bag {self.path} is not open")
        return self._reader

    @property
    def is_ros1(self) -> bool:
        return not self.reader.is2

    # -- topics --------------------------------------------------------------------------------------
    @property
    def topics(self) -> dict[str, TopicSummary]:
        return {name: TopicSummary(name, info.msgtype or "(mixed types)", info.msgcount)
                for name, info in self.reader.topics.items()}

    def describe(self) -> str:
        return ", ".join(f"{t.name} [{t.msgtype}, {t.count}]" for t in self.topics.values())

    def require_topic(self, topic: str, msgtypes: Iterable[str] = (), role: str = "topic") -> str:
        """The topic's message type; a one-line error naming the topic and listing the bag's topics otherwise."""
        topics = self.topics
        if topic not in topics:
            raise RgbtSegError(f"{role} {topic}: not in bag {self.path}; the bag has {self.describe()}")
        msgtypes = tuple(msgtypes)
        if msgtypes and topics[topic].msgtype not in msgtypes:
            raise RgbtSegError(f"{role} {topic}: has type {topics[topic].msgtype}, expected "
                               f"{' or '.join(msgtypes)}")
        if topics[topic].count == 0:
            raise RgbtSegError(f"{role} {topic}: has no messages in bag {self.path}")
        return topics[topic].msgtype

    # -- messages ------------------------------------------------------------------------------------
    def messages(self, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
        """Raw messages in log-time order; a damaged file ends in a one-line error, not a traceback."""
        reader = self.reader
        conns = reader.connections if topics is None else [c for c in reader.connections if c.topic in set(topics)]
        it = reader.messages(conns)
        while True:
            try:
                conn, log_time, raw = next(it)
            except StopIteration:
                return
            except Exception as exc:  # storage-level damage discovered mid-file
                raise RgbtSegError(f"bag {self.path}: corrupt or truncated ({first_line(exc)})") from None
            yield BagMessage(conn.topic, conn.msgtype, log_time, raw, conn)

    def deserialize(self, msg: BagMessage) -> Any:
        try:
            return self.reader.deserialize(msg.raw, msg.msgtype)
        except Exception as exc:
            raise RgbtSegError(f"topic {msg.topic}: cannot decode {msg.msgtype} message "
                               f"at t={msg.log_time} ns ({first_line(exc)})") from None

    def deserialize_ros2(self, msg: BagMessage) -> Any:
        """Like ``deserialize`` but always with ROS 2 field names (ROS 1 ``CameraInfo.K`` arrives as ``k``)."""
        if self.reader.is2:
            return self.deserialize(msg)
        try:
            return self._ros2_store_for(msg.msgtype).deserialize_cdr(self.to_cdr(msg), msg.msgtype)
        except RgbtSegError:
            raise
        except Exception as exc:
            raise RgbtSegError(f"topic {msg.topic}: cannot decode {msg.msgtype} message "
                               f"at t={msg.log_time} ns ({first_line(exc)})") from None

    # -- copying into a rosbag2 ----------------------------------------------------------------------
    def ros2_definition(self, conn: Connection) -> tuple[str, str]:
        """(msgdef, RIHS01 hash) to declare ``conn``'s type in a rosbag2 output."""
        reader = self.reader
        if reader.is2 and conn.msgdef.format != MessageDefinitionFormat.NONE and conn.msgdef.data and conn.digest:
            return conn.msgdef.data, conn.digest
        try:
            store = reader.typestore if reader.is2 else self._ros2_store_for(conn.msgtype)
            return store.generate_msgdef(conn.msgtype, ros_version=2)[0], store.hash_rihs01(conn.msgtype)
        except Exception as exc:  # a custom type in a bag that stores no definitions (rosbag2 before Iron)
            raise RgbtSegError(f"topic {conn.topic}: type {conn.msgtype} is not a standard ROS 2 type and bag "
                               f"{self.path} stores no definition for it, so it cannot be copied to the output "
                               f"({first_line(exc)})") from None

    def qos(self, conn: Connection) -> list[Qos]:
        """The QoS profiles ``ros2 bag play`` should offer for ``conn`` (the recorded ones; latched ROS 1
        topics as transient-local)."""
        if isinstance(conn.ext, ConnectionExtRosbag2):
            return list(conn.ext.offered_qos_profiles)
        if isinstance(conn.ext, ConnectionExtRosbag1) and conn.ext.latching:
            return [LATCHED_QOS]
        return []

    def _ros2_store_for(self, msgtype: str) -> Typestore:
        """ROS 2 store that serialises a ROS 1 bag's ``msgtype`` (cached): the standard one when the wire
        formats agree, else the bag's own definitions with the ROS 2 Header."""
        if msgtype in self._converters:
            return self._converters[msgtype]
        if self._out_store is None:
            self._out_store = output_typestore()
        store = self._out_store
        if not (msgtype in store.fielddefs and _same_wire_format(self.reader.typestore, store, msgtype, msgtype)):
            standard = store
            store = get_typestore(Stores.EMPTY)
            typs = dict(self.reader.typestore.fielddefs)
            typs["std_msgs/msg/Header"] = standard.fielddefs["std_msgs/msg/Header"]
            typs.setdefault("builtin_interfaces/msg/Time", standard.fielddefs["builtin_interfaces/msg/Time"])
            store.register(typs)
        self._converters[msgtype] = store
        return store

    def to_cdr(self, msg: BagMessage) -> bytes | memoryview:
        """The message's bytes as CDR: the stored bytes for rosbag2, rosbags' byte-level conversion for ROS 1."""
        if self.reader.is2:
            return msg.raw
        try:
            return self._ros2_store_for(msg.msgtype).ros1_to_cdr(msg.raw, msg.msgtype)
        except Exception as exc:
            raise RgbtSegError(f"topic {msg.topic}: cannot convert ROS 1 {msg.msgtype} to CDR "
                               f"({first_line(exc)})") from None


def _overlaps(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def folders_to_make(folder: Path) -> list[Path]:
    """The levels of ``folder`` that do not exist yet, deepest first: what ``mkdir(parents=True)`` will make,
    recorded before it runs so that a failure or an interrupt can take them away again."""
    folder = Path(folder)
    return [p for p in (folder, *folder.parents) if not p.exists()]


def remove_made_folders(made: list[Path]) -> None:
    """Remove the folders of ``made`` (from ``folders_to_make``), deepest first, while they are empty: a level
    not made yet (interrupted while making the ones above it) is skipped, one holding something stops it."""
    for folder in made:
        try:
            folder.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            break


class BagWriter:
    """Atomic rosbag2 writer (mcap by default, or sqlite3).

    ``with BagWriter(out, storage="mcap", force=False, protect=[in_bag]) as w: ...`` — the bag appears
    at ``out`` only when the block finishes without an exception.
    """

    def __init__(self, path: str | Path, *, storage: str = "mcap", force: bool = False,
                 protect: Iterable[str | Path] = ()):
        if storage not in STORAGES:
            raise RgbtSegError(f"storage {storage!r}: choose one of {', '.join(STORAGES)}")
        self.path = Path(path).absolute()  # "." has no name to build the temporary sibling from
        self.storage = storage
        self.force = force
        self.protect = [Path(p) for p in protect]
        self.typestore = output_typestore()
        self._writer: Writer | None = None
        self._tmpdir: Path | None = None
        self._conns: dict[tuple[str, str], Connection] = {}
        self._made: list[Path] = []  # the output's parent folders this writer makes, removed on failure
        self.counts: dict[str, int] = {}

    def __enter__(self) -> "BagWriter":
        for p in self.protect:
            if _overlaps(self.path, p):
                raise RgbtSegError(f"output {self.path}: overlaps input {p}; choose another output path")
        check_output(self.path, self.force)
        parent = self.path.parent
        self._made = folders_to_make(parent)
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._make_tmpdir(parent)
            # The bag keeps its final name inside the temporary folder (rosbags names the storage file after it).
            self._writer = Writer(self._tmpdir / self.path.name, version=ROSBAG2_VERSION,
                                  storage_plugin=STORAGES[self.storage])
            self._writer.open()
            return self
        except BaseException as exc:
            # __exit__ does not run when __enter__ raises, so Ctrl-C / SIGTERM here must clean up too
            self._cleanup(failed=True)
            if not isinstance(exc, Exception):
                raise
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
            raise RgbtSegError(f"output {self.path}: cannot create ({detail})") from None

    def _make_tmpdir(self, parent: Path) -> None:
        """A sibling folder on the same file system, so the final rename is atomic. Its name is recorded before the
        folder exists (unlike tempfile.mkdtemp), so an interrupt at any point leaves nothing unrecorded behind."""
        for _ in range(100):
            self._tmpdir = parent / f".{self.path.name}.partial-{secrets.token_hex(8)}"
            try:
                self._tmpdir.mkdir(mode=0o700)
                return
            except FileExistsError:
                self._tmpdir = None  # another writer's folder: never ours to remove
        raise FileExistsError(f"no free temporary name beside {self.path}")

    def add_connection(self, topic: str, msgtype: str, msgdef: str | None = None, rihs01: str | None = None,
                       qos: list[Qos] | None = None) -> Connection:
        """Declare (topic, type) once; standard and package types come from the output typestore."""
        key = (topic, msgtype)
        if key in self._conns:
            return self._conns[key]
        assert self._writer is not None, "BagWriter used outside its with-block"
        profiles = list(qos or [])
        if msgdef is not None and rihs01 is not None:
            conn = self._writer.add_connection(topic, msgtype, msgdef=msgdef, rihs01=rihs01,
                                               offered_qos_profiles=profiles)
        else:
            if msgtype not in self.typestore.fielddefs:
                raise RgbtSegError(f"topic {topic}: message type {msgtype} is unknown to the output typestore")
            conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore, offered_qos_profiles=profiles)
        self._conns[key] = conn
        self.counts.setdefault(topic, 0)
        return conn

    def write_raw(self, topic: str, log_time: int, data: bytes | memoryview, msgtype: str | None = None) -> None:
        """Write serialised CDR bytes; ``msgtype`` is needed only when a topic carries several types."""
        if msgtype is None:
            keys = [k for k in self._conns if k[0] == topic]
            if len(keys) != 1:
                raise RgbtSegError(f"topic {topic}: {'not declared' if not keys else 'has several types'}; "
                                   f"pass msgtype")
            msgtype = keys[0][1]
        try:
            self._writer.write(self._conns[(topic, msgtype)], int(log_time), data)
        except Exception as exc:  # a full disk, a vanished folder: OSError, sqlite3 or rosbags errors
            raise RgbtSegError(f"output {self.path}: cannot write {topic} ({first_line(exc)})") from None
        self.counts[topic] += 1

    def write(self, topic: str, log_time: int, msg: Any, msgtype: str) -> None:
        """Serialise ``msg`` (a class from ``self.typestore.types``) as CDR and write it."""
        self.add_connection(topic, msgtype)
        self.write_raw(topic, log_time, self.typestore.serialize_cdr(msg, msgtype), msgtype)

    def msg_class(self, msgtype: str) -> Any:
        return self.typestore.types[msgtype]

    def __exit__(self, exc_type, exc, tb) -> None:
        writer, self._writer = self._writer, None
        if exc_type is not None:
            if writer is not None:
                try:
                    writer.abort()
                except Exception:
                    pass  # the folder is removed below either way
            self._cleanup(failed=True)
            return
        old = None
        try:
            try:
                writer.close()
            except Exception as exc:
                raise RgbtSegError(f"output {self.path}: cannot finish the bag ({first_line(exc)})") from None
            built = self._tmpdir / self.path.name
            if self.path.exists():
                # --force: the old output moves aside first and comes back if the new one cannot take its place
                old = self._tmpdir / (self.path.name + ".old")
                os.replace(self.path, old)
            os.replace(built, self.path)
        except BaseException:
            if old is not None and old.exists() and not self.path.exists():
                os.replace(old, self.path)
            self._cleanup(failed=True)
            raise
        self._cleanup()

    def _cleanup(self, failed: bool = False) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        if failed:  # folders made for the output go too, if nothing else was put there meanwhile
            remove_made_folders(self._made)
        self._made = []


def check_output(path: Path, force: bool) -> None:
    """An existing output needs ``force``, and ``force`` replaces only a rosbag2 folder (it has metadata.yaml) or an
    empty folder, nothing else. ``BagWriter`` checks on entry; front doors call it early, before slow work."""
    path = Path(path)
    if not path.exists():
        return
    if not force:
        raise RgbtSegError(f"output {path} exists; pass --force to overwrite it")
    bag_or_empty = path.is_dir() and not path.is_symlink() and ((path / "metadata.yaml").is_file()
                                                              or not any(path.iterdir()))
    if not bag_or_empty:
        raise RgbtSegError(f"output {path} exists and is not a rosbag2 folder; --force replaces only a bag "
                           "(or an empty folder), so choose another output path")
