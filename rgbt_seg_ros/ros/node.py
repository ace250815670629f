"""The ``rgbt_seg`` node: RGB + thermal/depth in, segmentation images, info and diagnostics out.

Kept thin on purpose: parameters come from ``params``, the hand-over from ``slot``, health and
/diagnostics content from ``health``, message filling from ``messages``, and everything about images
(decode, registration, network, colours) from the ROS-free pipeline.

Threads: rclpy executor threads run the subscription callbacks (message_filters holds its lock
during the synchronizer callback, so that callback only drops the pair into a latest-only slot);
one worker thread runs the pipeline and publishes; a 1 Hz timer publishes /diagnostics.
"""
from __future__ import annotations

import sys
import threading
import time

import message_filters
import rclpy
import rclpy.logging
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import ColorRGBA

from rgbt_seg_ros.errors import RgbtSegError, first_line
from rgbt_seg_ros.ros import health, messages
from rgbt_seg_ros.ros.params import (PARAMS, SPECS, check_device, check_value, pipeline_config_dict,
                                    resolve_against_card, validate_params)
from rgbt_seg_ros.pipeline.timing import LatencyStats
from rgbt_seg_ros.ros.slot import LatestSlot

NODE_NAME = "rgbt_seg"
IMAGE_OUTPUTS = ("labels", "colour", "confidence", "overlay")
_PARAM_TYPES = {"string": ParameterType.PARAMETER_STRING, "integer": ParameterType.PARAMETER_INTEGER,
                "double": ParameterType.PARAMETER_DOUBLE, "bool": ParameterType.PARAMETER_BOOL,
                "double_array": ParameterType.PARAMETER_DOUBLE_ARRAY}
_THROTTLE_S = 5.0


def _descriptor(spec) -> ParameterDescriptor:
    d = ParameterDescriptor(name=spec.name, type=_PARAM_TYPES[spec.type], description=spec.description,
                            read_only=spec.read_only)
    if spec.choices:
        d.additional_constraints = "one of: " + ", ".join(spec.choices)
    elif spec.length:
        d.additional_constraints = f"exactly {spec.length} numbers"
    if spec.range is not None and spec.type == "integer":
        d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)]
    elif spec.range is not None and spec.type == "double":
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]),
                                                     to_value=float(spec.range[1]), step=0.0)]
    return d


def _fixed_input_hw(backend) -> tuple[int, int] | None:
    """(h, w) of an onnxruntime session whose rgb input has static spatial dims, else None."""
    session = getattr(backend, "session", None)
    if session is None:
        return None
    shape = session.get_inputs()[0].shape
    return (shape[2], shape[3]) if len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]) else None


class RgbtSegNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        values = {}
        for spec in PARAMS:
            try:  # rclpy rejects out-of-range or wrongly typed overrides: turn that into one line
                values[spec.name] = self.declare_parameter(spec.name, spec.default, _descriptor(spec)).value
            except Exception as exc:  # noqa: BLE001 - rclpy's parameter exceptions differ between distros
                raise RgbtSegError(f"parameter {spec.name}: {first_line(exc)}") from None
        self.cfg = validate_params(values)

        # Heavy imports after the parameters are known to be sane.
        from rgbt_seg_ros.inference import create_backend
        from rgbt_seg_ros.pipeline.config import PipelineConfig
        from rgbt_seg_ros.pipeline.pipeline import SegmentationPipeline

        check_device(self.cfg)
        try:
            self.backend = create_backend(self.cfg.model_file or None, self.cfg.backend, self.cfg.device,
                                          self.cfg.precision, compile_mode=self.cfg.compile_mode)
        except RgbtSegError as exc:
            text = str(exc)
            raise RgbtSegError(text if text.startswith("parameter ") else f"parameter model_file: {text}") from None
        self.card = self.backend.card
        size_multiple = int(getattr(getattr(self.backend, "network", None), "size_multiple", 32) or 1)
        resolve_against_card(self.cfg, self.card, size_multiple, _fixed_input_hw(self.backend))
        self.pipeline = SegmentationPipeline(self.backend, PipelineConfig.from_dict(pipeline_config_dict(self.cfg)))
        # the network's one-time costs (kernel choice, CUDA context, compilation) now, not on the first frames
        self._warmup_s = self.pipeline.warm_up()
        self.model_file = self.cfg.model_file or "(built-in)"
        self.modality = self.cfg.modality
        self.rgb_only_possible = bool(self.card.supports_rgb_only)

        self._slot = LatestSlot()
        self._lock = threading.Lock()
        self.counters = health.Counters()
        # newest RGB stamp handed to the worker (paired or RGB-only) and newest RGB stamp received: an RGB frame
        # run RGB-only while the aux stream was lost stays in the synchronizer and must not come out again
        self._handed_stamp: float | None = None
        self._rgb_stamp: float | None = None
        self.latency = LatencyStats(window=200)
        self.rgb_monitor = health.StreamMonitor("rgb")
        self.aux_monitor = health.StreamMonitor(self.modality)
        self.out_monitor = health.StreamMonitor("output")
        self._rgb_camera = None
        self._aux_camera = None
        self._last_error = ("", 0.0)
        self._started: float | None = None  # set by the first clock reading > 0 (sim time may start at 0)
        self._start_ref(self._now())

        best_effort = self.cfg.qos_reliability == "best_effort"
        if best_effort and self.cfg.qos_depth == qos_profile_sensor_data.depth:
            sensor_qos = qos_profile_sensor_data
        else:
            sensor_qos = QoSProfile(depth=self.cfg.qos_depth, history=HistoryPolicy.KEEP_LAST,
                                    reliability=ReliabilityPolicy.BEST_EFFORT if best_effort
                                    else ReliabilityPolicy.RELIABLE)
        inputs = ReentrantCallbackGroup()
        self._aux_topic = f"{self.modality}/image"
        self._rgb_sub = message_filters.Subscriber(self, Image, "rgb/image", qos_profile=sensor_qos,
                                                   callback_group=inputs)
        self._aux_sub = message_filters.Subscriber(self, Image, self._aux_topic, qos_profile=sensor_qos,
                                                   callback_group=inputs)
        self._sync = message_filters.ApproximateTimeSynchronizer([self._rgb_sub, self._aux_sub],
                                                                 self.cfg.queue_size, self.cfg.slop)
        self._sync.registerCallback(self._on_pair)
        # Every RGB image also arrives here: stream health, and the RGB-only path when aux is lost.
        self._rgb_sub.registerCallback(self._on_rgb)
        self._aux_sub.registerCallback(self._on_aux)
        # CameraInfos: latest seen, not synchronised (real drivers' info stamps rarely match the images').
        self.create_subscription(CameraInfo, "rgb/camera_info", self._on_rgb_info, sensor_qos, callback_group=inputs)
        self.create_subscription(CameraInfo, f"{self.modality}/camera_info", self._on_aux_info, sensor_qos,
                                 callback_group=inputs)

        out_qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        self.image_pubs = {name: self.create_publisher(Image, f"~/{name}", out_qos) for name in IMAGE_OUTPUTS
                           if name != "overlay" or self.cfg.overlay}
        from rgbt_seg_ros.msg import SegmentationInfo  # generated by rosidl from msg/SegmentationInfo.msg

        self._info_type = SegmentationInfo
        self.info_pub = self.create_publisher(SegmentationInfo, "~/info", out_qos)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.diag_timer = self.create_timer(1.0, self.publish_diagnostics,
                                            callback_group=MutuallyExclusiveCallbackGroup())
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._worker = threading.Thread(target=self._work, name="rgbt_seg_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"model {self.card.network}/{self.card.variant} ({self.model_file}, {self.backend.name}); "
            f"rgb/image + {self._aux_topic}; registration {self.cfg.registration}; "
            f"{self.modality} normalisation {self._normalisation_text()}; "
            f"RGB-only fallback {'available' if self.rgb_only_possible else 'not supported by this model'}; "
            f"network warm-up {self._warmup_s:.2f} s")
        if getattr(self.backend, "selection", None):
            self.get_logger().info(self.backend.selection)

    def _normalisation_text(self) -> str:
        n = self.pipeline.normalization  # card values under the parameters set: say which were used
        if self.modality == "depth":
            return f"{n.depth_range[0]:g}-{n.depth_range[1]:g} m"
        if n.thermal_agc == "fixed":
            return f"fixed {n.thermal_range[0]:g}-{n.thermal_range[1]:g} counts"
        return f"percentile {n.thermal_percentiles[0]:g}-{n.thermal_percentiles[1]:g}"

    # ---------------------------------------------------------------- callbacks (executor threads)
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _start_ref(self, now: float) -> float:
        # With use_sim_time the clock reads 0 until /clock arrives: start counting from the first real time.
        if self._started is None or (self._started == 0.0 and now > 0.0):
            self._started = now
        return self._started

    def _aux_lost(self, now: float) -> bool:
        return self.aux_monitor.stale(now, self.cfg.aux_timeout, self._start_ref(now))

    def _hand_over(self, rgb_msg, aux_msg) -> None:
        """Give a pair (``aux_msg`` None: RGB-only) to the worker, unless its RGB frame went before (each RGB
        frame is published at most once, and stamps never go backwards)."""
        stamp = messages.stamp_seconds(rgb_msg.header)
        with self._lock:
            if self._handed_stamp is not None and stamp <= self._handed_stamp:
                return
            self._handed_stamp = stamp
            if aux_msg is None:
                self.counters.pairs_rgb_only += 1
            else:
                self.counters.pairs_synced += 1
        if self._slot.put((rgb_msg, aux_msg, time.monotonic())):
            with self._lock:
                self.counters.pairs_dropped += 1

    def _on_pair(self, rgb_msg, aux_msg) -> None:
        # Runs under message_filters' lock: hand over and return, never infer here.
        self._hand_over(rgb_msg, aux_msg)

    def _on_rgb(self, msg) -> None:
        now = self._now()
        self.rgb_monitor.tick(now)
        stamp = messages.stamp_seconds(msg.header)
        with self._lock:
            if self._rgb_stamp is not None and stamp < self._rgb_stamp:
                self._handed_stamp = None  # the RGB clock went back (a looping bag): a new timeline
            self._rgb_stamp = stamp
        if self._aux_lost(now):
            if self.rgb_only_possible and self.cfg.allow_rgb_only:
                self._hand_over(msg, None)
            else:
                self.get_logger().error(
                    f"{self._aux_topic}: no image for {self.cfg.aux_timeout:.2f} s and model "
                    f"{self.card.network} cannot run RGB-only; not segmenting", throttle_duration_sec=_THROTTLE_S)

    def _on_aux(self, msg) -> None:
        self.aux_monitor.tick(self._now())

    # The pipeline turns CameraInfo messages into camera models and caches the warp per geometry.
    def _on_rgb_info(self, msg) -> None:
        self._rgb_camera = msg

    def _on_aux_info(self, msg) -> None:
        self._aux_camera = msg

    def _on_set_parameters(self, params) -> SetParametersResult:
        for p in params:
            spec = SPECS.get(p.name)
            if spec is None or spec.read_only:
                continue  # rclpy itself refuses read-only ones; use_sim_time and friends are not ours
            try:
                value = check_value(spec, p.value)
            except RgbtSegError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
            setattr(self.cfg, p.name, value)
            if p.name == "overlay_alpha":
                self.pipeline.config.overlay_alpha = value
        return SetParametersResult(successful=True)

    # ---------------------------------------------------------------- worker thread
    def _bad(self, text: str) -> None:
        with self._lock:
            self.counters.bad_messages += 1
            self._last_error = (text, self._now())
        self.get_logger().warning(f"skipped: {text}", throttle_duration_sec=_THROTTLE_S)

    def _work(self) -> None:
        while not self._slot.closed:
            item = self._slot.take(timeout=0.2)
            if item is None:
                continue
            try:
                self.process_item(*item)
            except RgbtSegError as exc:
                self._bad(str(exc))
            except Exception as exc:  # noqa: BLE001 - a bad frame must never kill the worker
                self._bad(f"{type(exc).__name__}: {exc}")

    def wanted_outputs(self) -> set[str]:
        """Outputs somebody subscribes to; the others are not computed."""
        return {name for name, pub in self.image_pubs.items() if pub.get_subscription_count() > 0}

    def process_item(self, rgb_msg, aux_msg, t_received: float) -> bool:
        """Run the pipeline on one pair (aux_msg None = RGB-only) and publish. False if nothing was wanted."""
        from rgbt_seg_ros.io.image import image_to_numpy, to_rgb8

        wanted = self.wanted_outputs()
        want_info = self.info_pub.get_subscription_count() > 0
        if not wanted and not want_info:
            return False
        rgb = to_rgb8(image_to_numpy(rgb_msg, topic="rgb/image"), rgb_msg.encoding, topic="rgb/image")
        aux = aux_encoding = None
        if aux_msg is not None:
            aux = image_to_numpy(aux_msg, topic=self._aux_topic)
            aux_encoding = aux_msg.encoding
        needs_cameras = self.pipeline.config.registration.uses_cameras and aux_msg is not None
        if needs_cameras and (self._rgb_camera is None or self._aux_camera is None):
            missing = "rgb/camera_info" if self._rgb_camera is None else f"{self.modality}/camera_info"
            raise RgbtSegError(f"{missing}: no CameraInfo received yet; registration={self.cfg.registration} needs it")
        result = self.pipeline.process(rgb, aux, aux_encoding, rgb_camera=self._rgb_camera,
                                       aux_camera=self._aux_camera, outputs=set(wanted))
        header = rgb_msg.header
        for name in wanted:
            array = getattr(result, name)
            if array is not None:
                self.image_pubs[name].publish(messages.fill_image(Image(), array, header))
        skew = 0.0 if aux_msg is None else messages.stamp_seconds(aux_msg.header) - messages.stamp_seconds(header)
        total_ms = (time.monotonic() - t_received) * 1e3
        timings = dict(result.timings)
        with self._lock:
            self.counters.pairs_processed += 1
            if aux_msg is not None:
                self.counters.last_skew = skew
                self.counters.skews.append(skew)
            counts = (self.counters.pairs_processed, self.counters.pairs_dropped,
                      max(0, self.rgb_monitor.count - self.counters.pairs_synced - self.counters.pairs_rgb_only))
        self.latency.add({**timings, "receive_to_publish": total_ms})
        self.out_monitor.tick(self._now())
        if want_info:
            info = messages.fill_info(
                self._info_type(), header=header, card=self.card, model_file=self.model_file,
                modality=self.modality, aux_used=aux_msg is not None, pair_skew=skew, latency_total_ms=total_ms,
                timings=timings, pairs_processed=counts[0], pairs_dropped=counts[1], frames_unpaired=counts[2],
                colour_factory=ColorRGBA)
            self.info_pub.publish(info)
        return True

    # ---------------------------------------------------------------- diagnostics (timer)
    def diagnostics(self) -> list[health.DiagnosticEntry]:
        now = self._now()
        with self._lock:
            text, when = self._last_error
        return health.build_diagnostics(
            node_name=self.get_name(), now=now, started=self._start_ref(now), rgb=self.rgb_monitor, aux=self.aux_monitor,
            modality=self.modality, aux_timeout=self.cfg.aux_timeout,
            rgb_only_possible=self.rgb_only_possible and self.cfg.allow_rgb_only, counters=self.counters,
            latency=self.latency, output_rate=self.out_monitor.rate(now),
            last_error=text if text and now - when < 5.0 else "")

    def publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        for e in self.diagnostics():
            st = DiagnosticStatus()
            st.level = bytes([e.level])  # 'byte' fields are bytes of length 1 in rclpy
            st.name, st.message, st.hardware_id = e.name, e.message, ""
            st.values = [KeyValue(key=k, value=v) for k, v in e.values.items()]
            arr.status.append(st)
        self.diag_pub.publish(arr)

    def shutdown(self) -> None:
        self._slot.close()
        self._worker.join(timeout=2.0)


def main(args=None) -> int:
    rclpy.init(args=args)
    try:
        node = RgbtSegNode()
    except RgbtSegError as exc:
        # One line and a non-zero exit; launch files do not respawn, so no crash loop.
        rclpy.logging.get_logger(NODE_NAME).fatal(str(exc))
        rclpy.try_shutdown()
        return 2
    executor = MultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
