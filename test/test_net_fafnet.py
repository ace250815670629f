"""fafnet (seed 003): size pins, dilated two-stream encoder, ACFM cross fusion, flow-aligned RGBDFuse.

The shared contract (odd sizes, backward, determinism, ONNX parity, learning) lives in test_networks.py.
"""
from __future__ import annotations

import pytest
import torch

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.networks import create_network, get_network_spec
from rgbt_seg_ros.networks.blocks import FAM, PPM
from rgbt_seg_ros.networks.complexity import network_complexity
from rgbt_seg_ros.networks.fafnet import ACFM, RGBDFuse

# The paper gives no parameter or GMAC figures, so these pin what this implementation measures
# (timm 1.0.31, num_classes = 9, GMACs = FlopCounterMode FLOPs / 2 at 1×640×480, eval forward).
MEASURED = {
    "resnet101": (106_182_889, 195.422),
    "resnet50": (68_198_633, 149.967),
    "resnet34": (45_325_193, 84.948),
    "resnet18": (25_108_873, 53.805),
    "resnet10t": (11_205_513, 24.788),
    "tiny": (2_819_161, 6.258),
}


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return create_network("fafnet", 4, variant="tiny")


def test_registry_entry():
    spec = get_network_spec("fafnet")
    assert set(spec.variants) == set(MEASURED)
    assert spec.default_variant == "resnet101" and spec.smallest_variant == "tiny"


@pytest.mark.parametrize("variant", [v if v == "tiny" else pytest.param(v, marks=pytest.mark.slow)
                                     for v in sorted(MEASURED)])
def test_sizes_are_pinned(variant):
    params_m, gmacs = network_complexity("fafnet", variant)
    assert round(params_m * 1e6) == MEASURED[variant][0]
    assert gmacs == pytest.approx(MEASURED[variant][1], rel=1e-3)


def test_encoder_is_dilated_to_output_stride_16(small):
    small.eval()
    with torch.no_grad():
        levels = small.encode(torch.randn(1, 3, 96, 128), torch.randn(1, 1, 96, 128))
    assert [f.shape[-2:] for f in levels] == [(24, 32), (12, 16), (6, 8), (6, 8)]
    assert len(small.fuse) == 4 and all(isinstance(f.fam, FAM) for f in small.fuse)
    assert isinstance(small.ppm, PPM) and len(small.align) == 3


@pytest.mark.parametrize("modality, channels", [("thermal", 1), ("depth", 1), ("depth", 3)])
def test_aux_stem_follows_the_modality(modality, channels):
    net = create_network("fafnet", 3, modality=modality, variant="tiny", aux_channels=channels).eval()
    stem_conv = next(m for m in net.aux_stages[0].modules() if isinstance(m, torch.nn.Conv2d))
    assert stem_conv.in_channels == channels
    with torch.no_grad():
        assert net(torch.randn(1, 3, 50, 70), torch.randn(1, channels, 50, 70)).shape == (1, 3, 50, 70)


def test_acfm_cross_fusion():
    torch.manual_seed(0)
    acfm = ACFM(32)
    rgb, aux = torch.randn(2, 32, 5, 6), torch.randn(2, 32, 5, 6)
    rgb_out, aux_out = acfm(rgb, aux)
    att = torch.sigmoid(acfm.mlp(torch.cat([rgb, aux], 1).mean((2, 3), keepdim=True)))
    att_rgb, att_aux = att[:, :32], att[:, 32:]
    # Each modality's attended features go to the *other* stream.
    assert torch.allclose(rgb_out, rgb + att_aux * aux, atol=1e-6)
    assert torch.allclose(aux_out, aux + att_rgb * rgb, atol=1e-6)
    # A silent aux stream leaves RGB untouched.
    rgb_only, _ = acfm(rgb, torch.zeros_like(aux))
    assert torch.equal(rgb_only, rgb)


def test_rgbdfuse_adds_the_aligned_aux_to_both_streams():
    torch.manual_seed(0)
    fuse = RGBDFuse(16).eval()
    rgb, aux = torch.randn(1, 16, 8, 10), torch.randn(1, 16, 8, 10)
    with torch.no_grad():
        rgb_acfm, aux_acfm = fuse.acfm(rgb, aux)
        rgb_next, aux_next, fused = fuse(rgb, aux)
        # Zero-initialised flow: the aligned aux is the aux itself, added to both streams.
        assert torch.allclose(rgb_next, rgb_acfm + aux_acfm, atol=1e-5)
        assert torch.allclose(aux_next, 2 * aux_acfm, atol=1e-5)
        assert torch.equal(fused, rgb_next)
        # With a learned flow the aux stream is resampled, not just copied.
        torch.nn.init.normal_(fuse.fam.flow.weight, std=0.5)
        rgb_warped, _, _ = fuse(rgb, aux)
    assert (rgb_warped - rgb_next).abs().max() > 1e-3


def test_tiny_has_no_pretrained_weights():
    with pytest.raises(RgbtSegError, match="tiny"):
        create_network("fafnet", 4, variant="tiny", pretrained=True)
