"""nested_dff (seed 000): size pins, difference fusion, nested decoder layout, CE + Dice loss.

The shared contract (odd sizes, backward, determinism, ONNX parity, learning) lives in test_networks.py.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.networks import create_network, get_network_spec
from rgbt_seg_ros.networks.complexity import network_complexity
from rgbt_seg_ros.networks.nested_dff import DifferenceFusion, Reconstruction, ResidualUp, ce_dice_loss

# The paper gives no parameter or GMAC figures, so these pin what this implementation measures
# (timm 1.0.31, num_classes = 9, GMACs = FlopCounterMode FLOPs / 2 at 1×640×480, eval forward).
MEASURED = {
    "densenet121": (37_317_161, 126.337),
    "densenet169": (55_116_537, 136.313),
    "densenet201": (71_536_665, 152.559),
    "densenet161": (94_374_749, 215.298),
    "tiny": (523_277, 5.382),
}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_network("nested_dff", 4, variant="tiny")


def test_registry_entry():
    spec = get_network_spec("nested_dff")
    assert set(spec.variants) == set(MEASURED)
    assert spec.default_variant == "densenet121" and spec.smallest_variant == "tiny"


# Counting the DenseNet-169/201/161 graphs takes several seconds each on a loaded CPU.
@pytest.mark.parametrize("variant", [v if v == "tiny" else pytest.param(v, marks=pytest.mark.slow)
                                     for v in sorted(MEASURED)])
def test_sizes_are_pinned(variant):
    params_m, gmacs = network_complexity("nested_dff", variant)
    assert round(params_m * 1e6) == MEASURED[variant][0]
    assert gmacs == pytest.approx(MEASURED[variant][1], rel=1e-3)


def test_thermal_stem_takes_one_channel_and_hha_three():
    net = create_network("nested_dff", 4, variant="tiny")
    assert net.rgb_encoder.features_conv0.weight.shape[1] == 3
    assert net.aux_encoder.features_conv0.weight.shape[1] == 1
    net = create_network("nested_dff", 4, modality="depth", variant="tiny", aux_channels=3)
    assert net.aux_encoder.features_conv0.weight.shape[1] == 3


def test_encoder_has_six_levels_down_to_one_sixty_fourth(tiny):
    tiny.eval()
    with torch.no_grad():
        levels = tiny.encode(torch.randn(1, 3, 128, 192), torch.randn(1, 1, 128, 192))
    assert [f.shape[-2:] for f in levels] == [(128 // s, 192 // s) for s in (2, 4, 8, 16, 32, 64)]
    assert levels[-1].shape[1] == levels[-2].shape[1] // 2  # appended transition halves the channels


def test_first_five_levels_are_additions(tiny):
    tiny.eval()
    rgb, aux = torch.randn(1, 3, 64, 64), torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        fused = tiny.encode(rgb, aux)
        expected = [r + a for r, a in zip(tiny.rgb_encoder(rgb), tiny.aux_encoder(aux))]
    assert all(torch.equal(f, e) for f, e in zip(fused[:5], expected))


def test_difference_weights_are_one_minus_softmax():
    torch.manual_seed(0)
    fusion = DifferenceFusion(32)
    rgb, aux = torch.randn(2, 32, 3, 4), torch.randn(2, 32, 3, 4)
    w = fusion.difference_weights(rgb, aux)
    n = 12
    assert w.shape == (2, n, n)
    assert ((w >= 0) & (w <= 1)).all()
    assert torch.allclose(w.sum(-1), torch.full((2, n), n - 1.0), atol=1e-5)
    # Independent computation: similarity of every RGB query with every aux key.
    q = fusion.query(rgb).flatten(2)
    k = fusion.key(aux).flatten(2)
    sim = torch.einsum("bci,bcj->bij", q, k)
    assert torch.allclose(w, 1 - sim.softmax(-1), atol=1e-6)
    # The most similar aux position gets the smallest weight: difference, not similarity, is emphasised.
    assert torch.equal(w.argmin(-1), sim.argmax(-1))


def test_difference_fusion_adds_the_same_complement_to_both_streams():
    torch.manual_seed(0)
    fusion = DifferenceFusion(16)
    rgb, aux = torch.randn(1, 16, 2, 3), torch.randn(1, 16, 2, 3)
    rgb_out, aux_out = fusion(rgb, aux)
    complement = rgb_out - rgb
    assert torch.allclose(aux_out - aux, complement, atol=1e-6) and complement.abs().max() > 0
    # Hand-computed complement: V_aux·Wᵀ + V_rgb·W, W normalised by N.
    w = fusion.difference_weights(rgb, aux) / 6
    v_rgb, v_aux = fusion.value_rgb(rgb).flatten(2), fusion.value_aux(aux).flatten(2)
    expected = (torch.einsum("bcj,bij->bci", v_aux, w) + torch.einsum("bci,bij->bcj", v_rgb, w)).view(1, 16, 2, 3)
    assert torch.allclose(complement, expected, atol=1e-5)


def test_nested_decoder_has_unetpp_layout(tiny):
    # Six levels → nodes X(i, j) with i + j <= 5, j >= 1: 15 nodes, each two 3×3 convolutions.
    assert sorted(tiny.nodes) == sorted(f"{i}_{j}" for j in range(1, 6) for i in range(6 - j))
    node = tiny.nodes["0_5"]
    convs = [m for m in node.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 and all(c.kernel_size == (3, 3) for c in convs)
    # X(0, 5) sees X(0, 0) (stem, 2·growth channels) + X(0, 1..4) + Up(X(1, 4)).
    width = tiny.classifier.in_channels
    assert convs[0].in_channels == tiny.rgb_encoder.feature_info.channels()[0] + 5 * width


def test_residual_up_and_reconstruction_shapes_and_residual():
    up = ResidualUp(8, 4).eval()
    x = torch.randn(1, 8, 5, 6)
    assert up(x).shape == (1, 4, 10, 12)
    assert isinstance(up.main[0], torch.nn.ConvTranspose2d)
    rec = Reconstruction(4, 4).eval()
    torch.nn.init.zeros_(rec.body[1][0].weight)  # main path silenced: only the 1×1 residual remains
    y = torch.randn(1, 4, 6, 6)
    assert torch.allclose(rec(y), F.relu(rec.shortcut(y)), atol=1e-6)


def test_ce_dice_loss_halves_and_ignores():
    target = torch.tensor([[[0, 1], [2, 255]]])
    uniform = torch.zeros(1, 3, 2, 2)
    ce = math.log(3)
    # Dice with probabilities 1/3 everywhere, 3 valid pixels, one per class: 1 − (2/3 + 1)/(1 + 1 + 1) per class.
    dice = 1 - (2 * (1 / 3) + 1) / (1 + 1 + 1)
    assert ce_dice_loss(uniform, target).item() == pytest.approx(0.5 * ce + 0.5 * dice, rel=1e-5)
    confident = F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 50
    assert ce_dice_loss({"logits": confident}, target).item() < 1e-3
    # The ignored pixel's logits do not matter.
    other = confident.clone()
    other[0, :, 1, 1] = torch.tensor([10.0, -3.0, 7.0])
    assert ce_dice_loss(other, target).item() == pytest.approx(ce_dice_loss(confident, target).item(), abs=1e-7)
    assert get_network_spec("nested_dff").builder(num_classes=3, modality="thermal", variant="tiny", pretrained=False,
                                                  aux_channels=1).loss is ce_dice_loss


def test_tiny_has_no_pretrained_weights():
    with pytest.raises(RgbtSegError, match="tiny"):
        create_network("nested_dff", 4, variant="tiny", pretrained=True)
