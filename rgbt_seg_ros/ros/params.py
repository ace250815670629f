"""Every parameter of the ``rgbt_seg`` node: its type, default, description and range, and validation.

The node declares exactly these (with ``ParameterDescriptor`` ranges) and passes the values it got to
``validate_params``, so the start-up checks are the same code the tests run. Each failure is one
``RgbtSegError`` line naming the parameter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgbt_seg_ros.errors import RgbtSegError

BACKENDS = ("auto", "torch", "onnxruntime")
BACKEND_HELP = ("Inference backend: auto = onnxruntime for an .onnx file; for a .safetensors file the faster "
                "of torch and its ONNX export beside it (made by rgbt-seg export; both timed at start-up), "
                "else torch")
PRECISIONS = ("fp32", "fp16", "bf16")
MODALITIES = ("auto", "thermal", "depth")
REGISTRATION_MODES = ("identity", "homography", "plane", "depth")
THERMAL_MODES = ("auto", "percentile", "fixed")
# Normalisation parameters left at these values take the model card's (what the model was trained with).
FROM_CARD = {"thermal_normalisation": "auto", "thermal_range": [0.0, 0.0], "thermal_percentiles": [0.0, 0.0],
             "temperature_range": [0.0, 0.0], "depth_range": [0.0, 0.0]}
# node parameter -> pipeline NormalizationConfig key
_NORM_KEYS = {"thermal_normalisation": "thermal_agc", "thermal_range": "thermal_range",
              "thermal_percentiles": "thermal_percentiles", "temperature_range": "temperature_range",
              "depth_range": "depth_range"}
RELIABILITIES = ("best_effort", "reliable")
MAX_INPUT_SIDE = 4096


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str  # "string" | "integer" | "double" | "bool" | "double_array"
    default: Any
    description: str
    range: tuple[float, float] | None = None  # inclusive, integers or doubles
    choices: tuple[str, ...] = ()
    read_only: bool = True  # changing it needs a restart (model, subscriptions, synchronizer)
    length: int | None = None  # exact length of a double_array


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("model_file", "string", "", "Model file (.safetensors or .onnx written by rgbt-seg); "
              "empty = the built-in model installed with the Python package (rgbt_seg_ros/models/builtin_rgbt.safetensors; "
              "the environment variable RGBT_SEG_BUILTIN_MODEL overrides it)"),
    ParamSpec("backend", "string", "auto", BACKEND_HELP, choices=BACKENDS),
    ParamSpec("device", "string", "cpu", "Torch/onnxruntime device: cpu, cuda or cuda:N"),
    ParamSpec("precision", "string", "fp32", "Network precision", choices=PRECISIONS),
    ParamSpec("compile_mode", "string", "off", "torch backend: torch.compile mode; reduce-overhead adds CUDA "
              "graphs on a GPU. The first frame then waits for the compilation (tens of seconds)",
              choices=("off", "default", "reduce-overhead")),
    ParamSpec("device_ops", "string", "auto", "Pre-/post-processing as torch ops on the network's device: "
              "auto = when the backend (torch, or onnxruntime with the CUDA/TensorRT provider) runs on CUDA, "
              "on, off (numpy/OpenCV on the CPU); "
              "quote on/off in YAML",
              choices=("auto", "on", "off")),
    ParamSpec("modality", "string", "auto", "Second camera: thermal or depth (subscribes thermal/image or "
              "depth/image); auto = the model card's modality", choices=MODALITIES),
    ParamSpec("input_height", "integer", 0, "Network input height in pixels; 0 = the model card's", (0, MAX_INPUT_SIDE)),
    ParamSpec("input_width", "integer", 0, "Network input width in pixels; 0 = the model card's", (0, MAX_INPUT_SIDE)),
    ParamSpec("registration", "string", "identity", "How the second image is brought into the RGB pixel grid: "
              "identity (pre-registered, resize only), homography (fixed 3x3), plane (plane-induced "
              "homography from both CameraInfos + extrinsics), depth (reprojection with z-buffer)",
              choices=REGISTRATION_MODES),
    ParamSpec("homography", "double_array", [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
              "Row-major 3x3 homography mapping aux pixels to RGB pixels (registration=homography)", length=9),
    ParamSpec("extrinsic_rotation", "double_array", [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
              "Row-major 3x3 rotation aux camera -> RGB camera (registration=plane|depth)", length=9),
    ParamSpec("extrinsic_translation", "double_array", [0.0, 0.0, 0.0],
              "Translation aux camera -> RGB camera in metres (registration=plane|depth)", length=3),
    ParamSpec("extrinsics_file", "string", "", "Extrinsics aux -> RGB from a file (Kalibr camchain, YAML with R/t "
              "or a 4x4 matrix; 'path#rgb_name,aux_name' for multi-frame files); overrides "
              "extrinsic_rotation/translation when set"),
    ParamSpec("plane_distance", "double", 10.0, "Distance in metres of the fronto-parallel scene plane "
              "(registration=plane)", (0.1, 1000.0)),
    # [0, 0] arrays (a ROS parameter cannot default to an empty double array: rclpy would type it from the
    # empty default) and "auto" mean "the model card's"
    ParamSpec("thermal_normalisation", "string", "auto", "Thermal to [0,1]: percentile (per-frame AGC "
              "between thermal_percentiles) or fixed (thermal_range); auto = the model card's (as trained)",
              choices=THERMAL_MODES),
    ParamSpec("thermal_range", "double_array", [0.0, 0.0], "[min, max] raw mono16 counts mapped to [0,1] "
              "when thermal_normalisation=fixed; [0, 0] = the model card's", length=2),
    ParamSpec("thermal_percentiles", "double_array", [0.0, 0.0], "[low, high] percentiles for "
              "thermal_normalisation=percentile; [0, 0] = the model card's", length=2),
    ParamSpec("temperature_range", "double_array", [0.0, 0.0], "[min, max] degrees Celsius of a 32FC1 "
              "thermal image mapped to [0,1]; [0, 0] = the model card's", length=2),
    ParamSpec("depth_range", "double_array", [0.0, 0.0], "[min, max] metres mapped to [0,1] for depth; "
              "[0, 0] = the model card's", length=2),
    ParamSpec("resize_mode", "string", "stretch", "RGB to network input: stretch, or letterbox (keeps aspect)",
              choices=("stretch", "letterbox")),
    ParamSpec("overlay", "bool", True, "Publish ~/overlay (colour labels blended over the RGB image)"),
    ParamSpec("overlay_alpha", "double", 0.5, "Weight of the label colours in ~/overlay", (0.0, 1.0), read_only=False),
    ParamSpec("queue_size", "integer", 10, "message_filters ApproximateTimeSynchronizer queue size", (1, 1000)),
    ParamSpec("slop", "double", 0.05, "Largest stamp difference in seconds for an RGB/aux pair", (0.001, 10.0)),
    ParamSpec("qos_reliability", "string", "best_effort", "Image subscriptions: best_effort (sensor-data QoS) "
              "or reliable (e.g. for ros2 bag play without --qos-profile-overrides)", choices=RELIABILITIES),
    ParamSpec("qos_depth", "integer", 5, "History depth of the image subscriptions", (1, 100)),
    ParamSpec("aux_timeout", "double", 1.0, "Seconds without a thermal/depth image before the stream "
              "counts as lost", (0.05, 60.0), read_only=False),
    ParamSpec("allow_rgb_only", "bool", True, "When the aux stream is lost, keep publishing RGB-only results "
              "if the model card says supports_rgb_only", read_only=False),
)
SPECS = {p.name: p for p in PARAMS}


@dataclass
class NodeConfig:
    model_file: str
    backend: str
    device: str
    precision: str
    compile_mode: str
    device_ops: str
    modality: str
    input_size: tuple[int, int] | None  # (h, w); None = card's
    registration: str
    homography: list[float]
    extrinsic_rotation: list[float]
    extrinsic_translation: list[float]
    extrinsics_file: str
    plane_distance: float
    thermal_normalisation: str
    thermal_range: list[float]
    thermal_percentiles: list[float]
    temperature_range: list[float]
    depth_range: list[float]
    resize_mode: str
    overlay: bool
    overlay_alpha: float
    queue_size: int
    slop: float
    qos_reliability: str
    qos_depth: int
    aux_timeout: float
    allow_rgb_only: bool
    extra: dict = field(default_factory=dict)


def check_value(spec: ParamSpec, value: Any) -> Any:
    where = f"parameter {spec.name}"
    if spec.type == "string":
        if not isinstance(value, str):
            raise RgbtSegError(f"{where}: expected a string, got {value!r}")
        if spec.choices and value not in spec.choices:
            raise RgbtSegError(f"{where}: {value!r} is not one of {', '.join(spec.choices)}")
        return value
    if spec.type == "bool":
        if not isinstance(value, bool):
            raise RgbtSegError(f"{where}: expected true or false, got {value!r}")
        return value
    if spec.type == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise RgbtSegError(f"{where}: expected an integer, got {value!r}")
    elif spec.type == "double":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RgbtSegError(f"{where}: expected a number, got {value!r}")
        value = float(value)
    elif spec.type == "double_array":
        try:
            value = [float(v) for v in value]
        except (TypeError, ValueError):
            raise RgbtSegError(f"{where}: expected a list of numbers, got {value!r}") from None
        if spec.length is not None and len(value) != spec.length:
            shape = "3x3 (9 numbers, row-major)" if spec.length == 9 else f"{spec.length} numbers"
            raise RgbtSegError(f"{where}: expected {shape}, got {len(value)} numbers")
        return value
    if spec.range is not None and not (spec.range[0] <= value <= spec.range[1]):
        raise RgbtSegError(f"{where}: {value} is outside [{spec.range[0]}, {spec.range[1]}]")
    return value


def validate_params(values: dict[str, Any]) -> NodeConfig:
    """Check every value against its spec and the cross-parameter rules; defaults fill what is missing."""
    unknown = sorted(set(values) - set(SPECS))
    if unknown:
        raise RgbtSegError(f"parameter {unknown[0]}: unknown parameter of rgbt_seg")
    v = {name: check_value(spec, values.get(name, spec.default)) for name, spec in SPECS.items()}
    if v["model_file"] and not Path(v["model_file"]).expanduser().is_file():
        raise RgbtSegError(f"parameter model_file: {v['model_file']} does not exist")
    if v["model_file"] and Path(v["model_file"]).suffix not in (".safetensors", ".onnx"):
        raise RgbtSegError(f"parameter model_file: {v['model_file']} is neither .safetensors nor .onnx")
    dev = v["device"]
    if not (dev in ("cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise RgbtSegError(f"parameter device: {dev!r} is not cpu, cuda or cuda:N")
    h, w = v["input_height"], v["input_width"]
    if (h == 0) != (w == 0):
        raise RgbtSegError("parameter input_height/input_width: set both (or both 0 for the model card's size)")
    if v["registration"] == "homography":
        _check_homography(v["homography"])
    if v["registration"] in ("plane", "depth"):
        _check_rotation(v["extrinsic_rotation"])
    if v["extrinsics_file"] and not Path(v["extrinsics_file"].split("#")[0]).expanduser().is_file():
        raise RgbtSegError(f"parameter extrinsics_file: {v['extrinsics_file'].split('#')[0]} does not exist")
    for name in ("thermal_range", "thermal_percentiles", "temperature_range", "depth_range"):
        lo, hi = v[name]
        if v[name] != FROM_CARD[name] and not lo < hi:
            raise RgbtSegError(f"parameter {name}: [{lo}, {hi}] needs min < max")
    lo, hi = v["thermal_percentiles"]
    if lo < 0 or hi > 100:
        raise RgbtSegError(f"parameter thermal_percentiles: [{lo}, {hi}] must lie within [0, 100]")
    return NodeConfig(
        model_file=str(Path(v["model_file"]).expanduser()) if v["model_file"] else "",
        backend=v["backend"], device=dev, precision=v["precision"], compile_mode=v["compile_mode"],
        device_ops=v["device_ops"],
        modality=v["modality"],
        input_size=(h, w) if h else None, registration=v["registration"], homography=v["homography"],
        extrinsic_rotation=v["extrinsic_rotation"], extrinsic_translation=v["extrinsic_translation"],
        extrinsics_file=v["extrinsics_file"],
        plane_distance=v["plane_distance"], thermal_normalisation=v["thermal_normalisation"],
        thermal_range=v["thermal_range"], thermal_percentiles=v["thermal_percentiles"],
        temperature_range=v["temperature_range"], resize_mode=v["resize_mode"],
        depth_range=v["depth_range"], overlay=v["overlay"], overlay_alpha=v["overlay_alpha"],
        queue_size=v["queue_size"], slop=v["slop"], qos_reliability=v["qos_reliability"],
        qos_depth=v["qos_depth"], aux_timeout=v["aux_timeout"], allow_rgb_only=v["allow_rgb_only"],
    )


def _check_homography(hvals: list[float]) -> None:
    import numpy as np

    H = np.asarray(hvals, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(H)):
        raise RgbtSegError("parameter homography: contains NaN or inf")
    if abs(np.linalg.det(H)) < 1e-12:
        raise RgbtSegError("parameter homography: the 3x3 matrix is singular")


def _check_rotation(rvals: list[float]) -> None:
    import numpy as np

    R = np.asarray(rvals, dtype=np.float64).reshape(3, 3)
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-4) or not np.isclose(np.linalg.det(R), 1.0, atol=1e-4):
        raise RgbtSegError("parameter extrinsic_rotation: not a rotation matrix (R·Rᵀ ≠ I or det ≠ 1)")


def check_device(cfg: NodeConfig) -> None:
    """A torch model on cuda without a usable CUDA device fails here with one line, not a torch traceback."""
    uses_torch = cfg.backend != "onnxruntime" and not cfg.model_file.endswith(".onnx")
    if not uses_torch or cfg.device == "cpu":
        return
    from rgbt_seg_ros.inference.torch_backend import torch_device

    torch_device(cfg.device)


def resolve_against_card(cfg: NodeConfig, card, size_multiple: int = 32,
                         fixed_hw: tuple[int, int] | None = None) -> NodeConfig:
    """Fill 'auto'/0 from the model card and check what the loaded network can take.

    ``fixed_hw``: the (h, w) an exported graph was built for, when its input size is not dynamic.
    """
    if cfg.modality == "auto":
        cfg.modality = card.modality
    elif cfg.modality != card.modality:
        raise RgbtSegError(f"parameter modality: {cfg.modality} but the model was trained on {card.modality}")
    if cfg.registration == "depth" and cfg.modality != "depth":
        raise RgbtSegError("parameter registration: depth reprojection needs modality depth")
    if cfg.input_size is not None:
        h, w = cfg.input_size
        if h < size_multiple or w < size_multiple or h % size_multiple or w % size_multiple:
            raise RgbtSegError(f"parameter input_height/input_width: {h}x{w} cannot feed network {card.network} "
                               f"(needs multiples of {size_multiple}, at least {size_multiple})")
        if fixed_hw is not None and (h, w) != tuple(fixed_hw):
            raise RgbtSegError(f"parameter input_height/input_width: {h}x{w} but the ONNX graph takes only "
                               f"{fixed_hw[0]}x{fixed_hw[1]}; re-export or leave both 0")
    return cfg


def pipeline_config_dict(cfg: NodeConfig) -> dict:
    """The node's parameters in the shape ``pipeline.PipelineConfig.from_dict`` reads (normalisation
    parameters only where they are not "the model card's")."""
    reg: dict[str, Any] = {"mode": cfg.registration, "plane_distance": cfg.plane_distance}
    if cfg.registration == "homography":
        h = cfg.homography
        reg["homography"] = [h[0:3], h[3:6], h[6:9]]
    if cfg.registration in ("plane", "depth"):
        r = cfg.extrinsic_rotation
        reg["extrinsics"] = cfg.extrinsics_file or {"R": [r[0:3], r[3:6], r[6:9]], "t": list(cfg.extrinsic_translation)}
    # only the normalisation parameters the user set: the pipeline takes the rest from the model card
    norm = {key: getattr(cfg, name) for name, key in _NORM_KEYS.items() if getattr(cfg, name) != FROM_CARD[name]}
    return {
        "registration": reg,
        "normalization": {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in norm.items()},
        "resize_mode": cfg.resize_mode,
        "overlay_alpha": cfg.overlay_alpha,
        "input_size": list(cfg.input_size) if cfg.input_size else None,
        "device_ops": cfg.device_ops,
    }
