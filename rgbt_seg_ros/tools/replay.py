"""rgbt-seg replay: run the segmentation pipeline over a bag and write a rosbag2 with the results."""
from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.tools import BACKEND_HELP, BACKENDS

HELP = """Run the pipeline over a rosbag2 (mcap or sqlite3) or ROS 1 bag and write a rosbag2 (mcap by default).

The output holds every input message at its original receive time (rosbag2 inputs: the same bytes;
ROS 1 inputs: converted to ROS 2 CDR by rosbags), plus the results, all stamped with the RGB image's
header and written at the RGB message's receive time so that `ros2 bag play` (with RViz) or Foxglove
shows them together:
  <ns>/labels      sensor_msgs/Image mono8 (mono16 past 255 classes)   class id per pixel
  <ns>/colour      sensor_msgs/Image rgb8                                palette colours
  <ns>/confidence  sensor_msgs/Image 32FC1                               max softmax probability
  <ns>/overlay     sensor_msgs/Image rgb8                                colours blended over the RGB image
  <ns>/info        rgbt_seg_ros/msg/SegmentationInfo                     model, classes, latency, skew
<ns> defaults to /rgbt_seg (the node's ~/ topics when the node is named rgbt_seg).

Images may be sensor_msgs/Image or CompressedImage (JPEG/PNG). CameraInfos are not paired by stamp:
the latest one received before a pair is used. When the bag ends, frames still waiting for a possibly
closer partner are paired with what has arrived (or dropped). The output appears only when the run succeeds (a
failed or interrupted run leaves nothing); the input is never modified.

example:
  rgbt-seg replay drive.mcap_folder --out drive_seg --rgb-topic /cam/rgb/image_raw \\
      --thermal-topic /cam/thermal/image_raw --config rig.yaml
  rgbt-seg replay camera.bag --out camera_seg --rgb-topic /raspicam_node/image/compressed --rgb-only"""

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
OUTPUT_IMAGES = {"labels": None, "colour": "rgb8", "confidence": "32FC1", "overlay": "rgb8"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", type=Path, metavar="IN_BAG",
                        help="rosbag2 folder (mcap or sqlite3), a bare .mcap file, or a ROS 1 .bag file")
    parser.add_argument("--out", type=Path, metavar="OUT_BAG", help="output rosbag2 folder (required unless --list)")
    parser.add_argument("--list", action="store_true", help="list the bag's topics with types and counts, and exit")
    parser.add_argument("--model", help="model file (.safetensors or .onnx); default: the built-in model")
    topics = parser.add_argument_group("topics")
    topics.add_argument("--rgb-topic", default="/rgb/image", help="RGB Image or CompressedImage (default /rgb/image)")
    second = topics.add_mutually_exclusive_group()
    second.add_argument("--thermal-topic", help="thermal image topic (default /thermal/image)")
    second.add_argument("--depth-topic", help="depth image topic (for RGB-D models)")
    topics.add_argument("--rgb-info-topic", help="RGB CameraInfo (default /rgb/camera_info if the bag has it)")
    topics.add_argument("--aux-info-topic",
                        help="thermal/depth CameraInfo (default /thermal/camera_info or /depth/camera_info if present)")
    topics.add_argument("--rgb-only", action="store_true",
                        help="segment RGB alone (no second camera); meant for models trained with modality dropout")
    topics.add_argument("--namespace", default="/rgbt_seg", help="prefix of the output topics (default /rgbt_seg)")
    pipe = parser.add_argument_group("pipeline")
    pipe.add_argument("--config", type=Path, help="pipeline YAML (registration, resize, overlay; "
                      "normalisation keys set here override the model card's)")
    pipe.add_argument("--backend", default="auto", choices=BACKENDS, help=BACKEND_HELP)
    pipe.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    pipe.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    pipe.add_argument("--queue-size", type=int, default=10, help="pairing queue per stream, ≥ 2 (default 10)")
    pipe.add_argument("--slop", type=float, default=0.05, help="largest RGB/aux stamp difference of a pair, s (0.05)")
    out = parser.add_argument_group("output")
    out.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"), help="output storage (default mcap)")
    out.add_argument("--force", action="store_true", help="replace an existing output bag (never another kind of folder)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclass
class ReplaySettings:
    rgb_topic: str = "/rgb/image"
    aux_topic: str | None = None  # default /<modality>/image; unused with rgb_only
    modality: str = "thermal"
    rgb_info_topic: str | None = None
    aux_info_topic: str | None = None
    rgb_only: bool = False
    namespace: str = "/rgbt_seg"
    queue_size: int = 10
    slop: float = 0.05
    storage: str = "mcap"
    force: bool = False
    progress: bool = True
    model_file: str = ""


@dataclass
class ReplaySummary:
    out: Path
    messages_in: int = 0
    rgb_frames: int = 0
    aux_frames: int = 0
    pairs: int = 0
    unpaired: dict = field(default_factory=dict)  # stream -> reason -> count
    skew_ms: dict = field(default_factory=dict)
    # decided by the pairer's flush at the end of the bag: {"pairs": n, "dropped": {stream: n}}
    decided_at_end: dict = field(default_factory=dict)
    latency_ms: dict = field(default_factory=dict)  # stage -> p50/p95/p99/...
    written: dict = field(default_factory=dict)  # topic -> count
    skipped_no_camera_info: int = 0  # pairs before the first CameraInfo the registration needs
    waiting_for: list = field(default_factory=list)
    wall_s: float = 0.0
    warmup_s: float = 0.0  # the network's one-time start-up cost, paid before the first pair
    first_result: Any = None  # (rgb, SegmentationResult) of the first pair, for previews

    def lines(self) -> list[str]:
        drops = ", ".join(f"{s}: " + ", ".join(f"{n} {r}" for r, n in v.items() if n) for s, v in self.unpaired.items()
                          if any(v.values())) or "none"
        out = [f"wrote {self.out} in {self.wall_s:.1f} s: {self.messages_in} input messages copied, "
               f"{self.rgb_frames} RGB and {self.aux_frames} aux frames, {self.pairs} segmented",
               f"unpaired frames dropped: {drops}"]
        if self.skipped_no_camera_info:
            out.append(f"skipped {self.skipped_no_camera_info} pairs before the first "
                       f"{' and '.join(self.waiting_for)} (the registration needs it)")
        end_pairs, end_drops = self.decided_at_end.get("pairs", 0), self.decided_at_end.get("dropped", {})
        if end_pairs or any(end_drops.values()):
            out.append(f"decided at the end of the bag (no later frame to wait for): {end_pairs} segmented"
                       + "".join(f", {n} {s} dropped" for s, n in end_drops.items() if n))
        if self.skew_ms.get("n"):
            s = self.skew_ms
            out.append(f"pair skew |aux-rgb|: p50 {s['p50_ms']:.1f} ms, p95 {s['p95_ms']:.1f} ms, "
                       f"max {s['max_ms']:.1f} ms")
        if self.latency_ms:
            out.append(f"latency per pair (ms)      p50      p95      p99   (after a {self.warmup_s:.1f} s network "
                       f"warm-up)")
            for stage, v in self.latency_ms.items():
                out.append(f"  {stage:<22} {v['p50']:8.2f} {v['p95']:8.2f} {v['p99']:8.2f}")
        return out


def topic_prefix(namespace: str) -> str:
    """``--namespace`` as the prefix of the output topics: "/rgbt_seg" for "rgbt_seg/", "" for "/"."""
    return "/" + namespace.strip("/") if namespace.strip("/") else ""


def output_topics(namespace: str) -> list[str]:
    """The topics replay writes its results to, under ``namespace``."""
    return [f"{topic_prefix(namespace)}/{name}" for name in (*OUTPUT_IMAGES, "info")]


# a ROS 2 namespace: tokens of letters, digits and underscores, not starting with a digit, joined by "/"
_NAMESPACE = re.compile(r"/?([A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*)?/?")


def _resolve_topics(bag, s: ReplaySettings) -> None:
    from rgbt_seg_ros.io.bag import CAMERA_INFO

    clash = [t for t in output_topics(s.namespace) if t in bag.topics]
    if clash:
        raise RgbtSegError(f"--namespace {s.namespace}: bag {bag.path} already has {', '.join(clash)} (recorded with "
                           "the node running, or a replay's output); pass another --namespace for these results")
    bag.require_topic(s.rgb_topic, IMAGE_TYPES, role="--rgb-topic")
    if not s.rgb_only:
        s.aux_topic = s.aux_topic or f"/{s.modality}/image"
        flag = f"--{s.modality}-topic"
        if s.aux_topic not in bag.topics:
            raise RgbtSegError(f"{flag} {s.aux_topic}: not in bag {bag.path} (it has {bag.describe()}); "
                               f"name the {s.modality} topic with {flag}, or pass --rgb-only to segment RGB alone")
        bag.require_topic(s.aux_topic, IMAGE_TYPES, role=flag)
    for attr, default, flag in (("rgb_info_topic", "/rgb/camera_info", "--rgb-info-topic"),
                                ("aux_info_topic", f"/{s.modality}/camera_info", "--aux-info-topic")):
        given = getattr(s, attr)
        if attr == "aux_info_topic" and s.rgb_only:
            setattr(s, attr, None)
        elif given is not None:
            bag.require_topic(given, (CAMERA_INFO,), role=flag)
        elif default in bag.topics and bag.topics[default].msgtype == CAMERA_INFO:
            setattr(s, attr, default)
    roles = [("--rgb-topic", s.rgb_topic), (f"--{s.modality}-topic", None if s.rgb_only else s.aux_topic),
             ("--rgb-info-topic", s.rgb_info_topic), ("--aux-info-topic", s.aux_info_topic)]
    given = [(flag, topic) for flag, topic in roles if topic is not None]
    for i, (flag, topic) in enumerate(given):
        for other, same in given[i + 1:]:
            if same == topic:
                raise RgbtSegError(f"{flag} and {other}: both are {topic}; each input needs its own topic")


def _info_msg(store, header, card, settings: ReplaySettings, result, skew: float, pairs: int, unpaired: int):
    from rgbt_seg_ros.io.bag import SEGMENTATION_INFO
    from rgbt_seg_ros.io.info import info_fields

    # the node fills the same fields; latency_total_ms=None: no receive time here, the pipeline's total
    fields = info_fields(card=card, model_file=settings.model_file, modality=settings.modality,
                         aux_used=result.aux_used, pair_skew=skew, latency_total_ms=None, timings=result.timings,
                         pairs_processed=pairs, pairs_dropped=0, frames_unpaired=unpaired)
    colour = store.types["std_msgs/msg/ColorRGBA"]
    fields["colours"] = [colour(r=r, g=g, b=b, a=a) for r, g, b, a in fields["colours"]]
    fields["stage_latency_ms"] = np.asarray(fields["stage_latency_ms"], dtype=np.float32)
    return store.types[SEGMENTATION_INFO](header=header, **fields)


def run_replay(in_bag: str | Path, out_bag: str | Path, pipeline, settings: ReplaySettings,
               keep_first: bool = False) -> ReplaySummary:
    """Replay ``in_bag`` through ``pipeline`` (a SegmentationPipeline) into ``out_bag``.

    ``keep_first``: also compute the registered aux image for the first pair and keep (rgb, result) in
    ``summary.first_result`` (for previews).
    """
    from tqdm import tqdm

    from rgbt_seg_ros.io.bag import IMAGE, SEGMENTATION_INFO, BagReader, BagWriter
    from rgbt_seg_ros.io.image import message_to_numpy, numpy_to_image_fields, to_rgb8
    from rgbt_seg_ros.pipeline.pipeline import ALL_OUTPUTS, DEFAULT_OUTPUTS
    from rgbt_seg_ros.pipeline.sync import ApproximateTimePairer, LatestCameraInfo
    from rgbt_seg_ros.pipeline.timing import LatencyStats

    t_start = time.perf_counter()
    s = settings
    ns = topic_prefix(s.namespace)
    summary = ReplaySummary(Path(out_bag))
    card = pipeline.card
    latency = LatencyStats()
    with BagReader(in_bag) as bag:
        _resolve_topics(bag, s)
        pairer = ApproximateTimePairer(queue_size=s.queue_size, slop=s.slop)
        summary.warmup_s = pipeline.warm_up()  # so the first pairs' latencies are the network's, as later ones
        infos = {"rgb": LatestCameraInfo("rgb camera_info"), "aux": LatestCameraInfo(f"{s.modality} camera_info")}
        info_topics = {s.rgb_info_topic: "rgb", s.aux_info_topic: "aux"}
        info_topics.pop(None, None)
        reg_cfg = pipeline.config.registration
        needs_cameras = reg_cfg.uses_cameras
        total = sum(t.count for t in bag.topics.values())
        with BagWriter(out_bag, storage=s.storage, force=s.force, protect=[in_bag]) as writer:
            store = writer.typestore
            Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
            Image = store.types[IMAGE]
            for conn in bag.reader.connections:
                writer.add_connection(conn.topic, conn.msgtype, *bag.ros2_definition(conn), qos=bag.qos(conn))
            for name in OUTPUT_IMAGES:
                writer.add_connection(f"{ns}/{name}", IMAGE)
            writer.add_connection(f"{ns}/info", SEGMENTATION_INFO)

            def segment(rgb_item, aux_item, skew: float) -> None:
                rgb_msg, rgb_log = rgb_item
                t0 = time.perf_counter()
                rgb_arr, rgb_enc = message_to_numpy(rgb_msg, s.rgb_topic)
                rgb = to_rgb8(rgb_arr, rgb_enc, s.rgb_topic)
                aux = aux_enc = None
                if aux_item is not None:
                    aux, aux_enc = message_to_numpy(aux_item[0], s.aux_topic)
                decode_ms = (time.perf_counter() - t0) * 1e3
                waiting = [info.name for info, configured in ((infos["rgb"], reg_cfg.rgb_camera),
                                                              (infos["aux"], reg_cfg.aux_camera))
                           if needs_cameras and aux is not None and info.updates == 0 and not configured]
                if waiting:  # as the node does: a pair before the first CameraInfo is skipped, not an error
                    summary.skipped_no_camera_info += 1
                    summary.waiting_for = waiting
                    return
                first = keep_first and summary.first_result is None
                try:
                    result = pipeline.process(rgb, aux, aux_enc or "mono8", rgb_camera=infos["rgb"].get(),
                                              aux_camera=infos["aux"].get() if aux is not None else None,
                                              outputs=ALL_OUTPUTS if first else DEFAULT_OUTPUTS)
                except RgbtSegError as exc:
                    # an unusable CameraInfo (e.g. uncalibrated, K = 0) is the usual root cause: say so
                    reasons = [i.error for i in infos.values() if i.error]
                    when = f"{rgb_msg.header.stamp.sec}.{rgb_msg.header.stamp.nanosec:09d}"
                    raise RgbtSegError(f"pair at RGB stamp {when}: {exc}"
                                       + (f" (earlier: {'; '.join(reasons)})" if reasons else "")) from None
                stamp = rgb_msg.header.stamp
                header = Header(stamp=Time(sec=int(stamp.sec), nanosec=int(stamp.nanosec)),
                                frame_id=str(rgb_msg.header.frame_id))
                t1 = time.perf_counter()
                labels_enc = "mono8" if result.labels.dtype == np.uint8 else "mono16"
                for name, enc in OUTPUT_IMAGES.items():
                    array = getattr(result, name)
                    writer.write(f"{ns}/{name}", rgb_log,
                                 Image(header=header, **numpy_to_image_fields(array, enc or labels_enc)), IMAGE)
                unpaired = pairer.stats.dropped_total("rgb")  # RGB frames without a partner, as the node counts
                summary.pairs += 1
                writer.write(f"{ns}/info", rgb_log,
                             _info_msg(store, header, card, s, result, skew, summary.pairs, unpaired),
                             SEGMENTATION_INFO)
                latency.add({"decode": decode_ms, **result.timings,
                             "write": (time.perf_counter() - t1) * 1e3})
                if first:
                    summary.first_result = (rgb, result)

            bar = tqdm(total=total, unit="msg", desc="replay", disable=not s.progress, file=sys.stderr,
                       dynamic_ncols=True)
            try:
                for m in bag.messages():
                    writer.write_raw(m.topic, m.log_time, bag.to_cdr(m), m.msgtype)
                    summary.messages_in += 1
                    bar.update(1)
                    if m.topic in info_topics:
                        infos[info_topics[m.topic]].update(bag.deserialize_ros2(m))
                    elif m.topic == s.rgb_topic:
                        msg = bag.deserialize_ros2(m)
                        summary.rgb_frames += 1
                        if s.rgb_only:
                            segment((msg, m.log_time), None, 0.0)
                            continue
                        for pair in pairer.add("rgb", msg.header.stamp, (msg, m.log_time)):
                            segment(pair.rgb, pair.aux, pair.skew)
                    elif not s.rgb_only and m.topic == s.aux_topic:
                        msg = bag.deserialize_ros2(m)
                        summary.aux_frames += 1
                        for pair in pairer.add("aux", msg.header.stamp, (msg, m.log_time)):
                            segment(pair.rgb, pair.aux, pair.skew)
                if not s.rgb_only:
                    # no more frames: pairs that were waiting for a possibly closer partner are final now
                    before = {x: pairer.stats.dropped_total(x) for x in ("rgb", "aux")}
                    end_pairs = pairer.flush()
                    for pair in end_pairs:
                        segment(pair.rgb, pair.aux, pair.skew)
                    summary.decided_at_end = {"pairs": len(end_pairs), "dropped": {
                        x: pairer.stats.dropped_total(x) - before[x] for x in ("rgb", "aux")}}
                if summary.skipped_no_camera_info and not summary.pairs:  # no output bag for nothing
                    raise RgbtSegError(f"registration.mode {reg_cfg.mode!r}: needs {' and '.join(summary.waiting_for)}, "
                                       f"and bag {bag.path} has none before its last pair; name the topic with "
                                       "--rgb-info-topic / --aux-info-topic, or give calibration files in --config")
            finally:
                bar.close()
            summary.written = dict(writer.counts)
    summary.unpaired = pairer.stats.as_dict()["dropped"] if not s.rgb_only else {}
    summary.skew_ms = pairer.stats.skew_summary() if not s.rgb_only else {}
    summary.latency_ms = latency.summary()
    summary.wall_s = time.perf_counter() - t_start
    return summary


def settings_from_args(args: argparse.Namespace) -> ReplaySettings:
    modality = "depth" if args.depth_topic else "thermal"
    aux_topic = args.depth_topic or args.thermal_topic or f"/{modality}/image"
    if args.rgb_only and (args.thermal_topic or args.depth_topic):
        raise RgbtSegError("--rgb-only: cannot be combined with --thermal-topic / --depth-topic")
    if not args.slop >= 0:  # NaN too
        raise RgbtSegError(f"--slop: must be ≥ 0 seconds, got {args.slop}")
    if args.queue_size < 2:
        raise RgbtSegError(f"--queue-size: must be ≥ 2, got {args.queue_size} (a pair is decided once a later "
                           "message of its stream has arrived, so a queue of one pairs nothing before the bag's end)")
    if not _NAMESPACE.fullmatch(args.namespace):
        raise RgbtSegError(f"--namespace {args.namespace!r}: not a ROS 2 namespace (letters, digits and underscores "
                           "in /-separated parts, none starting with a digit)")
    return ReplaySettings(rgb_topic=args.rgb_topic, aux_topic=None if args.rgb_only else aux_topic, modality=modality,
                          rgb_info_topic=args.rgb_info_topic, aux_info_topic=args.aux_info_topic,
                          rgb_only=args.rgb_only, namespace=args.namespace, queue_size=args.queue_size,
                          slop=args.slop, storage=args.storage, force=args.force, progress=not args.no_progress)


def build_pipeline(model: str | None, backend: str, device: str, precision: str, config: Path | None):
    """(SegmentationPipeline, model file path) — shared by replay and infer."""
    from rgbt_seg_ros.inference import builtin_model_path, create_backend
    from rgbt_seg_ros.pipeline.config import PipelineConfig
    from rgbt_seg_ros.pipeline.pipeline import SegmentationPipeline

    cfg = PipelineConfig.from_yaml(config) if config is not None else PipelineConfig()
    be = create_backend(model, backend=backend, device=device, precision=precision)
    return SegmentationPipeline(be, cfg), str(model if model is not None else builtin_model_path())


def check_modality(card, modality: str, rgb_only: bool, flag: str = "--{}-topic") -> list[str]:
    """Errors for a model that cannot run this input; warnings (returned) for doubtful combinations.

    ``flag`` is the option naming the second input, with ``{}`` for the modality."""
    if not rgb_only and card.modality != modality:
        raise RgbtSegError(f"{flag.format(modality)}: the model expects {card.modality} images (model card "
                           f"modality); use {flag.format(card.modality)}")
    warnings = []
    if rgb_only and not card.supports_rgb_only:
        warnings.append("warning: the model was not trained for RGB-only operation (supports_rgb_only is false); "
                        "expect poor results")
    if not card.trained:
        warnings.append("warning: UNTRAINED weights: the model file says trained=false; labels are meaningless")
    return warnings


def main(args: argparse.Namespace) -> int:
    from rgbt_seg_ros.io.bag import BagReader, check_output

    if args.list:
        with BagReader(args.bag) as bag:
            print(f"{bag.path}: {'ROS 1' if bag.is_ros1 else 'rosbag2'}, {bag.reader.message_count} messages, "
                  f"{bag.reader.duration / 1e9:.2f} s")
            for t in bag.topics.values():
                print(f"  {t.name:<40} {t.msgtype:<40} {t.count}")
        return 0
    if args.out is None:
        raise RgbtSegError("--out: the output bag is required (or pass --list to see the topics)")
    settings = settings_from_args(args)
    # Cheap checks first: a wrong topic or an existing output should not wait for the model to load.
    check_output(args.out, args.force)
    with BagReader(args.bag) as bag:
        _resolve_topics(bag, settings)
    pipeline, model_file = build_pipeline(args.model, args.backend, args.device, args.precision, args.config)
    settings.model_file = model_file
    if getattr(pipeline.backend, "selection", None):
        print(pipeline.backend.selection, file=sys.stderr)
    for line in check_modality(pipeline.card, settings.modality, settings.rgb_only):
        print(line, file=sys.stderr)
    summary = run_replay(args.bag, args.out, pipeline, settings)
    print("\n".join(summary.lines()))
    return 0
