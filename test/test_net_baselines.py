"""rgb_only and fusion_baseline: size pins, "same network minus the aux branch", demo-size budget.

The shared contract (odd sizes, backward, determinism, ONNX parity, learning) lives in test_networks.py.
"""
from __future__ import annotations

import pytest
import torch

from rgbt_seg_ros.networks import create_network, get_network_spec
from rgbt_seg_ros.networks.baselines import VARIANTS
from rgbt_seg_ros.networks.blocks import resize_to
from rgbt_seg_ros.networks.complexity import count_parameters, network_complexity

# No paper: pins of what these measure (timm 1.0.31, num_classes = 9, GMACs = FLOPs / 2 at 1×640×480).
MEASURED = {
    ("fusion_baseline", "mobilenetv3_small_100"): (2_045_289, 1.638),
    ("fusion_baseline", "mobilenetv3_large_100"): (6_386_857, 4.819),
    ("fusion_baseline", "efficientnet_b0"): (7_572_001, 6.629),
    ("fusion_baseline", "resnet18"): (23_062_665, 25.802),
    ("fusion_baseline", "resnet50"): (50_358_537, 67.009),
    ("rgb_only", "mobilenetv3_small_100"): (1_118_569, 1.327),
    ("rgb_only", "mobilenetv3_large_100"): (3_415_193, 3.538),
    ("rgb_only", "efficientnet_b0"): (3_977_189, 4.445),
    ("rgb_only", "resnet18"): (11_892_425, 15.181),
    ("rgb_only", "resnet50"): (26_856_777, 42.467),
}
SMALL = "mobilenetv3_small_100"


def test_both_baselines_share_variants():
    for name in ("rgb_only", "fusion_baseline"):
        spec = get_network_spec(name)
        assert spec.variants == tuple(VARIANTS) and spec.smallest_variant == SMALL


@pytest.mark.parametrize("name, variant", [k if k[1] == SMALL else pytest.param(*k, marks=pytest.mark.slow)
                                           for k in MEASURED])
def test_sizes_are_pinned(name, variant):
    params_m, gmacs = network_complexity(name, variant)
    assert round(params_m * 1e6) == MEASURED[name, variant][0]
    assert gmacs == pytest.approx(MEASURED[name, variant][1], rel=1e-3)


def test_small_fusion_variant_fits_the_demo_model_budget():
    net = create_network("fusion_baseline", 6, variant=SMALL)
    params = count_parameters(net)
    assert 1_500_000 <= params <= 5_000_000
    fp16_bytes = sum(t.numel() * 2 for t in net.state_dict().values() if t.is_floating_point())
    assert fp16_bytes <= 20e6


@pytest.mark.parametrize("variant", [SMALL, "resnet18"])
def test_rgb_only_is_fusion_baseline_minus_the_aux_encoder(variant):
    fusion = create_network("fusion_baseline", 6, variant=variant)
    rgb_only = create_network("rgb_only", 6, variant=variant)
    assert rgb_only.aux_encoder is None
    assert count_parameters(fusion) == count_parameters(rgb_only) + count_parameters(fusion.aux_encoder)
    fusion_keys = set(fusion.state_dict())
    rgb_keys = set(rgb_only.state_dict())
    assert rgb_keys < fusion_keys and all(k.startswith("aux_encoder.") for k in fusion_keys - rgb_keys)
    # Same weights: rgb_only is fusion_baseline's decoder on the RGB features alone; fusion adds aux features.
    rgb_only.load_state_dict({k: v for k, v in fusion.state_dict().items() if k in rgb_keys})
    fusion.eval(), rgb_only.eval()
    rgb, aux = torch.randn(1, 3, 64, 96), torch.randn(1, 1, 64, 96)

    def decode(feats):
        return resize_to(fusion.classifier(fusion.decoder(feats)), rgb)

    with torch.no_grad():
        rgb_feats = fusion.rgb_encoder(rgb)
        summed = [f + a for f, a in zip(rgb_feats, fusion.aux_encoder(aux))]
        assert torch.allclose(rgb_only(rgb, aux), decode(rgb_feats), atol=1e-6)
        assert torch.allclose(fusion(rgb, aux), decode(summed), atol=1e-6)
    assert [f.shape[-1] for f in summed] == [24, 12, 6, 3]  # levels /4 … /32


def test_rgb_only_ignores_aux_even_when_it_is_not_finite():
    net = create_network("rgb_only", 3, variant=SMALL).eval()
    rgb = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        a = net(rgb, torch.full((1, 1, 48, 40), float("nan")))
        b = net(rgb, torch.zeros(1, 1, 48, 40))
    assert torch.equal(a, b) and torch.isfinite(a).all()


def test_an_all_zero_aux_batch_uses_and_keeps_the_running_statistics():
    # Modality dropout can zero the aux of a whole batch; its batch statistics (variance 0) are degenerate: they
    # gave NaN gradients and dragged the running variance towards 0, even on steps the trainer then skipped.
    net = create_network("fusion_baseline", 6, variant=SMALL).train()
    rgb = torch.randn(2, 3, 64, 96)
    before = {k: v.clone() for k, v in net.aux_encoder.state_dict().items()}
    net(rgb, torch.zeros(2, 1, 64, 96))
    assert all(torch.equal(v, before[k]) for k, v in net.aux_encoder.state_dict().items())
    assert all(m.training for m in net.modules())
    # Zeros in part of the batch are ordinary training data: batch statistics, running ones updated.
    net(rgb, torch.cat([torch.zeros(1, 1, 64, 96), torch.randn(1, 1, 64, 96)]))
    assert not torch.equal(net.aux_encoder.bn1.running_var, before["bn1.running_var"])
