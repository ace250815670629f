"""freqfusion (seed 004): size pins, the frequency split, the gates and the train/eval output contract.

The shared contract (odd sizes, backward, determinism, ONNX parity, learning) lives in test_networks.py.
"""
from __future__ import annotations

import math

import pytest
import torch

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.networks import create_network, get_network_spec
from rgbt_seg_ros.networks.complexity import count_parameters, network_complexity
from rgbt_seg_ros.networks.freqfusion import (FrequencyAwareFusion, GaussianLowPass, SemanticFusion,
                                              gaussian_kernel2d)

PAPER_NANO_PARAMS_M = 35.43
# Measured with timm 1.0.31 (count_parameters; GMACs = FlopCounterMode FLOPs / 2, eval forward, 1×640×480).
MEASURED_NANO_PARAMS = 35_609_304  # num_classes = 9
MEASURED_NANO_GMACS = 50.747
# zepto: the CPU/test variant (ConvNeXt V2 atto at reduced dims/depths, not in the paper), num_classes = 9.
MEASURED_ZEPTO_PARAMS = 1_806_458
MEASURED_ZEPTO_GMACS = 2.798


@pytest.fixture(scope="module")
def atto():
    torch.manual_seed(0)
    return create_network("freqfusion", num_classes=4, variant="atto")


def test_registry_entry():
    spec = get_network_spec("freqfusion")
    assert spec.smallest_variant == "zepto"
    assert {"zepto", "atto", "nano", "tiny", "base"} <= set(spec.variants)
    assert spec.paper_figures["nano"] == (35.43, None)


def test_nano_params_match_paper_and_pin_gmacs():
    params_m, gmacs = network_complexity("freqfusion", "nano", h=480, w=640)
    assert abs(params_m - PAPER_NANO_PARAMS_M) / PAPER_NANO_PARAMS_M <= 0.05, params_m
    assert params_m * 1e6 == pytest.approx(MEASURED_NANO_PARAMS, rel=1e-4)
    assert gmacs == pytest.approx(MEASURED_NANO_GMACS, rel=0.01)


def test_zepto_is_the_smallest_and_pins_params_and_gmacs():
    params_m, gmacs = network_complexity("freqfusion", "zepto", h=480, w=640)
    assert params_m * 1e6 == pytest.approx(MEASURED_ZEPTO_PARAMS, rel=1e-4)
    assert gmacs == pytest.approx(MEASURED_ZEPTO_GMACS, rel=0.01)
    atto_params_m, atto_gmacs = network_complexity("freqfusion", "atto", h=480, w=640)
    assert params_m < 0.25 * atto_params_m and gmacs < 0.25 * atto_gmacs
    with torch.device("meta"):
        net = create_network("freqfusion", 9, variant="zepto")
    blocks = [sum(type(m).__name__ == "ConvNeXtBlock" for m in stage.modules()) for stage in net.rgb_stages]
    assert blocks == [1, 1, 3, 1]
    assert net.config.decoder_dim == 32


def test_zepto_has_no_pretrained_weights():
    with pytest.raises(RgbtSegError, match="zepto"):
        create_network("freqfusion", 4, variant="zepto", pretrained=True)


def test_variants_use_convnextv2_widths_and_one_channel_thermal_stem():
    widths = {"zepto": (24, 48, 96, 192), "atto": (40, 80, 160, 320), "nano": (80, 160, 320, 640), "tiny": (96, 192, 384, 768),
              "base": (128, 256, 512, 1024)}
    for variant, chans in widths.items():
        with torch.device("meta"):
            net = create_network("freqfusion", 9, variant=variant)
        assert net.channels == chans
        assert net.rgb_stages[0][0].weight.shape[1] == 3
        assert net.aux_stages[0][0].weight.shape[1] == 1
    with torch.device("meta"):
        hha = create_network("freqfusion", 9, modality="depth", variant="atto", aux_channels=3)
    assert hha.aux_stages[0][0].weight.shape[1] == 3


def test_atto_fits_the_demo_model_budget(atto):
    # ≤ 20 MB on disk as fp16 (2 bytes per parameter).
    assert count_parameters(atto) * 2 <= 20e6


def test_lowpass_is_a_fixed_normalised_gaussian(atto):
    k = gaussian_kernel2d(7, 2.0)
    assert k.shape == (7, 7)
    assert torch.allclose(k.sum(), torch.tensor(1.0), atol=1e-6)
    # Separable Gaussian with σ = 2: neighbour/centre ratio is exp(-1 / (2σ²)) along each axis.
    assert k[3, 4] / k[3, 3] == pytest.approx(math.exp(-1 / 8), rel=1e-5)
    assert k[0, 0] / k[3, 3] == pytest.approx(math.exp(-18 / 8), rel=1e-5)

    lowpasses = [m for m in atto.modules() if isinstance(m, GaussianLowPass)]
    assert len(lowpasses) == 2  # stages 1 and 2
    param_ids = {id(p) for p in atto.parameters()}
    state_keys = set(atto.state_dict())
    for lp, channels in zip(lowpasses, atto.channels[:2]):
        assert lp.weight.shape == (channels, 1, 7, 7)
        assert id(lp.weight) not in param_ids and not lp.weight.requires_grad
        assert not any(key.endswith("lowpass.weight") for key in state_keys)
        torch.testing.assert_close(lp.weight.sum((1, 2, 3)), torch.ones(channels), rtol=0, atol=1e-6)
        torch.testing.assert_close(lp.weight[0, 0], k)


def test_high_plus_low_reconstructs_and_splits_the_spectrum():
    torch.manual_seed(1)
    lp = GaussianLowPass(5)
    x = torch.randn(2, 5, 48, 40)
    low, high = lp.split(x)
    torch.testing.assert_close(low + high, x, rtol=0, atol=1e-6)
    # White noise through the blur keeps sum(k²) of its variance (≈ 1/(4πσ²) ≈ 0.02 for σ = 2) away from borders.
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))
    expected = float((gaussian_kernel2d(7, 2.0) ** 2).sum())
    assert low[inner].var().item() == pytest.approx(expected, rel=0.25)
    assert high[inner].var().item() > 0.9
    # A constant image is all low band (replicate padding keeps the borders exact too).
    const = torch.full((1, 5, 16, 16), 3.5)
    c_low, c_high = lp.split(const)
    torch.testing.assert_close(c_low, const)
    assert c_high.abs().max().item() < 1e-5


def test_frequency_fusion_gates_in_unit_interval_and_confidence_gates_the_residual():
    torch.manual_seed(2)
    fam = FrequencyAwareFusion(16).eval()
    rgb, aux = torch.randn(2, 16, 24, 20) * 10, torch.randn(2, 16, 24, 20) * 10
    with torch.no_grad():
        out, gates = fam(rgb, aux, return_gates=True)
    assert gates["mix"].shape == rgb.shape
    assert gates["confidence"].shape == (2, 1, 24, 20)
    for name, g in gates.items():
        assert g.min().item() >= 0.0 and g.max().item() <= 1.0, name
        assert g.std().item() > 0, name  # data-dependent, not a constant
    assert not torch.allclose(out, rgb)
    # A closed confidence gate passes the RGB features through unchanged.
    with torch.no_grad():
        fam.confidence[-1].weight.zero_()
        fam.confidence[-1].bias.fill_(-100.0)
        closed = fam(rgb, aux)
    torch.testing.assert_close(closed, rgb)


def test_semantic_fusion_gates_and_learnable_residual_scale():
    torch.manual_seed(3)
    sfm = SemanticFusion(32).eval()
    rgb, aux = torch.randn(2, 32, 6, 5) * 10, torch.randn(2, 32, 6, 5) * 10
    with torch.no_grad():
        out, gates = sfm(rgb, aux, return_gates=True)
    assert gates["channel_rgb"].shape == gates["channel_aux"].shape == (2, 32, 1, 1)
    assert gates["spatial"].shape == (2, 1, 6, 5)
    for name, g in gates.items():
        assert g.min().item() >= 0.0 and g.max().item() <= 1.0, name
    assert not torch.allclose(out, rgb)
    assert isinstance(sfm.gamma, torch.nn.Parameter) and sfm.gamma.requires_grad
    with torch.no_grad():
        sfm.gamma.zero_()
        torch.testing.assert_close(sfm(rgb, aux), rgb)
    # Cross-modal: the RGB channel weights change when only the second modality changes.
    with torch.no_grad():
        _, g2 = sfm(rgb, aux * -1.0 + 2.0, return_gates=True)
    assert not torch.allclose(g2["channel_rgb"], gates["channel_rgb"])


def _count_head_calls(net, rgb, aux):
    calls = []
    heads = [net.aux_head, *net.ds_heads]
    handles = [h.register_forward_hook(lambda m, i, o, idx=k: calls.append(idx)) for k, h in enumerate(heads)]
    try:
        out = net(rgb, aux)
    finally:
        for h in handles:
            h.remove()
    return out, calls


def test_train_mode_returns_deep_supervision_and_eval_skips_it(atto):
    torch.manual_seed(4)
    rgb, aux = torch.randn(2, 3, 50, 70), torch.randn(2, 1, 50, 70)
    atto.train()
    out, calls = _count_head_calls(atto, rgb, aux)
    assert set(out) == {"logits", "aux_logits"}
    assert out["logits"].shape == (2, 4, 50, 70)
    # Padded to 64×96: auxiliary FCN head at stride 16, then PANet levels at strides 4, 8, 16, 32.
    shapes = [tuple(a.shape) for a in out["aux_logits"]]
    assert shapes == [(2, 4, 4, 6), (2, 4, 16, 24), (2, 4, 8, 12), (2, 4, 4, 6), (2, 4, 2, 3)]
    assert sorted(calls) == [0, 1, 2, 3, 4]
    atto.eval()
    with torch.no_grad():
        logits, calls = _count_head_calls(atto, rgb, aux)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 4, 50, 70)
    assert calls == []


def test_depth_hha_forward_and_bad_input():
    torch.manual_seed(5)
    net = create_network("freqfusion", 3, modality="depth", variant="atto", aux_channels=3).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 33, 47), torch.randn(1, 3, 33, 47)).shape == (1, 3, 33, 47)
        with pytest.raises(RgbtSegError, match="aux"):
            net(torch.randn(1, 3, 32, 32), torch.randn(1, 1, 32, 32))
        with pytest.raises(RgbtSegError, match="rgb"):
            net(torch.randn(1, 1, 32, 32), torch.randn(1, 3, 32, 32))
