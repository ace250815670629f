"""``freqfusion`` — seed 004: frequency-guided RGB-T fusion on dual ConvNeXt V2 encoders.

Structure (fine → coarse, stages 1–4 at strides 4, 8, 16, 32):

* two timm ``features_only`` ConvNeXt V2 encoders, one for RGB and one for the second modality
  (``in_chans`` = 1 for thermal / raw depth, 3 for HHA depth);
* stages 1–2: :class:`FrequencyAwareFusion` — a fixed depthwise Gaussian low-pass (k = 7, σ = 2,
  a non-trainable buffer) splits each modality into low = G∗x and high = x − low; the two modalities are
  merged per band, each band is re-weighted by spatial attention, a learned per-pixel per-channel gate mixes
  the bands, and the mix enters the RGB features through a residual gated by a per-pixel confidence map;
* stages 3–4: :class:`SemanticFusion` — a cross-modal channel gate (each modality's channel weights come from
  both modalities' global descriptors), a 1×1 merge, depthwise 3×3 and 5×5 context branches,
  squeeze-excitation and spatial attention, added to the RGB features with a learnable per-channel scale;
* the fused features replace the RGB stream's features, so the next RGB stage sees them (the second
  modality's stream runs on its own);
* :class:`PANetDecoder` — top-down FPN then bottom-up path aggregation; the four aggregated levels are
  upsampled to stride 4, concatenated and classified. Train mode adds an auxiliary FCN head on the fused
  stage-3 features and one deep-supervision 1×1 head per aggregated level (never computed in eval mode).

Variants: ``zepto`` (the smallest: ConvNeXt V2 atto at widths 24/48/96/192 and depths 1/1/3/1 with a
32-channel decoder, 1.81 M parameters and 2.80 GMACs at 640×480; not in the paper and without ImageNet weights,
it exists for CPU training, tests and quick experiments — one training step costs about half of ``atto``'s on
two CPU cores), ``atto`` and ``femto`` (small, CPU-trainable), ``nano`` (the paper's 35.43 M parameters),
``tiny``, ``base``. The decoder width is the variant's other knob. The paper gives neither
its decoder width nor GMACs; with a 128-channel decoder, nano counts 35.61 M parameters (+0.5 % of the paper,
auxiliary and deep-supervision heads included; the two encoders alone are 29.96 M) and 50.7 GMACs at 640×480.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.networks._registry import register_network
from rgbt_seg_ros.networks.blocks import (ConvBNAct, SegmentationNet, SpatialAttention, SqueezeExcite,
                                          backbone_stages, create_backbone, resize_to)


@dataclass(frozen=True)
class FreqFusionConfig:
    backbone: str          # timm model name (ConvNeXt V2)
    decoder_dim: int       # PANet width
    aux_head_dim: int      # hidden width of the auxiliary FCN head on stage 3
    channel_reduction: int = 4  # bottleneck of the cross-modal channel gate and SE in semantic fusion
    # Overrides of the timm architecture (``dims``, ``depths``); a variant with any has no ImageNet weights.
    backbone_kwargs: dict = field(default_factory=dict)


VARIANTS: dict[str, FreqFusionConfig] = {
    # Not in the paper and not a timm model: ConvNeXt V2 atto at 0.6× width and 1/2 depth, for CPU training,
    # tests and quick experiments (zepto = 10^-21 < atto = 10^-18, following ConvNeXt's size prefixes).
    "zepto": FreqFusionConfig("convnextv2_atto", decoder_dim=32, aux_head_dim=32,
                              backbone_kwargs={"dims": (24, 48, 96, 192), "depths": (1, 1, 3, 1)}),
    "atto": FreqFusionConfig("convnextv2_atto", decoder_dim=64, aux_head_dim=64),
    "femto": FreqFusionConfig("convnextv2_femto", decoder_dim=80, aux_head_dim=96),
    "nano": FreqFusionConfig("convnextv2_nano", decoder_dim=128, aux_head_dim=128),
    "tiny": FreqFusionConfig("convnextv2_tiny", decoder_dim=160, aux_head_dim=192),
    "base": FreqFusionConfig("convnextv2_base", decoder_dim=256, aux_head_dim=256),
}


def gaussian_kernel2d(kernel_size: int = 7, sigma: float = 2.0) -> torch.Tensor:
    """Normalised 2-D Gaussian (``kernel_size``×``kernel_size``, sums to 1): a DC-preserving low-pass."""
    half = (kernel_size - 1) / 2.0
    coords = torch.arange(kernel_size, dtype=torch.float64) - half
    g1 = torch.exp(-(coords ** 2) / (2.0 * sigma ** 2))
    g2 = torch.outer(g1, g1)
    return (g2 / g2.sum()).to(torch.float32)


class GaussianLowPass(nn.Module):
    """Fixed depthwise Gaussian blur; ``split(x)`` returns (low, high) with ``low + high == x`` exactly.

    The kernel is separable, but one 7×7 depthwise conv is kept on purpose: on two CPU cores the 1×7 + 7×1 pair
    (two pads, two convs) measured ~40 % slower forward + backward at the small-variant feature sizes, and the
    blur is ~1.5 % of an ``atto`` training step anyway.
    """

    def __init__(self, channels: int, kernel_size: int = 7, sigma: float = 2.0):
        super().__init__()
        self.channels, self.kernel_size, self.sigma = channels, kernel_size, sigma
        kernel = gaussian_kernel2d(kernel_size, sigma).expand(channels, 1, kernel_size, kernel_size).contiguous()
        # Non-persistent: fixed by design, rebuilt from (k, σ) at construction, so never stored in weight files.
        self.register_buffer("weight", kernel, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.kernel_size // 2
        # Replicate padding keeps a constant image constant at the borders (zero padding would darken them
        # and push spurious "high frequency" into the edge pixels).
        return F.conv2d(F.pad(x, (p, p, p, p), mode="replicate"), self.weight.to(x.dtype), groups=self.channels)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self(x)
        return low, x - low


class FrequencyAwareFusion(nn.Module):
    """Stages 1–2: fuse RGB and the second modality band by band (Gaussian low / residual high).

    ``forward(rgb, aux)`` returns the fused RGB features; ``forward(..., return_gates=True)`` also returns
    ``{"mix": B×C×H×W, "confidence": B×1×H×W, "low_attn", "high_attn": B×1×H×W}``.
    """

    def __init__(self, channels: int, kernel_size: int = 7, sigma: float = 2.0):
        super().__init__()
        self.lowpass = GaussianLowPass(channels, kernel_size, sigma)
        self.merge_low = ConvBNAct(2 * channels, channels, 1)
        self.merge_high = ConvBNAct(2 * channels, channels, 1)
        self.attn_low = SpatialAttention(7)
        self.attn_high = SpatialAttention(7)
        self.mix_gate = nn.Conv2d(2 * channels, channels, 1)
        self.confidence = nn.Sequential(ConvBNAct(2 * channels, channels // 4, 3), nn.Conv2d(channels // 4, 1, 1))

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor, return_gates: bool = False):
        low_r, high_r = self.lowpass.split(rgb)
        low_a, high_a = self.lowpass.split(aux)
        low = self.merge_low(torch.cat([low_r, low_a], 1))
        high = self.merge_high(torch.cat([high_r, high_a], 1))
        a_low, a_high = self.attn_low(low), self.attn_high(high)
        low, high = low * a_low, high * a_high
        mix = torch.sigmoid(self.mix_gate(torch.cat([low, high], 1)))
        fused = mix * low + (1.0 - mix) * high
        # Confidence from both raw inputs: where the second modality disagrees or is uninformative, the
        # gate can close and the RGB features pass unchanged.
        conf = torch.sigmoid(self.confidence(torch.cat([rgb, aux], 1)))
        out = rgb + conf * fused
        if return_gates:
            return out, {"mix": mix, "confidence": conf, "low_attn": a_low, "high_attn": a_high}
        return out


class SemanticFusion(nn.Module):
    """Stages 3–4: cross-modal channel gate → merge → depthwise 3×3 + 5×5 → SE → spatial attention → scaled residual.

    ``forward(..., return_gates=True)`` also returns ``{"channel_rgb", "channel_aux": B×C×1×1, "spatial": B×1×H×W}``.
    """

    def __init__(self, channels: int, reduction: int = 4, layer_scale_init: float = 0.1):
        super().__init__()
        hidden = max(2 * channels // reduction, 8)
        # One MLP over both descriptors: each modality's channel weights depend on the other modality.
        self.channel_gate = nn.Sequential(nn.Conv2d(2 * channels, hidden, 1), nn.ReLU(inplace=True),
                                          nn.Conv2d(hidden, 2 * channels, 1))
        self.merge = ConvBNAct(2 * channels, channels, 1, act=nn.GELU)
        self.dw3 = ConvBNAct(channels, channels, 3, groups=channels, act=False)
        self.dw5 = ConvBNAct(channels, channels, 5, groups=channels, act=False)
        self.project = ConvBNAct(channels, channels, 1, act=nn.GELU)
        self.se = SqueezeExcite(channels, reduction)
        self.spatial = SpatialAttention(7)
        self.gamma = nn.Parameter(torch.full((1, channels, 1, 1), layer_scale_init))

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor, return_gates: bool = False):
        desc = torch.cat([rgb.mean((2, 3), keepdim=True), aux.mean((2, 3), keepdim=True)], 1)
        w_rgb, w_aux = torch.sigmoid(self.channel_gate(desc)).chunk(2, dim=1)
        m = self.merge(torch.cat([rgb * w_rgb, aux * w_aux], 1))
        m = self.project(self.dw3(m) + self.dw5(m))
        m = self.se(m)
        s = self.spatial(m)
        out = rgb + self.gamma * (m * s)
        if return_gates:
            return out, {"channel_rgb": w_rgb, "channel_aux": w_aux, "spatial": s}
        return out


class PANetDecoder(nn.Module):
    """Top-down FPN then bottom-up path aggregation; returns the four aggregated levels (fine → coarse)."""

    def __init__(self, in_channels: tuple[int, ...], dim: int):
        super().__init__()
        n = len(in_channels)
        self.lateral = nn.ModuleList(ConvBNAct(c, dim, 1) for c in in_channels)
        self.td_smooth = nn.ModuleList(ConvBNAct(dim, dim, 3) for _ in range(n - 1))
        self.bu_down = nn.ModuleList(ConvBNAct(dim, dim, 3, stride=2) for _ in range(n - 1))
        self.bu_smooth = nn.ModuleList(ConvBNAct(dim, dim, 3) for _ in range(n - 1))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [l(f) for l, f in zip(self.lateral, feats)]
        n = len(lat)
        top_down = [lat[-1]]
        for i in range(n - 2, -1, -1):
            top_down.insert(0, self.td_smooth[i](lat[i] + resize_to(top_down[0], lat[i])))
        outs = [top_down[0]]
        for i in range(1, n):
            # Inputs are padded to 32, so a stride-2 conv lands exactly on the next level's grid.
            outs.append(self.bu_smooth[i - 1](top_down[i] + self.bu_down[i - 1](outs[-1])))
        return outs


class FreqFusionNet(SegmentationNet):
    size_multiple = 32

    def __init__(self, num_classes: int, aux_channels: int = 1, variant: str = "nano", pretrained: bool = False):
        super().__init__(num_classes, aux_channels)
        cfg = VARIANTS[variant]
        if pretrained and cfg.backbone_kwargs:
            raise RgbtSegError(f"freqfusion variant {variant!r} has no ImageNet weights; use pretrained=False")
        self.config = cfg
        rgb = create_backbone(cfg.backbone, in_chans=3, pretrained=pretrained, **cfg.backbone_kwargs)
        aux = create_backbone(cfg.backbone, in_chans=aux_channels, pretrained=pretrained, **cfg.backbone_kwargs)
        chans = tuple(rgb.feature_info.channels())
        self.channels = chans
        # Only the stage lists are kept (not the FeatureListNet too) so each weight has one state_dict key.
        self.rgb_stages = backbone_stages(rgb)
        self.aux_stages = backbone_stages(aux)
        self.fusion = nn.ModuleList([FrequencyAwareFusion(chans[0]), FrequencyAwareFusion(chans[1]),
                                     SemanticFusion(chans[2], cfg.channel_reduction),
                                     SemanticFusion(chans[3], cfg.channel_reduction)])
        d = cfg.decoder_dim
        self.decoder = PANetDecoder(chans, d)
        self.head = nn.Sequential(ConvBNAct(4 * d, d, 3), nn.Dropout2d(0.1), nn.Conv2d(d, num_classes, 1))
        self.aux_head = nn.Sequential(ConvBNAct(chans[2], cfg.aux_head_dim, 3), nn.Dropout2d(0.1),
                                      nn.Conv2d(cfg.aux_head_dim, num_classes, 1))
        self.ds_heads = nn.ModuleList(nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(d, num_classes, 1)) for _ in chans)

    def encode(self, rgb: torch.Tensor, aux: torch.Tensor) -> list[torch.Tensor]:
        """Fused features per stage (fine → coarse); the fused map continues down the RGB stream."""
        feats = []
        x, a = rgb, aux
        for rgb_stage, aux_stage, fuse in zip(self.rgb_stages, self.aux_stages, self.fusion):
            x, a = rgb_stage(x), aux_stage(a)
            x = fuse(x, a)
            feats.append(x)
        return feats

    def forward_padded(self, rgb: torch.Tensor, aux: torch.Tensor):
        feats = self.encode(rgb, aux)
        levels = self.decoder(feats)
        fine = levels[0]
        merged = torch.cat([fine] + [resize_to(lv, fine) for lv in levels[1:]], 1)
        logits = F.interpolate(self.head(merged), size=rgb.shape[-2:], mode="bilinear", align_corners=False)
        if not self.training:
            return logits
        # Auxiliary outputs stay at their own stride: the loss resizes them (registry contract).
        aux_logits = [self.aux_head(feats[2])] + [head(lv) for head, lv in zip(self.ds_heads, levels)]
        return {"logits": logits, "aux_logits": aux_logits}


@register_network(
    "freqfusion",
    variants=tuple(VARIANTS),
    default_variant="nano",
    smallest_variant="zepto",
    description="Frequency-guided RGB-T fusion: dual ConvNeXt V2, Gaussian low/high-band fusion at stages 1-2, "
                "semantic channel/spatial fusion at stages 3-4, PANet decoder with deep supervision",
    paper="seed 004: frequency-guided RGB-T fusion",
    paper_figures={"nano": (35.43, None)},
)
def build_freqfusion(num_classes: int, modality: str = "thermal", variant: str = "nano", pretrained: bool = False,
                     aux_channels: int = 1) -> FreqFusionNet:
    return FreqFusionNet(num_classes, aux_channels=aux_channels, variant=variant, pretrained=pretrained)
