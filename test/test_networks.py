"""Registry-wide network contract, parametrized over every registered network's smallest variant.

Each network: eval logits B×K×H×W on sizes that are not multiples of 32; a train-mode dict with "logits";
finite gradients reaching its parameters; deterministic eval; ONNX export (opset 17, dynamic batch and
spatial axes unless the network sets ``onnx_dynamic = False``) matching torch fp32 within 1e-3 under
onnxruntime CPU; and (slow) it learns synthetic RGB-T scenes. A network still a placeholder module is not
registered, so it simply does not appear here.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.networks import MODALITIES, create_network, get_network_spec, list_networks
from rgbt_seg_ros.networks.blocks import (FAM, PPM, SegmentationNet, adaptive_avg_pool, backbone_stages,
                                          create_backbone, flow_warp, pad_to_multiple)
from rgbt_seg_ros.networks.complexity import count_macs, count_parameters, network_complexity

SPECS = list_networks()
IDS = [s.name for s in SPECS]
NUM_CLASSES = 5
ONNX_TOLERANCE = 1e-3


def _inputs(batch: int, h: int, w: int, aux_channels: int = 1, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, h, w, generator=gen), torch.randn(batch, aux_channels, h, w, generator=gen)


def _build(spec, **kwargs):
    torch.manual_seed(0)
    return create_network(spec.name, NUM_CLASSES, variant=spec.smallest_variant, **kwargs)


# ------------------------------------------------------------------------------------------------ registry

def test_registry_lists_baselines_and_seed_networks():
    names = {s.name for s in SPECS}
    assert {"rgb_only", "fusion_baseline", "nested_dff", "fafnet"} <= names
    for spec in SPECS:
        assert spec.default_variant in spec.variants and spec.smallest_variant in spec.variants


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(name="no_such_net"), "fusion_baseline"),  # lists the known networks
    (dict(name="fusion_baseline", variant="resnet9000"), "mobilenetv3_small_100"),  # lists the variants
    (dict(name="fusion_baseline", modality="lidar"), "thermal"),  # lists the modalities
    (dict(name="fusion_baseline", aux_channels=2), "aux_channels"),
    (dict(name="fusion_baseline", num_classes=1), "num_classes"),
])
def test_registry_rejects_bad_requests_naming_the_choices(kwargs, fragment):
    kwargs = {"num_classes": 3, **kwargs}
    with pytest.raises(RgbtSegError) as info:
        create_network(**kwargs)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_network_checks_its_inputs():
    net = create_network("fusion_baseline", 3, variant="mobilenetv3_small_100").eval()
    rgb, aux = _inputs(1, 32, 32)
    with pytest.raises(RgbtSegError, match="'aux'"):
        net(rgb, torch.randn(1, 3, 32, 32))
    with pytest.raises(RgbtSegError, match="'rgb'"):
        net(rgb[:, :1], aux)
    with pytest.raises(RgbtSegError, match="differ"):
        net(rgb, aux[..., :16])


# ------------------------------------------------------------------------------------------------ blocks

def test_pad_to_multiple_and_crop_back():
    x = torch.randn(1, 2, 33, 70)
    padded = pad_to_multiple(x, 32)
    assert padded.shape[-2:] == (64, 96)
    assert torch.equal(padded[..., :33, :70], x) and padded[..., 33:, :].abs().sum() == 0


@pytest.mark.parametrize("hw", [(5, 7), (13, 9), (30, 40)])
def test_adaptive_avg_pool_matches_torch(hw):
    x = torch.randn(2, 3, *hw)
    for bins in (1, 2, 3, 6):
        assert torch.allclose(adaptive_avg_pool(x, bins), F.adaptive_avg_pool2d(x, bins), atol=1e-6)


def test_flow_warp_zero_flow_is_bilinear_and_shift_moves_content():
    coarse = torch.randn(1, 4, 6, 8)
    zero = torch.zeros(1, 2, 12, 16)
    expected = F.interpolate(coarse, size=(12, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(flow_warp(coarse, zero), expected, atol=1e-5)
    fine = torch.randn(1, 1, 8, 8)
    shift = torch.zeros(1, 2, 8, 8)
    shift[:, 0] = 1.0  # sample one pixel to the right
    assert torch.allclose(flow_warp(fine, shift)[..., :, :-1], fine[..., :, 1:], atol=1e-5)


def test_fam_starts_as_upsampling_and_learns_a_flow():
    fam = FAM(8, 16, 8)
    low, high = torch.randn(2, 8, 12, 16), torch.randn(2, 16, 6, 8)
    out = fam(low, high)
    assert out.shape == (2, 8, 12, 16)
    assert torch.allclose(out, F.interpolate(fam.high(high), size=(12, 16), mode="bilinear"), atol=1e-5)
    out.square().mean().backward()
    assert fam.flow.weight.grad.abs().sum() > 0  # the zero-initialised flow conv still gets a gradient


def test_ppm_keeps_size():
    assert PPM(32, 16)(torch.randn(2, 32, 9, 13)).shape == (2, 16, 9, 13)


def test_backbone_stages_reproduce_features_only_outputs():
    features = create_backbone("resnet18", in_chans=1, output_stride=16).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        expected = features(x)
        got = []
        for stage in backbone_stages(features):
            x = stage(x)
            got.append(x)
    assert [g.shape for g in got] == [e.shape for e in expected]
    assert expected[-1].shape[-1] == 4  # output stride 16: last stage dilated, not strided
    assert all(torch.equal(g, e) for g, e in zip(got, expected))


@pytest.mark.slow
def test_complexity_on_meta_equals_a_real_count():
    net = create_network("fusion_baseline", 9, variant="mobilenetv3_small_100")
    params_m, gmacs = network_complexity("fusion_baseline", "mobilenetv3_small_100", h=128, w=160)
    assert params_m * 1e6 == count_parameters(net)
    # A hand-countable case: one 3×3 conv, 3 → 8 channels, 10×10, padding 1 → 3·8·9·100 MACs.
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    class OneConv(SegmentationNet):
        def __init__(self):
            super().__init__(8, 1)
            self.conv = conv

        def forward_padded(self, rgb, aux):
            return self.conv(rgb)

    assert count_macs(OneConv(), 32, 32) == pytest.approx(3 * 8 * 9 * 32 * 32 / 1e9)
    assert gmacs == pytest.approx(count_macs(net, 128, 160), rel=1e-9) and gmacs > 0


def test_count_macs_prefers_complexity_forward():
    class TwoGraphs(SegmentationNet):
        """Eval forward: one 1×1 conv; complexity_forward adds a second branch the paper counts."""

        def __init__(self):
            super().__init__(4, 1)
            self.seg = torch.nn.Conv2d(3, 4, 1)
            self.extra = torch.nn.Conv2d(1, 2, 1)

        def forward_padded(self, rgb, aux):
            return self.seg(rgb)

    plain = TwoGraphs()
    assert count_macs(plain, 32, 32) == pytest.approx(3 * 4 * 32 * 32 / 1e9)
    plain.complexity_forward = lambda rgb, aux: (plain(rgb, aux), plain.extra(aux))
    assert count_macs(plain, 32, 32) == pytest.approx((3 * 4 + 1 * 2) * 32 * 32 / 1e9)


# ------------------------------------------------------------------------------------------------ contract

@pytest.fixture(scope="module", params=SPECS, ids=IDS)
def small_net(request):
    spec = request.param
    return spec, _build(spec)


def test_eval_logits_shape_on_odd_sizes(small_net):
    spec, net = small_net
    net.eval()
    for batch, h, w in ((1, 72, 88), (2, 50, 66)):
        with torch.no_grad():
            out = net(*_inputs(batch, h, w))
        assert isinstance(out, torch.Tensor) and out.shape == (batch, NUM_CLASSES, h, w), spec.name
        assert torch.isfinite(out).all()


def test_train_mode_dict_and_backward(small_net):
    spec, net = small_net
    net.train()
    rgb, aux = _inputs(2, 72, 88)
    out = net(rgb, aux)
    assert isinstance(out, dict) and out["logits"].shape == (2, NUM_CLASSES, 72, 88), spec.name
    for extra in out.get("aux_logits", []):
        assert extra.shape[:2] == (2, NUM_CLASSES)
    target = torch.randint(0, NUM_CLASSES, (2, 72, 88))
    net.zero_grad(set_to_none=True)
    _, loss = _train_loss(out, target)
    # Other train-mode outputs (e.g. a fused image) have their own losses: let them reach their parameters too.
    loss = loss + sum(v.mean() for k, v in out.items() if isinstance(v, torch.Tensor) and k != "logits")
    loss.backward()
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    without = [n for n, p in params if p.grad is None]
    assert all(torch.isfinite(p.grad).all() for _, p in params if p.grad is not None)
    # Parameters that no output reaches are dead weight (and break DistributedDataParallel).
    assert len(without) <= 0.1 * len(params), f"{spec.name}: no gradient for {without[:8]}"
    assert sum(float(p.grad.abs().sum()) for _, p in params if p.grad is not None) > 0


@pytest.mark.parametrize("blank", ["aux", "rgb"])
def test_gradients_stay_finite_when_modality_dropout_blanks_the_whole_batch(small_net, blank):
    # Modality dropout (training/datasets.py) zeroes the standardised aux (or RGB) input; in a small batch every
    # sample can be dropped at once. At init that once gave NaN gradients (fusion_baseline: BatchNorm on a batch
    # of exact zeros), which the trainer then silently skipped.
    spec, net = small_net
    net.train()
    rgb, aux = _inputs(2, 64, 96, seed=7)
    rgb, aux = (rgb, torch.zeros_like(aux)) if blank == "aux" else (torch.zeros_like(rgb), aux)
    net.zero_grad(set_to_none=True)
    out = net(rgb, aux)
    _, loss = _train_loss(out, torch.randint(0, NUM_CLASSES, (2, 64, 96), generator=torch.Generator().manual_seed(7)))
    loss = loss + sum(v.mean() for k, v in out.items() if isinstance(v, torch.Tensor) and k != "logits")
    loss.backward()
    bad = [n for n, p in net.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"{spec.name}, {blank} all zeros: non-finite gradient in {len(bad)} tensors, e.g. {bad[:3]}"


def test_eval_is_deterministic_and_batch_independent(small_net):
    spec, net = small_net
    net.eval()
    rgb, aux = _inputs(2, 64, 80, seed=3)
    with torch.no_grad():
        first, second = net(rgb, aux), net(rgb, aux)
        single = net(rgb[1:], aux[1:])
    assert torch.equal(first, second), spec.name
    assert torch.allclose(first[1:], single, atol=1e-4), spec.name


def test_aux_input_is_used_exactly_when_the_network_fuses(small_net):
    spec, net = small_net
    net.eval()
    rgb, aux = _inputs(1, 64, 64, seed=5)
    with torch.no_grad():
        diff = (net(rgb, aux) - net(rgb, torch.zeros_like(aux))).abs().max()
    if spec.name == "rgb_only":
        assert diff == 0
    else:
        assert diff > 1e-6, f"{spec.name} ignores the thermal/depth input"


def _onnx_parity(net: torch.nn.Module, export_hw: tuple[int, int], check: list[tuple[int, int, int]],
                 dynamic: bool, aux_channels: int = 1) -> float:
    """Export ``net`` (eval, fp32) to ONNX opset 17, run onnxruntime CPU at each (batch, h, w) in ``check``;
    return the worst max-abs difference to torch."""
    import onnx
    from rgbt_seg_ros.inference.export import onnx_session

    net = net.float().eval()
    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, _inputs(1, *export_hw, aux_channels), buffer, input_names=["rgb", "aux"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"rgb": axes, "aux": axes, "logits": axes} if dynamic else None)
    model = onnx.load_from_string(buffer.getvalue())
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    session = onnx_session(buffer.getvalue())
    assert [i.name for i in session.get_inputs()] == ["rgb", "aux"]
    worst = 0.0
    for i, (batch, h, w) in enumerate(check):
        rgb, aux = _inputs(batch, h, w, aux_channels, seed=10 + i)
        with torch.no_grad():
            expected = net(rgb, aux).numpy()
        got = session.run(["logits"], {"rgb": rgb.numpy(), "aux": aux.numpy()})[0]
        assert got.shape == expected.shape
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


@pytest.mark.slow  # export + onnxruntime sessions: seconds per network
def test_onnx_export_matches_torch(small_net):
    spec, net = small_net
    dynamic = getattr(net, "onnx_dynamic", True)
    checks = [(1, 64, 64), (2, 72, 88)] if dynamic else [(1, 64, 64)]
    worst = _onnx_parity(net, (64, 64), checks, dynamic)
    assert worst <= ONNX_TOLERANCE, f"{spec.name}: onnxruntime differs from torch by {worst:.2e}"


# ------------------------------------------------------------------------------------------------ learning

def _synthetic_batches(count: int, seed: int, h: int = 64, w: int = 64):
    """RGB-T frames of the synthetic road-scene generator, normalised as a model card would."""
    from rgbt_seg_ros.synthetic.scenes import NUM_CLASSES as SYN_CLASSES, SceneGenerator, thermal_celsius

    gen = SceneGenerator(seed=seed)
    frames = [gen.frame(i, h, w, night=bool(i % 2), modality="thermal") for i in range(count)]
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    rgb = torch.stack([(torch.from_numpy(f["rgb"]).permute(2, 0, 1).float() / 255 - mean) / std for f in frames])
    thermal = torch.stack([torch.from_numpy((thermal_celsius(f["thermal"]) - 20.0) / 10.0)[None] for f in frames])
    labels = torch.stack([torch.from_numpy(f["labels"].astype(np.int64)) for f in frames])
    return rgb, thermal, labels, SYN_CLASSES


@pytest.fixture(scope="module")
def synthetic_data():
    return _synthetic_batches(24, seed=0), _synthetic_batches(6, seed=1)


def _train_loss(out, target):
    loss = F.cross_entropy(out["logits"], target)
    extra = [F.cross_entropy(F.interpolate(a, size=target.shape[-2:], mode="bilinear", align_corners=False), target)
             for a in out.get("aux_logits", [])]
    return loss, (loss + 0.4 * sum(extra) / len(extra)) if extra else loss


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_smallest_variant_learns_synthetic_scenes(spec, synthetic_data):
    (rgb, thermal, labels, num_classes), (val_rgb, val_thermal, val_labels, _) = synthetic_data
    torch.manual_seed(0)
    net = create_network(spec.name, num_classes, variant=spec.smallest_variant).train()
    optim = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    order = torch.Generator().manual_seed(0)
    losses = []
    for step in range(300):
        idx = torch.randint(0, len(rgb), (4,), generator=order)
        main, total = _train_loss(net(rgb[idx], thermal[idx]), labels[idx])
        optim.zero_grad(set_to_none=True)
        total.backward()
        optim.step()
        losses.append(main.item())
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    net.eval()
    with torch.no_grad():
        pred = net(val_rgb, val_thermal).argmax(1)
    accuracy = float((pred == val_labels).float().mean())
    majority = float(np.bincount(val_labels.numpy().ravel()).max() / val_labels.numel())
    print(f"{spec.name}/{spec.smallest_variant}: loss {first:.3f} -> {last:.3f}, held-out pixel accuracy "
          f"{accuracy:.3f} (majority class {majority:.3f})")
    assert last <= 0.5 * first, f"{spec.name}: training loss {first:.3f} -> {last:.3f}"
    assert accuracy > majority, f"{spec.name}: held-out accuracy {accuracy:.3f} <= majority rate {majority:.3f}"


def test_every_modality_builds():
    for modality in MODALITIES:
        net = create_network("fusion_baseline", 3, modality=modality, variant="mobilenetv3_small_100",
                             aux_channels=3 if modality == "depth" else 1).eval()
        with torch.no_grad():
            out = net(*_inputs(1, 40, 56, 3 if modality == "depth" else 1))
        assert out.shape == (1, 3, 40, 56) and net.modality == modality
        assert get_network_spec("fusion_baseline").name == net.network_name


@pytest.mark.slow
def test_networks_command_lists_params_and_gmacs(capsys):
    import json

    from rgbt_seg_ros.cli import main

    assert main(["networks", "rgb_only", "fusion_baseline", "--variant", "mobilenetv3_small_100", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["network"], r["variant"]) for r in rows] == [("rgb_only", "mobilenetv3_small_100"),
                                                             ("fusion_baseline", "mobilenetv3_small_100")]
    for r in rows:
        params_m, gmacs = network_complexity(r["network"], r["variant"])
        assert r["params_M"] == round(params_m, 3) and r["GMACs"] == round(gmacs, 2) and r["input"] == "640x480"
    assert main(["networks", "rgb_only", "--variant", "mobilenetv3_small_100", "--size", "320x240"]) == 0
    table = capsys.readouterr().out
    assert "multiply-adds" in table and "rgb_only" in table and "320x240" in table
    assert main(["networks", "no_such_net"]) == 2
    assert "no_such_net" in capsys.readouterr().err
