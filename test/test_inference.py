"""Model files, ONNX export and the two backends, on real (small) networks."""
from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.inference import create_backend
from rgbt_seg_ros.inference.artifact import ModelCard, ModelFileError, load_model, read_card, save_model
from rgbt_seg_ros.inference.export import export_onnx
from rgbt_seg_ros.inference.onnx_backend import OnnxBackend
from rgbt_seg_ros.inference.torch_backend import TorchBackend
from rgbt_seg_ros.networks import create_network, get_network_spec


class TinyFusion(torch.nn.Module):
    """A real (if small) fusion net: conv over the concatenated inputs, bilinear upsampling back."""

    def __init__(self, k=4, aux_channels=1):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3 + aux_channels, 8, 3, stride=2, padding=1),
                                        torch.nn.ReLU(), torch.nn.Conv2d(8, k, 1))

    def forward(self, rgb, aux):
        y = self.body(torch.cat([rgb, aux], 1))
        return torch.nn.functional.interpolate(y, size=rgb.shape[-2:], mode="bilinear", align_corners=False)


def _card(k=4, **kw):
    return ModelCard(network="fusion_baseline", num_classes=k, class_names=[f"c{i}" for i in range(k)],
                     palette=[[i * 40, 0, 0] for i in range(k)], input_size=(48, 64), **kw)


def test_card_json_round_trip_and_validation():
    card = _card(dataset="synthetic", supports_rgb_only=True, metrics={"mIoU": 0.5})
    again = ModelCard.from_json(card.to_json())
    assert again == card
    with pytest.raises(ModelFileError, match="class_names"):
        ModelCard(network="x", num_classes=3, class_names=["a"], palette=[[0, 0, 0]] * 3)
    with pytest.raises(ModelFileError, match="lacks network"):
        ModelCard.from_json('{"num_classes": 2, "class_names": ["a", "b"], "palette": [[0,0,0],[1,1,1]]}')


def test_card_normalisation_round_trips_and_old_cards_still_load(tmp_path):
    from rgbt_seg_ros.pipeline import NormalizationConfig, SegmentationPipeline

    norm = NormalizationConfig(thermal_agc="fixed", thermal_range=(1000, 9000)).to_dict()
    card = _card(normalization=norm)
    path = save_model(tmp_path / "m.safetensors", TinyFusion().state_dict(), card)
    again = read_card(path)
    assert again == card and again.normalization["thermal_range"] == [1000.0, 9000.0]
    assert again.format_version == 2
    # a format-1 card (written before the field existed) reads as {}: the pipeline defaults
    old = json.loads(card.to_json())
    del old["normalization"]
    old["format_version"] = 1
    old_card = ModelCard.from_json(json.dumps(old))
    assert old_card.normalization == {} and old_card.format_version == 1
    pipe = SegmentationPipeline(TorchBackend(TinyFusion().eval(), old_card))
    assert pipe.normalization == NormalizationConfig()
    with pytest.raises(ModelFileError, match="normalization must be a mapping"):
        _card(normalization=["fixed"])
    with pytest.raises(ModelFileError, match="card format 3 is newer"):
        ModelCard.from_json(json.dumps(dict(old, format_version=3)))


def test_builtin_model_normalisation_is_the_pipeline_default_it_was_trained_with():
    """The built-in model's card (format 1) has no normalisation, so the pipeline defaults apply: they must be
    what config/train/builtin.yaml trained it with (and stay so if it is retrained and the card records them)."""
    from rgbt_seg_ros.inference import builtin_model_path
    from rgbt_seg_ros.pipeline import NormalizationConfig
    from rgbt_seg_ros.training.trainer import load_config

    card = read_card(builtin_model_path())
    assert NormalizationConfig.from_dict(card.normalization) == NormalizationConfig()
    assert "config/train/builtin.yaml" in card.notes
    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / "train" / "builtin.yaml")
    assert NormalizationConfig.from_dict(cfg["data"]["normalization"]) == NormalizationConfig()


def test_read_card_rejects_foreign_files_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "model.safetensors"
    bad.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelFileError, match="not a readable safetensors"):
        read_card(bad)
    with pytest.raises(ModelFileError):
        load_model(bad)
    assert not marker.exists()
    with pytest.raises(ModelFileError, match="does not exist"):
        create_backend(tmp_path / "missing.safetensors")


def test_export_parity_card_and_onnx_backend(tmp_path):
    torch.manual_seed(0)
    net = TinyFusion().eval()
    card = _card(normalization={"thermal_agc": "fixed", "thermal_range": [1000.0, 9000.0]})
    report = export_onnx(net, card, tmp_path / "tiny.onnx")
    assert report.max_abs_diff <= 1e-3 and len(report.checked_hw) == 2
    assert read_card(tmp_path / "tiny.onnx") == card  # normalisation included
    ort_backend = OnnxBackend(tmp_path / "tiny.onnx")
    torch_backend = TorchBackend(net, card)
    rng = np.random.default_rng(1)
    rgb = rng.standard_normal((2, 3, 40, 56)).astype(np.float32)  # another batch and size: dynamic axes
    aux = rng.standard_normal((2, 1, 40, 56)).astype(np.float32)
    np.testing.assert_allclose(ort_backend.infer(rgb, aux), torch_backend.infer(rgb, aux), atol=1e-4)
    # RGB-only: both backends feed zeros for the lost modality
    np.testing.assert_allclose(ort_backend.infer(rgb, None), torch_backend.infer(rgb, np.zeros_like(aux)), atol=1e-4)
    with pytest.raises(RgbtSegError, match="opset"):
        export_onnx(net, card, tmp_path / "old.onnx", opset=16)
    assert not (tmp_path / "old.onnx").exists()


def test_an_onnx_file_whose_card_does_not_match_its_graph_is_refused_at_load(tmp_path):
    import onnx

    from rgbt_seg_ros.inference.artifact import CARD_KEY

    export_onnx(TinyFusion().eval(), _card(), tmp_path / "static.onnx", dynamic=False)
    for change in ({"input_size": [96, 128]}, {"aux_channels": 3}):
        model = onnx.load(str(tmp_path / "static.onnx"))
        entry = next(p for p in model.metadata_props if p.key == CARD_KEY)
        entry.value = json.dumps({**json.loads(entry.value), **change})
        onnx.save(model, str(tmp_path / "edited.onnx"))
        with pytest.raises(RgbtSegError, match="edited.onnx: the graph's input .* but its card says"):
            OnnxBackend(tmp_path / "edited.onnx")
    with pytest.raises(RgbtSegError, match="backend onnxruntime-CPU-fp32: "):  # a size the graph cannot take
        OnnxBackend(tmp_path / "static.onnx").infer(np.zeros((1, 3, 40, 56), np.float32),
                                                      np.zeros((1, 1, 40, 56), np.float32))


def test_export_refuses_a_graph_that_does_not_match(tmp_path):
    class Dropouty(TinyFusion):
        def forward(self, rgb, aux):  # differs between the traced call and every later one
            return super().forward(rgb, aux) + torch.rand(1)

    with pytest.raises(RgbtSegError, match="differs from torch"):
        export_onnx(Dropouty().eval(), _card(), tmp_path / "bad.onnx")
    assert not list(tmp_path.iterdir())

    class NanInTheGraph(TinyFusion):
        def forward(self, rgb, aux):  # finite in torch, NaN in a third of the exported graph's logits
            out = super().forward(rgb, aux)
            if torch.onnx.is_in_onnx_export():
                out = torch.cat([out[:, :1] * float("nan"), out[:, 1:]], 1)
            return out

    with pytest.raises(RgbtSegError, match="differs from torch by inf"):
        export_onnx(NanInTheGraph().eval(), _card(), tmp_path / "nan.onnx")
    assert not list(tmp_path.iterdir())


def test_registry_model_file_round_trip(tmp_path):
    spec = get_network_spec("fusion_baseline")
    net = create_network("fusion_baseline", 6, variant=spec.smallest_variant).eval()
    card = _card(k=6)
    card.variant = spec.smallest_variant
    path = save_model(tmp_path / "m.safetensors", net.state_dict(), card, dtype=torch.float16)
    backend = create_backend(path)
    assert backend.card == card and backend.name == "torch-cpu-fp32"
    rgb = np.random.default_rng(0).standard_normal((1, 3, 64, 80)).astype(np.float32)
    out = backend.infer(rgb, None)
    assert out.shape == (1, 6, 64, 80) and np.isfinite(out).all()
    # the card names the network; weights of another variant must not load silently
    other = [v for v in spec.variants if v != spec.smallest_variant]
    if other:
        card.variant = other[0]
        save_model(tmp_path / "wrong.safetensors", net.state_dict(), card)
        with pytest.raises(ModelFileError, match="do not fit"):
            load_model(tmp_path / "wrong.safetensors")


def test_malformed_cards_and_files_are_one_line_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    from rgbt_seg_ros.inference import exported_onnx_for
    from rgbt_seg_ros.inference.artifact import CARD_KEY

    spec = get_network_spec("fusion_baseline")
    net = create_network("fusion_baseline", 4, variant=spec.smallest_variant).eval()
    good = json.loads(_card(variant=spec.smallest_variant).to_json())
    for change, expected in (({"format_version": "2.1"}, "format_version must be an integer"),
                             ({"input_size": 5}, "input_size"), ({"input_size": [48]}, "input_size must be"),
                             ({"class_names": None}, "malformed field"),
                             ({"num_classes": "three"}, "malformed field"),
                             ({"network": "no_such_net"}, "the card's network cannot be built")):
        path = tmp_path / "bad.safetensors"
        tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
        save_file(tensors, str(path), metadata={CARD_KEY: json.dumps({**good, **change})})
        with pytest.raises(ModelFileError) as info:
            load_model(path)
        assert str(path) in str(info.value) and expected in str(info.value) and "\n" not in str(info.value), change
    # a half-copied .onnx: named when asked for; beside a .safetensors it is simply not an export of it
    path = save_model(tmp_path / "m.safetensors", net.state_dict(), _card(variant=spec.smallest_variant))
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelFileError, match=r"m.onnx: not a readable ONNX file"):
        read_card(tmp_path / "m.onnx")
    assert exported_onnx_for(path) is None and create_backend(path).name.startswith("torch")
    with pytest.raises(ModelFileError, match="an ONNX file holds no torch weights"):
        load_model(tmp_path / "m.onnx")
    # weights of another shape: the keys that do not fit are named
    state = dict(net.state_dict())
    state.pop(next(iter(state)))
    save_model(tmp_path / "short.safetensors", state, _card(variant=spec.smallest_variant))
    with pytest.raises(ModelFileError, match="do not fit network fusion_baseline/.*: missing "):
        load_model(tmp_path / "short.safetensors")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_save_model_file_mode_follows_the_umask_like_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        (tmp_path / "m.safetensors.partial").write_bytes(b"")  # a crashed run's leftover must not set the mode
        os.chmod(tmp_path / "m.safetensors.partial", 0o600)
        path = save_model(tmp_path / "m.safetensors", TinyFusion().state_dict(), _card())
        with open(tmp_path / "reference", "w"):
            pass
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "reference").st_mode) == 0o666 & ~umask
    assert not (tmp_path / "m.safetensors.partial").exists()
    assert read_card(path) == _card()


@pytest.mark.slow  # torch.compile builds its kernels on the first call: tens of seconds on 2 cores
def test_torch_compile_mode_matches_eager():
    torch.manual_seed(0)
    net = create_network("fusion_baseline", 3, variant="mobilenetv3_small_100").eval()
    card = ModelCard(network="fusion_baseline", variant="mobilenetv3_small_100", num_classes=3,
                     class_names=["a", "b", "c"], palette=[[0, 0, 0]] * 3, input_size=(64, 96))
    rgb = np.random.default_rng(0).standard_normal((1, 3, 64, 96)).astype(np.float32)
    aux = np.random.default_rng(1).standard_normal((1, 1, 64, 96)).astype(np.float32)
    eager = TorchBackend(net, card).infer(rgb, aux)
    compiled = TorchBackend(net, card, compile_mode="default")
    assert compiled.name == "torch-cpu-fp32-default"
    np.testing.assert_allclose(compiled.infer(rgb, aux), eager, atol=1e-4)
    with pytest.raises(RgbtSegError, match="compile_mode"):
        TorchBackend(net, card, compile_mode="max")


def test_backend_auto_times_torch_against_the_verified_onnx_export(tmp_path, capsys):
    from rgbt_seg_ros.cli import main as cli_main
    from rgbt_seg_ros.inference import builtin_model_path, exported_onnx_for

    model = tmp_path / "m.safetensors"
    model.write_bytes(builtin_model_path().read_bytes())
    alone = create_backend(model)  # no export beside it: torch, nothing timed
    assert alone.name == "torch-cpu-fp32" and getattr(alone, "selection", None) is None
    # an .onnx beside it made from other weights (no source hash) is not taken for an export of this file
    net, card = load_model(model)
    export_onnx(net, card, tmp_path / "m.onnx")
    assert exported_onnx_for(model) is None and getattr(create_backend(model), "selection", None) is None
    assert cli_main(["export", str(model), "--force"]) == 0  # records the source file's SHA-256
    assert exported_onnx_for(model) == tmp_path / "m.onnx"
    chosen = create_backend(model)
    sel = chosen.selection
    assert sel.startswith("backend auto: ") and "torch-cpu-fp32" in sel and "onnxruntime-CPU-fp32" in sel
    assert sel.endswith(f"chose {chosen.name}") and "median of 5 calls at 144×256" in sel
    timed = [float(part.rsplit(" ", 2)[1]) for part in sel.split(": ", 1)[1].split(" (")[0].split(", ")]
    assert len(timed) == 2 and timed[0] <= timed[1] and min(timed) > 0  # the faster one listed first, chosen
    assert create_backend(model, backend="torch").name == "torch-cpu-fp32"  # an explicit choice is kept
    assert create_backend(model, precision="bf16").name == "torch-cpu-bf16"  # onnxruntime cannot run bf16
    save_model(model, net.state_dict(), ModelCard(**{**card.__dict__, "notes": "retrained"}))
    assert exported_onnx_for(model) is None  # the weights file changed: the export no longer counts


def test_backend_choices_and_help_are_the_same_everywhere():
    from rgbt_seg_ros import inference, tools
    from rgbt_seg_ros.ros import params

    assert tools.BACKENDS == params.BACKENDS == inference.BACKENDS
    assert tools.BACKEND_HELP[1:] == params.BACKEND_HELP[1:]  # the node's starts with a capital
