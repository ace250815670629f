"""``fafnet`` — flow-aligned fusion network (seed 003).

* Two ResNet streams (timm; RGB 3-channel stem, depth 1- or 3-channel (HHA) or thermal 1-channel stem),
  last stage dilated so the output stride is 16.
* After every residual stage (layer1 … layer4) an :class:`RGBDFuse` block:
  ACFM — global average pool of [rgb, aux] → MLP → sigmoid, one channel attention per modality; each
  attended feature is added to the *other* modality's input (cross fusion); then FAM — semantic-flow
  alignment (shared :class:`~rgbt_seg_ros.networks.blocks.FAM`: 1×1 unify, 3×3 conv on the concatenation
  → 2-channel flow, ``grid_sample`` warp) of the aux stream onto the RGB stream. The warped aux features
  are added back to both streams, which continue into the next stage; the RGB stream after that addition
  is the level's fused feature that the decoder reads.
* Decoder (SFNet-style): a pyramid pooling head on the deepest fused feature, then an aligned top-down
  path: at each level a FAM warps the coarser decoder feature onto the finer lateral and adds it; all
  levels are upsampled to /4, concatenated, fused by a 3×3 conv and classified, bilinear back to H×W.

Variants: ``resnet101`` (paper), ``resnet50``, ``resnet34``, ``resnet18``, ``resnet10t`` (timm's
tiered-stem ResNet-10) and ``tiny`` (ResNet-10t at half width, no ImageNet weights); the last two are not
in the paper and exist for CPU training, tests and quick experiments.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.networks._registry import register_network
from rgbt_seg_ros.networks.blocks import (FAM, PPM, ConvBNAct, SegmentationNet, backbone_stages, create_backbone,
                                          resize_to)

# variant -> (timm model, extra ResNet kwargs, decoder width)
VARIANTS = {
    "resnet101": ("resnet101", {}, 256),
    "resnet50": ("resnet50", {}, 256),
    "resnet34": ("resnet34", {}, 128),
    "resnet18": ("resnet18", {}, 128),
    "resnet10t": ("resnet10t", {}, 64),
    "tiny": ("resnet10t", {"channels": (32, 64, 128, 256), "stem_width": 16}, 32),
}


class ACFM(nn.Module):
    """Attention-based cross fusion: per-modality channel attention from the pooled concatenation."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(2 * channels // reduction, 16)
        self.mlp = nn.Sequential(nn.Conv2d(2 * channels, hidden, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, 2 * channels, 1))

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        att_rgb, att_aux = torch.sigmoid(self.mlp(torch.cat([rgb, aux], 1).mean((2, 3), keepdim=True))).chunk(2, 1)
        return rgb + att_aux * aux, aux + att_rgb * rgb


class RGBDFuse(nn.Module):
    """ACFM cross fusion, then flow alignment of the aux stream onto the RGB stream."""

    def __init__(self, channels: int):
        super().__init__()
        self.acfm = ACFM(channels)
        self.fam = FAM(channels, channels, channels)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (rgb for the next stage, aux for the next stage, fused feature of this level)."""
        rgb, aux = self.acfm(rgb, aux)
        warped = self.fam(rgb, aux)
        rgb, aux = rgb + warped, aux + warped
        return rgb, aux, rgb


class FAFNet(SegmentationNet):
    size_multiple = 16  # output stride 16: every stage then sees an exact halving

    def __init__(self, variant: str, num_classes: int, aux_channels: int, pretrained: bool):
        super().__init__(num_classes, aux_channels)
        model, kwargs, dim = VARIANTS[variant]
        if pretrained and kwargs:
            raise RgbtSegError(f"fafnet variant {variant!r} has no ImageNet weights; use pretrained=False")
        rgb = create_backbone(model, 3, pretrained, output_stride=16, **kwargs)
        aux = create_backbone(model, aux_channels, pretrained, output_stride=16, **kwargs)
        channels = rgb.feature_info.channels()[1:]  # layer1 … layer4
        self.rgb_stages = backbone_stages(rgb)  # stem, layer1 … layer4
        self.aux_stages = backbone_stages(aux)
        self.fuse = nn.ModuleList(RGBDFuse(c) for c in channels)
        self.ppm = PPM(channels[-1], dim)
        self.lateral = nn.ModuleList(ConvBNAct(c, dim, 1) for c in channels[:-1])
        self.align = nn.ModuleList(FAM(dim, dim, dim) for _ in channels[:-1])
        self.smooth = nn.ModuleList(ConvBNAct(dim, dim, 3) for _ in channels[:-1])
        self.head = nn.Sequential(ConvBNAct(dim * len(channels), dim, 3), nn.Conv2d(dim, num_classes, 1))

    def encode(self, rgb: torch.Tensor, aux: torch.Tensor) -> list[torch.Tensor]:
        """Fused features of layer1 … layer4 (/4, /8, /16, /16)."""
        rgb, aux = self.rgb_stages[0](rgb), self.aux_stages[0](aux)
        fused = []
        for rgb_stage, aux_stage, fuse in zip(self.rgb_stages[1:], self.aux_stages[1:], self.fuse):
            rgb, aux, level = fuse(rgb_stage(rgb), aux_stage(aux))
            fused.append(level)
        return fused

    def forward_padded(self, rgb: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        feats = self.encode(rgb, aux)
        top = self.ppm(feats[-1])
        outs = [top]
        for i in range(len(feats) - 2, -1, -1):  # aligned top-down path
            lateral = self.lateral[i](feats[i])
            top = self.smooth[i](lateral + self.align[i](lateral, top))
            outs.append(top)
        finest = outs[-1]
        logits = self.head(torch.cat([finest] + [resize_to(x, finest) for x in outs[:-1]], 1))
        return resize_to(logits, rgb)


@register_network("fafnet", variants=tuple(VARIANTS), default_variant="resnet101", smallest_variant="tiny",
                  description="two-stream dilated ResNet, ACFM + flow-aligned fusion per stage, SFNet decoder with PPM",
                  paper="FAFNet: flow-aligned RGB-D/T fusion (seed 003)")
def build_fafnet(num_classes: int, modality: str, variant: str, pretrained: bool, aux_channels: int):
    return FAFNet(variant, num_classes, aux_channels, pretrained)
