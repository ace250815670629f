"""mafs / mafs_s (seed 002): size pins, invertible fusion decoder, fused image range, train/eval outputs and
loading a mafs checkpoint into the segmentation-only graph.

The shared contract (odd sizes, backward, determinism, ONNX parity, learning) lives in test_networks.py.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.networks import create_network, get_network_spec
from rgbt_seg_ros.networks.complexity import count_parameters, network_complexity
from rgbt_seg_ros.networks.mafs import InvertibleChain, InvertibleUnit

PAPER = {"mafs": (128.69, 324.22), "mafs_s": (128.41, 221.08)}
# Measured with timm 1.0.31, variant resnet152, 9 classes, thermal (1 channel), 1×640×480, eval mode;
# GMACs = FlopCounterMode FLOPs / 2, counted through complexity_forward: forward_fused (logits + fused
# image) for mafs, forward for mafs_s. Params are +0.2 % off the paper; GMACs -2.5 % (mafs) and +5.2 % (mafs_s).
# mafs - mafs_s is the full-resolution fusion branch: 0.275 M params / 83.4 GMACs (paper: 0.28 M / 103 G).
MEASURED = {"mafs": (128_983_559, 316.13), "mafs_s": (128_704_742, 232.68)}
# The smallest variant ``tiny`` (half-width resnet10t, not in the paper), measured the same way: 2.75 M /
# 12.42 GMACs (mafs), 2.73 M / 8.03 GMACs (mafs_s); the fusion branch is 0.015 M / 4.4 GMACs of it.
MEASURED_TINY = {"mafs": (2_749_327, 12.42), "mafs_s": (2_734_482, 8.03)}


def _full_graph_gmacs(net) -> float:
    rgb, aux = torch.empty(1, 3, 480, 640, device="meta"), torch.empty(1, 1, 480, 640, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net.complexity_forward(rgb, aux)  # = forward_fused for mafs
    return counter.get_total_flops() / 2e9


@pytest.fixture(scope="module")
def small_pair():
    torch.manual_seed(0)
    full = create_network("mafs", 5, variant="tiny")
    seg = create_network("mafs_s", 5, variant="tiny")
    return full, seg


def test_registry_entries():
    for name, figures in PAPER.items():
        spec = get_network_spec(name)
        assert spec.default_variant == "resnet152" and spec.smallest_variant == "tiny"
        assert "resnet18" in spec.variants
        assert spec.paper_figures == {"resnet152": figures}


def test_tiny_size_pins():
    for name, (params_pin, gmacs_pin) in MEASURED_TINY.items():
        with torch.device("meta"):
            net = create_network(name, 9, variant="tiny").eval()
        params, gmacs = count_parameters(net), _full_graph_gmacs(net)
        assert params == pytest.approx(params_pin, rel=1e-4), (name, params)
        assert gmacs == pytest.approx(gmacs_pin, rel=0.01), (name, gmacs)
        assert network_complexity(name, "tiny") == pytest.approx((params / 1e6, gmacs), rel=1e-9)


def test_tiny_variant_tiered_stem_and_no_imagenet_weights():
    with torch.device("meta"):
        net = create_network("mafs_s", 9, variant="tiny")
    # resnet10t: the whole tiered 3-conv stem is replaced by the shallow extractor; /2 width = stem width 32.
    for stages in (net.stages_rgb, net.stages_aux):
        assert not any(isinstance(m, torch.nn.Conv2d) for m in stages[0].modules())
        assert stages[0][0].num_features == 32
    assert net.shallow_dim == 32 and net.shallow_rgb.down[-1].out_channels == 32
    assert net.stages_rgb[4][-1][-1].conv2.out_channels == 256
    for name in PAPER:
        with pytest.raises(RgbtSegError, match="'tiny'.*ImageNet"):
            create_network(name, 9, variant="tiny", pretrained=True)


@pytest.mark.slow
def test_paper_size_pins():
    gmacs_seg = None
    for name, (paper_params, paper_gmacs) in PAPER.items():
        with torch.device("meta"):
            net = create_network(name, 9, variant="resnet152").eval()
        params = count_parameters(net)
        gmacs = _full_graph_gmacs(net)
        if name == "mafs_s":  # the shared counter (plain forward) agrees on the segmentation-only graph
            assert network_complexity(name, "resnet152")[1] == pytest.approx(gmacs, rel=1e-9)
        assert abs(params / 1e6 - paper_params) / paper_params <= 0.05, (name, params)
        assert abs(gmacs - paper_gmacs) / paper_gmacs <= 0.15, (name, gmacs)
        assert params == pytest.approx(MEASURED[name][0], rel=1e-4)
        assert gmacs == pytest.approx(MEASURED[name][1], rel=0.01)
        if name == "mafs":
            branch = count_parameters(net.fusion_branch)
            assert 0.2e6 <= branch <= 0.35e6, branch
            assert params - branch == MEASURED["mafs_s"][0]
            gmacs_full = gmacs
        else:
            gmacs_seg = gmacs
    # Essentially all the extra compute of the full graph is the full-resolution fusion branch.
    assert 70 <= gmacs_full - gmacs_seg <= 110


def test_backbone_variants_and_aux_stem():
    with torch.device("meta"):
        thermal = create_network("mafs_s", 9, variant="resnet50")
        hha = create_network("mafs_s", 9, modality="depth", variant="resnet18", aux_channels=3)
    assert thermal.shallow_aux.full[0].weight.shape[1] == 1
    assert thermal.shallow_rgb.full[0].weight.shape[1] == 3
    assert hha.shallow_aux.full[0].weight.shape[1] == 3
    # The 7×7 ResNet stem conv is replaced by the shallow extractor (stage 0 = stem BN + ReLU only).
    assert not any(isinstance(m, torch.nn.Conv2d) for m in thermal.stages_rgb[0].modules())
    assert thermal.stages_rgb[4][0][-1].conv3.out_channels == 2048  # resnet50 layer4 bottleneck


def _randomise(module: torch.nn.Module, scale: float = 0.05) -> None:
    # Couplings start at the identity (zero last layer); give them real s and t to test invertibility.
    # float64 so the check measures the algebra, not float32 round-off amplified through the subnets.
    module.double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale)


def test_affine_coupling_follows_eq6_7_and_inverts():
    unit = InvertibleUnit(8, growth=6, clamp=1.0)
    _randomise(unit, 0.2)
    x = torch.randn(2, 8, 9, 11, dtype=torch.float64)
    y = unit(x)
    x1, x2 = x[:, :4], x[:, 4:]
    s1, t1 = unit.st1(x2)
    y1 = x1 * torch.exp(torch.tanh(s1)) + t1
    s2, t2 = unit.st2(y1)
    y2 = x2 * torch.exp(torch.tanh(s2)) + t2
    torch.testing.assert_close(y, torch.cat([y1, y2], 1))
    assert (y - x).abs().max() > 0.1  # not the identity
    torch.testing.assert_close(unit.inverse(y), x, atol=1e-10, rtol=1e-10)


def test_invertible_chain_inverse_of_forward(small_pair):
    full, _ = small_pair
    assert isinstance(full.fusion_branch.decoder.chain, InvertibleChain)
    assert len(full.fusion_branch.decoder.chain.units) == 2
    chain = InvertibleChain(16, units=5, growth=8)  # the resnet152 configuration: 32 channels would do as well
    _randomise(chain)
    x = torch.randn(1, 16, 13, 17, dtype=torch.float64)
    states = chain(x)
    assert len(states) == 5 and (states[-1] - x).abs().max() > 1.0
    torch.testing.assert_close(chain.inverse(states[-1]), x, atol=1e-9, rtol=1e-9)
    # Each unit on its own, too.
    for unit, before, after in zip(chain.units, [x] + states[:-1], states):
        torch.testing.assert_close(unit.inverse(after), before, atol=1e-9, rtol=1e-9)


def test_fused_image_is_grayscale_in_range(small_pair):
    full, _ = small_pair
    full.eval()
    rgb, aux = torch.randn(2, 3, 45, 77) * 50, torch.randn(2, 1, 45, 77) * 50  # extreme inputs
    with torch.no_grad():
        logits, fused = full.forward_fused(rgb, aux)
        plain = full(rgb, aux)
    assert fused.shape == (2, 1, 45, 77) and logits.shape == (2, 5, 45, 77)
    assert fused.min() >= -1 and fused.max() <= 1
    assert fused.std() > 0  # an image, not a constant
    torch.testing.assert_close(logits, plain)  # the fused image does not change the segmentation


def test_train_outputs(small_pair):
    full, seg = small_pair
    rgb, aux = torch.randn(2, 3, 50, 70), torch.randn(2, 1, 50, 70)
    for net in (full, seg):
        net.train()
        out = net(rgb, aux)
        assert out["logits"].shape == (2, 5, 50, 70)
        assert [a.shape[1] for a in out["aux_logits"]] == [5, 5, 5]
        assert out["boundary"].shape == (2, 1, 50, 70) and out["binary"].shape == (2, 1, 50, 70)
        assert ("fused" in out) == (net is full)
        if net is full:
            assert out["fused"].shape == (2, 1, 50, 70)
    full.eval()
    seg.eval()


def test_mafs_checkpoint_loads_into_mafs_s(small_pair):
    full, seg = small_pair
    full_sd, seg_sd = full.state_dict(), seg.state_dict()
    extra = set(full_sd) - set(seg_sd)
    assert extra and all(k.startswith("fusion_branch.") for k in extra)
    assert set(seg_sd) <= set(full_sd)
    assert all(full_sd[k].shape == seg_sd[k].shape for k in seg_sd)
    with pytest.raises(RuntimeError):
        seg.load_state_dict(full_sd, strict=True)
    # Perturb BN statistics so equality below means the weights really moved over.
    for m in full.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    seg.load_full_state_dict(full.state_dict())
    full.eval()
    seg.eval()
    rgb, aux = torch.randn(1, 3, 40, 56), torch.randn(1, 1, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(seg(rgb, aux), full(rgb, aux), atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise_one_line_errors(small_pair):
    full, seg = small_pair
    seg.eval()
    with pytest.raises(RgbtSegError, match="no fusion decoder"):
        seg.forward_fused(torch.zeros(1, 3, 32, 32), torch.zeros(1, 1, 32, 32))
    with pytest.raises(RgbtSegError, match="'aux'"):
        full.forward_fused(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32))
    with pytest.raises(RgbtSegError, match="variant"):
        from rgbt_seg_ros.networks.mafs import build_mafs
        build_mafs(num_classes=3, modality="thermal", variant="resnet9", pretrained=False, aux_channels=1)
