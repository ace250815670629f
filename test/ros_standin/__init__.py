"""STAND-IN — NOT ROS. A small stand-in for exactly the rclpy / message_filters API surface that
``rgbt_seg_ros/ros/node.py`` uses, so the node's wiring can be tested on machines without ROS 2.

This is the project's one allowed exception to "no mocks". It is installed into ``sys.modules`` by
``install(monkeypatch)`` for the duration of one test and removed afterwards. What is real here:
the message field layouts, which come from rosbags' copies of the ROS 2 Humble definitions (and,
for rgbt_seg_ros/msg/SegmentationInfo, from the package's own ``msg/*.msg``), with rclpy-like type
checks on assignment. What is simplified: no DDS, no executor threads (tests deliver messages and
fire timers by hand), a plain approximate-time pairing rule in place of message_filters' own.
"""
from __future__ import annotations

import array
import enum
import inspect
import sys
import threading
import time
import types
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.base import Nodetype

MSG_DIR = Path(__file__).resolve().parents[2] / "msg"

# ----------------------------------------------------------------------------------------- messages
_INTS = {"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "char"}
_FLOATS = {"float32", "float64"}


class _Registry:
    def __init__(self):
        self.store = get_typestore(Stores.ROS2_HUMBLE)
        own = {}
        for path in sorted(MSG_DIR.glob("*.msg")):
            own.update(get_types_from_msg(path.read_text(), f"rgbt_seg_ros/msg/{path.stem}"))
        self.store.register(own)
        self.classes: dict[str, type] = {}

    def cls(self, name: str) -> type:
        if name not in self.classes:
            self.classes[name] = _make_class(self, name)
        return self.classes[name]


def _default(reg: _Registry, desc):
    kind, arg = desc
    if kind == Nodetype.BASE:
        t = arg[0]
        return "" if t == "string" else False if t == "bool" else b"\x00" if t == "byte" else \
            0.0 if t in _FLOATS else 0
    if kind == Nodetype.NAME:
        return reg.cls(arg)()
    if kind == Nodetype.ARRAY:
        return [_default(reg, arg[0]) for _ in range(arg[1])]
    return []  # SEQUENCE


def _check(name: str, desc, value):
    """rclpy-like assignment checks: wrong types fail loudly, as the generated setters do."""
    kind, arg = desc
    if kind == Nodetype.BASE:
        t = arg[0]
        ok = (isinstance(value, str) if t == "string" else isinstance(value, bool) if t == "bool"
              else isinstance(value, bytes) and len(value) == 1 if t == "byte"
              else isinstance(value, float) if t in _FLOATS  # rclpy's setters assert float: 1 is refused
              else isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise AssertionError(f"stand-in message field {name!r} ({t}) cannot take {value!r}")
    elif kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
        inner = arg[0]
        if isinstance(value, array.array):
            return
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise AssertionError(f"stand-in message field {name!r} needs a sequence, got {type(value).__name__}")
        if kind == Nodetype.ARRAY and len(value) != arg[1]:
            raise AssertionError(f"stand-in message field {name!r} needs {arg[1]} items, got {len(value)}")
        for v in value:
            _check(name, inner, v)
    elif kind == Nodetype.NAME:
        if type(value).__name__ != arg.rsplit("/", 1)[-1]:
            raise AssertionError(f"stand-in message field {name!r} needs {arg}, got {type(value).__name__}")


def _make_class(reg: _Registry, name: str) -> type:
    consts, fields = reg.store.fielddefs[name]
    layout = dict(fields)

    def __init__(self, **kwargs):
        for fname, desc in layout.items():
            setattr(self, fname, kwargs.pop(fname) if fname in kwargs else _default(reg, desc))
        if kwargs:
            raise TypeError(f"{name} has no field(s) {', '.join(kwargs)}")

    def __setattr__(self, key, value):
        if key not in layout:
            raise AttributeError(f"{name} has no field {key!r}")
        _check(key, layout[key], value)
        object.__setattr__(self, key, value)

    def __repr__(self):
        return f"{name}({', '.join(f'{k}=...' for k in layout)})"

    ns = {"__slots__": tuple(layout), "__init__": __init__, "__setattr__": __setattr__, "__repr__": __repr__,
          "_fields": tuple(layout), "_type": name}
    for cname, ctype, cvalue in consts:
        ns[cname] = bytes([cvalue]) if ctype == "byte" else cvalue
    return type(name.rsplit("/", 1)[-1], (), ns)


# ------------------------------------------------------------------------------------------ rclpy
class Time:
    def __init__(self, nanoseconds: int = 0, clock_type=None):
        self.nanoseconds = int(nanoseconds)

    def to_msg(self):
        return STATE.reg.cls("builtin_interfaces/msg/Time")(sec=self.nanoseconds // 10**9,
                                                            nanosec=self.nanoseconds % 10**9)


class Clock:
    def now(self) -> Time:
        return Time(time.time_ns() if STATE.clock_ns is None else STATE.clock_ns)


class Logger:
    def __init__(self, name: str):
        self.name = name

    def _log(self, level: str, message: str, throttle_duration_sec: float | None = None, **_):
        caller = inspect.stack()[2]
        key = (self.name, caller.filename, caller.lineno)
        now = time.monotonic()
        with STATE.lock:
            last = STATE.throttle.get(key)
            if throttle_duration_sec and last is not None and now - last < throttle_duration_sec:
                STATE.suppressed.append((level, message))
                return
            STATE.throttle[key] = now
            STATE.logs.append((level, message))

    def debug(self, m, **kw):
        self._log("DEBUG", m, **kw)

    def info(self, m, **kw):
        self._log("INFO", m, **kw)

    def warning(self, m, **kw):
        self._log("WARN", m, **kw)

    def error(self, m, **kw):
        self._log("ERROR", m, **kw)

    def fatal(self, m, **kw):
        self._log("FATAL", m, **kw)


class Parameter:
    """rclpy.parameter.Parameter(name, type_=None, value=None): the value is the third argument, by keyword."""

    class Type(enum.IntEnum):
        NOT_SET, BOOL, INTEGER, DOUBLE, STRING, BYTE_ARRAY, BOOL_ARRAY, INTEGER_ARRAY, DOUBLE_ARRAY, STRING_ARRAY = \
            range(10)

    def __init__(self, name, type_=None, value=None):
        if type_ is not None and not isinstance(type_, Parameter.Type):
            raise TypeError(f"type must be an instance of {Parameter.Type!r}")  # what rclpy raises
        self.name, self.value = name, value


class ParameterError(Exception):
    pass


_PTYPE_OF = {bool: 1, int: 2, float: 3, str: 4}


def _ptype(value) -> int:
    if isinstance(value, list):
        return 8 if all(isinstance(v, float) for v in value) else 7 if all(isinstance(v, int) for v in value) else 9
    return _PTYPE_OF[type(value)]


class Publisher:
    def __init__(self, msg_type, topic, qos):
        self.msg_type, self.topic, self.qos = msg_type, topic, qos
        self.published: list = []
        self.subscribers = 0
        self._lock = threading.Lock()

    def publish(self, msg):
        if not isinstance(msg, self.msg_type):
            raise TypeError(f"{self.topic}: publishing {type(msg).__name__} on a {self.msg_type.__name__} publisher")
        with self._lock:
            self.published.append(msg)

    def get_subscription_count(self) -> int:
        return self.subscribers


class Subscription:
    def __init__(self, msg_type, topic, callback, qos, callback_group=None):
        self.msg_type, self.topic, self.callback, self.qos = msg_type, topic, callback, qos


class Timer:
    def __init__(self, period, callback):
        self.period, self.callback = period, callback

    def fire(self):
        self.callback()


class Node:
    def __init__(self, node_name: str, *, namespace: str = "", **_):
        self._name = node_name
        self._ns = namespace.rstrip("/")
        self._params: dict[str, Parameter] = {}
        self._descriptors: dict = {}
        self._param_callbacks: list = []
        self.publishers: dict[str, Publisher] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.timers: list[Timer] = []
        self._clock = Clock()
        self.destroyed = False
        STATE.nodes.append(self)

    def get_name(self):
        return self._name

    def resolve(self, topic: str) -> str:
        if topic.startswith("/"):
            return topic
        if topic.startswith("~/"):
            return f"{self._ns}/{self._name}/{topic[2:]}"
        return f"{self._ns}/{topic}"

    def declare_parameter(self, name, value=None, descriptor=None, ignore_override=False):
        if name in STATE.overrides and not ignore_override:
            override = STATE.overrides[name]
            if _ptype(override) != _ptype(value):  # rclpy: static typing by the default value
                raise ParameterError(f"Trying to set parameter '{name}' to '{override}' of type "
                                     f"'{type(override).__name__}', expecting type '{type(value).__name__}'")
            value = override
        if descriptor is not None:
            for rng in list(descriptor.integer_range) + list(descriptor.floating_point_range):
                if not rng.from_value <= value <= rng.to_value:
                    raise ParameterError(f"Parameter {name} with value {value} is not within the range "
                                         f"[{rng.from_value}, {rng.to_value}]")
        self._params[name] = Parameter(name, value=value)
        self._descriptors[name] = descriptor
        return self._params[name]

    def get_parameter(self, name):
        return self._params[name]

    def add_on_set_parameters_callback(self, cb):
        self._param_callbacks.append(cb)

    def set_parameters(self, params):
        results = []
        for p in params:
            d = self._descriptors.get(p.name)
            if d is not None and d.read_only:
                results.append(STATE.reg.cls("rcl_interfaces/msg/SetParametersResult")(
                    successful=False, reason=f"Trying to set a read-only parameter: {p.name}."))
                continue
            res = None
            for cb in self._param_callbacks:
                res = cb([p])
                if not res.successful:
                    break
            if res is None or res.successful:
                self._params[p.name] = p
            results.append(res)
        return results

    def create_publisher(self, msg_type, topic, qos_profile, **_):
        pub = Publisher(msg_type, self.resolve(topic), qos_profile)
        self.publishers[pub.topic] = pub
        return pub

    def create_subscription(self, msg_type, topic, callback, qos_profile, callback_group=None, **_):
        sub = Subscription(msg_type, self.resolve(topic), callback, qos_profile, callback_group)
        self.subscriptions[sub.topic] = sub
        return sub

    def create_timer(self, timer_period_sec, callback, callback_group=None, **_):
        t = Timer(timer_period_sec, callback)
        self.timers.append(t)
        return t

    def get_clock(self):
        return self._clock

    def get_logger(self):
        return Logger(self._name)

    def destroy_node(self):
        self.destroyed = True

    # test helpers (not rclpy API)
    def deliver(self, topic: str, msg) -> None:
        sub = self.subscriptions[self.resolve(topic)]
        if not isinstance(msg, sub.msg_type):
            raise TypeError(f"{topic}: {type(msg).__name__} delivered to a {sub.msg_type.__name__} subscription")
        sub.callback(msg)


class QoSProfile:
    def __init__(self, *, depth=10, reliability=None, history=None, durability=None, **_):
        self.depth, self.reliability, self.history, self.durability = depth, reliability, history, durability


class ReliabilityPolicy:
    BEST_EFFORT, RELIABLE = "best_effort", "reliable"


class HistoryPolicy:
    KEEP_LAST, KEEP_ALL = "keep_last", "keep_all"


class DurabilityPolicy:
    VOLATILE, TRANSIENT_LOCAL = "volatile", "transient_local"


class MultiThreadedExecutor:
    def __init__(self, num_threads=None, **_):
        self.nodes = []

    def add_node(self, node):
        self.nodes.append(node)

    def spin(self):
        if STATE.spin_hook is not None:
            STATE.spin_hook(self.nodes)


class ExternalShutdownException(Exception):
    pass


class _CallbackGroup:
    pass


# ---------------------------------------------------------------------------------- message_filters
class SimpleFilter:
    def __init__(self):
        self.callbacks = []

    def registerCallback(self, cb, *args):
        self.callbacks.append((cb, args))
        return len(self.callbacks) - 1

    def signalMessage(self, *msgs):
        for cb, args in self.callbacks:
            cb(*(msgs + args))


class MFSubscriber(SimpleFilter):
    def __init__(self, node, msg_type, topic, **kwargs):
        super().__init__()
        kwargs.setdefault("qos_profile", 10)
        self.node, self.topic = node, topic
        self.sub = node.create_subscription(msg_type, topic, self.signalMessage, **kwargs)


def _stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


class ApproximateTimeSynchronizer(SimpleFilter):
    """Stand-in pairing rule: the newest message is matched with the closest-stamped queued
    message of the other input within ``slop``; matched and older messages leave the queues."""

    def __init__(self, fs, queue_size, slop, allow_headerless=False):
        super().__init__()
        if len(fs) != 2:
            raise NotImplementedError("stand-in synchronizer pairs two inputs")
        self.queue_size, self.slop_ns = int(queue_size), int(slop * 1e9)
        self.queues: list[list] = [[], []]
        self.lock = threading.Lock()
        for i, f in enumerate(fs):
            f.registerCallback(self.add, i)

    def add(self, msg, index):
        with self.lock:  # held during the user callback, as in message_filters
            q, other = self.queues[index], self.queues[1 - index]
            q.append(msg)
            del q[:-self.queue_size]
            t = _stamp_ns(msg)
            best = min(other, key=lambda m: abs(_stamp_ns(m) - t), default=None)
            if best is None or abs(_stamp_ns(best) - t) > self.slop_ns:
                return
            k = other.index(best)
            del other[:k + 1]
            q.clear()
            pair = (msg, best) if index == 0 else (best, msg)
            self.signalMessage(*pair)


# ------------------------------------------------------------------------------------- installation
class _State:
    def __init__(self):
        self.reg = _Registry()
        self.reset()

    def reset(self):
        self.lock = threading.Lock()
        self.overrides: dict = {}
        self.logs: list = []
        self.suppressed: list = []
        self.throttle: dict = {}
        self.nodes: list = []
        self.clock_ns: int | None = None
        self.spin_hook = None
        self.initialised = False


STATE = _State()


def _module(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__doc__ = "STAND-IN for tests, not the real package"
    m.__dict__.update(attrs)
    return m


def _msg_module(pkg: str, *names: str) -> types.ModuleType:
    return _module(f"{pkg}.msg", **{n: STATE.reg.cls(f"{pkg}/msg/{n}") for n in names})


def build_modules() -> dict[str, types.ModuleType]:
    def init(args=None, **_):
        STATE.initialised = True

    def try_shutdown(**_):
        STATE.initialised = False

    logging_mod = _module("rclpy.logging", get_logger=Logger)
    rclpy = _module("rclpy", init=init, shutdown=try_shutdown, try_shutdown=try_shutdown,
                    ok=lambda **_: STATE.initialised, logging=logging_mod, __path__=[])
    sensor_profile = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT,
                                history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE)
    rcl_msg = _msg_module("rcl_interfaces", "ParameterDescriptor", "IntegerRange", "FloatingPointRange",
                          "SetParametersResult", "ParameterType")
    mods = {
        "rclpy": rclpy,
        "rclpy.logging": logging_mod,
        "rclpy.node": _module("rclpy.node", Node=Node),
        "rclpy.time": _module("rclpy.time", Time=Time),
        "rclpy.parameter": _module("rclpy.parameter", Parameter=Parameter),
        "rclpy.qos": _module("rclpy.qos", QoSProfile=QoSProfile, ReliabilityPolicy=ReliabilityPolicy,
                             HistoryPolicy=HistoryPolicy, DurabilityPolicy=DurabilityPolicy,
                             qos_profile_sensor_data=sensor_profile),
        "rclpy.executors": _module("rclpy.executors", MultiThreadedExecutor=MultiThreadedExecutor,
                                   ExternalShutdownException=ExternalShutdownException),
        "rclpy.callback_groups": _module("rclpy.callback_groups", ReentrantCallbackGroup=_CallbackGroup,
                                         MutuallyExclusiveCallbackGroup=_CallbackGroup),
        "rcl_interfaces": _module("rcl_interfaces", __path__=[]),
        "rcl_interfaces.msg": rcl_msg,
        "message_filters": _module("message_filters", SimpleFilter=SimpleFilter, Subscriber=MFSubscriber,
                                   ApproximateTimeSynchronizer=ApproximateTimeSynchronizer),
        "sensor_msgs": _module("sensor_msgs", __path__=[]),
        "sensor_msgs.msg": _msg_module("sensor_msgs", "Image", "CameraInfo", "CompressedImage"),
        "std_msgs": _module("std_msgs", __path__=[]),
        "std_msgs.msg": _msg_module("std_msgs", "Header", "ColorRGBA"),
        "builtin_interfaces": _module("builtin_interfaces", __path__=[]),
        "builtin_interfaces.msg": _msg_module("builtin_interfaces", "Time"),
        "diagnostic_msgs": _module("diagnostic_msgs", __path__=[]),
        "diagnostic_msgs.msg": _msg_module("diagnostic_msgs", "DiagnosticArray", "DiagnosticStatus", "KeyValue"),
        "rgbt_seg_ros.msg": _msg_module("rgbt_seg_ros", *[p.stem for p in sorted(MSG_DIR.glob("*.msg"))]),
    }
    rclpy.node, rclpy.qos, rclpy.executors = mods["rclpy.node"], mods["rclpy.qos"], mods["rclpy.executors"]
    return mods


def install(monkeypatch):
    """Put the stand-in modules into sys.modules for one test; returns the shared STATE."""
    STATE.reset()
    for name, mod in build_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.delitem(sys.modules, "rgbt_seg_ros.ros.node", raising=False)
    return STATE
