"""Self-describing model files: safetensors weights + a JSON model card in the file's metadata.

The card carries everything the node and the replay tool need (network, variant, modality, classes,
palette, input size, normalisation, dataset), so no parameter file can disagree with the weights.
Normalisation is two steps, both recorded: ``normalization`` (how raw thermal counts / °C / depth map to
[0, 1], the pipeline's ``NormalizationConfig`` keys) and ``aux_mean``/``aux_std`` (applied after that).
Loading reads tensors with safetensors only: nothing is ever unpickled.

Card format 2 added ``normalization``. Format-1 cards lack it and read as ``{}``, i.e. the pipeline
defaults: right for models trained with the default ``data.normalization`` (the built-in one included);
for others, give the training values in the pipeline config. Older packages refuse format-2 cards
rather than silently dropping the field.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from rgbt_seg_ros.errors import RgbtSegError, first_line

CARD_KEY = "rgbt_seg_ros.card"
SOURCE_KEY = "rgbt_seg_ros.source_sha256"  # ONNX metadata: SHA-256 of the .safetensors file it was exported from
FORMAT_VERSION = 2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelFileError(RgbtSegError):
    """A model file is missing, unreadable, or its card is incomplete."""


@dataclass
class ModelCard:
    network: str
    num_classes: int
    class_names: list[str]
    palette: list[list[int]]  # one RGB triple per class
    variant: str | None = None
    modality: str = "thermal"  # "thermal" | "depth"
    aux_channels: int = 1
    input_size: tuple[int, int] = (480, 640)  # network input (height, width)
    rgb_mean: tuple[float, ...] = IMAGENET_MEAN  # applied to RGB scaled to [0, 1]
    rgb_std: tuple[float, ...] = IMAGENET_STD
    aux_mean: tuple[float, ...] = (0.5,)  # applied to the aux image after the pipeline maps it to [0, 1]
    aux_std: tuple[float, ...] = (0.25,)
    # raw aux → [0, 1] as in training: NormalizationConfig keys (thermal_agc, thermal_range, depth_range, ...);
    # missing keys take the pipeline defaults. A user's pipeline config overrides it key by key.
    normalization: dict = field(default_factory=dict)
    dataset: str = ""
    supports_rgb_only: bool = False  # trained with modality dropout: usable when the aux stream is lost
    trained: bool = True
    metrics: dict = field(default_factory=dict)  # e.g. {"mIoU": 0.81, "split": "synthetic-val"}
    notes: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        try:
            self.num_classes = int(self.num_classes)
            self.class_names = [str(n) for n in self.class_names]
            self.palette = [[int(c) for c in rgb] for rgb in self.palette]
            self.aux_channels = int(self.aux_channels)
            self.format_version = int(self.format_version)
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"model card: a malformed field ({exc})") from None
        if len(self.class_names) != self.num_classes:
            raise ModelFileError(f"model card: {len(self.class_names)} class_names for num_classes={self.num_classes}")
        if len(self.palette) != self.num_classes:
            raise ModelFileError(f"model card: {len(self.palette)} palette entries for num_classes={self.num_classes}")
        if not isinstance(self.normalization, dict):
            raise ModelFileError(f"model card: normalization must be a mapping, "
                                 f"got {type(self.normalization).__name__}")
        try:
            self.input_size = tuple(int(v) for v in self.input_size)
            for name in ("rgb_mean", "rgb_std", "aux_mean", "aux_std"):
                setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"model card: input_size and the means/stds must be lists of numbers ({exc})") from None
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ModelFileError(f"model card: input_size must be [height, width], got {list(self.input_size)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "model card") -> "ModelCard":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"{source}: card is not valid JSON ({exc})") from None
        known = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.name in ("network", "num_classes", "class_names", "palette")
                   and f.name not in data]
        if missing:
            raise ModelFileError(f"{source}: card lacks {', '.join(missing)}")
        version = data.get("format_version", 1)
        if not isinstance(version, int) or isinstance(version, bool):
            raise ModelFileError(f"{source}: card format_version must be an integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise ModelFileError(f"{source}: card format {version} is newer than this package reads "
                                 f"({FORMAT_VERSION}); upgrade rgbt_seg_ros")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except ModelFileError as exc:  # the card's own checks: say which file
            raise ModelFileError(f"{source}: {exc}") from None


def save_model(path: str | Path, state_dict: dict[str, torch.Tensor], card: ModelCard,
               dtype: torch.dtype | None = None) -> Path:
    """Write weights + card. ``dtype`` (e.g. torch.float16) shrinks floating weights on disk.

    The file gets the mode any new file gets (0666 less the umask, e.g. 0644), like one written by ``open``.
    """
    from safetensors.torch import save

    path = Path(path)
    tensors = {}
    for k, v in state_dict.items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    # serialise in memory and write with open(): safetensors' save_file creates its file 0600, which
    # other users (a ROS node under another account, a shared models folder) could not read
    data = save(tensors, metadata={CARD_KEY: card.to_json()})
    tmp.unlink(missing_ok=True)  # a leftover of a crashed run would keep its own mode
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)  # atomic: a crash never leaves a half-written model under the real name
    return path


def read_card(path: str | Path) -> ModelCard:
    """Read only the card of a .safetensors or .onnx model file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    if path.suffix == ".onnx":
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError for a truncated or foreign file
            raise ModelFileError(f"{path}: not a readable ONNX file ({first_line(exc)})") from None
        props = {p.key: p.value for p in model.metadata_props}
        if CARD_KEY not in props:
            raise ModelFileError(f"{path}: ONNX file has no '{CARD_KEY}' metadata; export it with `rgbt-seg export`")
        return ModelCard.from_json(props[CARD_KEY], str(path))
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ModelFileError(f"{path}: not a readable safetensors file ({exc})") from None
    if CARD_KEY not in meta:
        raise ModelFileError(f"{path}: safetensors file has no '{CARD_KEY}' metadata; it was not written by rgbt-seg")
    return ModelCard.from_json(meta[CARD_KEY], str(path))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelCard]:
    """Build the card's network (no hub download) and load the weights strictly, in fp32, eval mode."""
    from safetensors.torch import load_file

    from rgbt_seg_ros.networks import create_network

    path = Path(path)
    if path.suffix == ".onnx":
        raise ModelFileError(f"{path}: an ONNX file holds no torch weights; this needs the .safetensors model file")
    card = read_card(path)
    try:
        net = create_network(card.network, card.num_classes, modality=card.modality, variant=card.variant,
                             pretrained=False, aux_channels=card.aux_channels)
    except RgbtSegError as exc:
        raise ModelFileError(f"{path}: the card's network cannot be built ({exc})") from None
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable safetensors file ({first_line(exc)})") from None
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        def some(keys):
            return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        raise ModelFileError(f"{path}: weights do not fit network {card.network}/{card.variant}: "
                             + "; ".join(f"{what} {some(keys)}" for what, keys in (("missing", missing),
                                                                                    ("unexpected", unexpected)) if keys))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shapes
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), first_line(exc))
        raise ModelFileError(f"{path}: weights do not fit network {card.network}/{card.variant}: {detail}") from None
    return net.to(device).eval(), card
