"""ONNX graphs whose inputs are not exactly {rgb, aux}: export parity and the onnxruntime backend feed only
what the graph declares, and refuse (one line) an input they cannot supply. Real exports, no mocks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.inference.artifact import CARD_KEY, ModelCard
from rgbt_seg_ros.inference.export import export_onnx
from rgbt_seg_ros.inference.onnx_backend import OnnxBackend
from rgbt_seg_ros.networks import create_network, get_network_spec

SIZES = ((32, 48), (40, 56))


def _rgb_only():
    torch.manual_seed(0)
    variant = get_network_spec("rgb_only").smallest_variant
    net = create_network("rgb_only", 3, variant=variant).eval()
    card = ModelCard(network="rgb_only", variant=variant, num_classes=3, class_names=["a", "b", "c"],
                     palette=[[0, 0, 0], [255, 0, 0], [0, 255, 0]], input_size=SIZES[0])
    return net, card


class IgnoresAux(torch.nn.Module):
    """rgb_only fed zeros made from rgb: 'aux' is never read, so the exporter prunes it from the graph, as it
    does for any network that ignores aux (rgb_only itself keeps 'aux' with an empty-slice trick)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, rgb, aux):
        return self.net(rgb, torch.zeros_like(rgb[:, :1]))


def _inputs(shape, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, 3, *shape)).astype(np.float32), rng.standard_normal((2, 1, *shape)).astype(np.float32)


def test_rgb_only_export_matches_torch(tmp_path):
    net, card = _rgb_only()
    report = export_onnx(net, card, tmp_path / "rgb_only.onnx", check_sizes=SIZES)
    assert report.max_abs_diff <= 1e-3 and set(report.inputs) <= {"rgb", "aux"} and "rgb" in report.inputs
    backend = OnnxBackend(tmp_path / "rgb_only.onnx")
    assert backend.inputs == report.inputs
    rgb, aux = _inputs((36, 52))  # another batch and size than the export checked
    with torch.no_grad():
        expected = net(torch.from_numpy(rgb), torch.from_numpy(aux)).numpy()
    np.testing.assert_allclose(backend.infer(rgb, aux), expected, atol=1e-4)
    np.testing.assert_allclose(backend.infer(rgb, None), expected, atol=1e-4)  # rgb_only ignores aux


def test_graph_without_aux_exports_and_runs(tmp_path):
    net, card = _rgb_only()
    wrapped = IgnoresAux(net).eval()
    report = export_onnx(wrapped, card, tmp_path / "pruned.onnx", check_sizes=SIZES)
    assert report.inputs == ("rgb",) and report.max_abs_diff <= 1e-3  # parity checked with rgb alone
    backend = OnnxBackend(tmp_path / "pruned.onnx")
    assert backend.inputs == ("rgb",)
    rgb, aux = _inputs((36, 52))
    with torch.no_grad():
        expected = net(torch.from_numpy(rgb), torch.zeros(2, 1, 36, 52)).numpy()
    assert expected.shape == (2, 3, 36, 52)
    np.testing.assert_allclose(backend.infer(rgb, aux), expected, atol=1e-4)  # aux given, graph has no use for it
    np.testing.assert_allclose(backend.infer(rgb, None), expected, atol=1e-4)


def test_graph_input_the_backend_cannot_supply(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    _, card = _rgb_only()
    dims = ["n", 3, "h", "w"]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["rgb"], ["logits"])], "extra_input",
        [helper.make_tensor_value_info("rgb", TensorProto.FLOAT, dims),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["n", 1, "h", "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_KEY, card.to_json()
    path = tmp_path / "extra.onnx"
    onnx.save(model, path)
    with pytest.raises(RgbtSegError) as err:
        OnnxBackend(path)
    text = str(err.value)
    assert "\n" not in text and str(path) in text and "'mask'" in text
