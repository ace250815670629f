"""Baselines users compare fusion networks against.

* ``fusion_baseline`` — two timm encoders (RGB; thermal/depth with its own 1- or 3-channel stem), their
  features summed level by level (/4 … /32), a light FPN decoder and a 1×1 classifier, upsampled ×4.
* ``rgb_only`` — exactly the same network without the auxiliary encoder: it ignores ``aux``, so the
  difference between the two measures the gain from fusion.

Variants are the encoder names. ``mobilenetv3_small_100`` is the small one (2.05 M parameters in
total, ≈4.1 MB in fp16) meant for the built-in demo model and CPU training.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from rgbt_seg_ros.networks._registry import register_network
from rgbt_seg_ros.networks.blocks import FPNDecoder, SegmentationNet, create_backbone, resize_to, run_encoder

# variant (timm encoder) -> FPN width
VARIANTS = {
    "mobilenetv3_small_100": 64,
    "mobilenetv3_large_100": 96,
    "efficientnet_b0": 96,
    "resnet18": 128,
    "resnet50": 256,
}
# Levels /4, /8, /16, /32 feed the decoder; the /2 stem features are not used.
OUT_INDICES = (1, 2, 3, 4)


class FPNFusionNet(SegmentationNet):
    """RGB encoder (+ optional aux encoder, features added per level) → FPN → classifier."""

    size_multiple = 32

    def __init__(self, encoder: str, decoder_dim: int, num_classes: int, aux_channels: int, pretrained: bool,
                 use_aux: bool):
        super().__init__(num_classes, aux_channels)
        self.use_aux = use_aux
        self.rgb_encoder = create_backbone(encoder, 3, pretrained, OUT_INDICES)
        self.aux_encoder = create_backbone(encoder, aux_channels, pretrained, OUT_INDICES) if use_aux else None
        self.decoder = FPNDecoder(self.rgb_encoder.feature_info.channels(), decoder_dim)
        self.classifier = nn.Conv2d(decoder_dim, num_classes, 1)

    def forward_padded(self, rgb: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        # run_encoder: modality dropout may zero a whole batch of either input (NaN gradients through BatchNorm).
        feats = run_encoder(self.rgb_encoder, rgb)
        if self.aux_encoder is not None:
            feats = [f + a for f, a in zip(feats, run_encoder(self.aux_encoder, aux))]
        logits = resize_to(self.classifier(self.decoder(feats)), rgb)
        if self.aux_encoder is None:
            # Keeps 'aux' an input of the exported ONNX graph (the exporter prunes unused inputs), so rgb_only
            # has the same two-input interface as every network: an empty slice sums to exactly 0.
            logits = logits + aux[:, :0].sum()
        return logits


_COMMON = dict(variants=tuple(VARIANTS), default_variant="resnet18", smallest_variant="mobilenetv3_small_100")


@register_network("fusion_baseline", description="two timm encoders, feature addition per level, light FPN decoder",
                  **_COMMON)
def build_fusion_baseline(num_classes: int, modality: str, variant: str, pretrained: bool, aux_channels: int):
    return FPNFusionNet(variant, VARIANTS[variant], num_classes, aux_channels, pretrained, use_aux=True)


@register_network("rgb_only", description="fusion_baseline without the aux encoder: ignores thermal/depth",
                  **_COMMON)
def build_rgb_only(num_classes: int, modality: str, variant: str, pretrained: bool, aux_channels: int):
    return FPNFusionNet(variant, VARIANTS[variant], num_classes, aux_channels, pretrained, use_aux=False)
