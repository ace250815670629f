"""``nested_dff`` — nested RGB-T network fusing deep difference features (seed 000).

* Two DenseNet encoders (timm, variants 121/169/201/161): RGB with a 3-channel stem, thermal/depth with
  a 1- (or 3-) channel stem; the classifier is dropped and a transition layer (BN-ReLU-1×1 conv halving
  the channels-2×2 average pool) is appended after the fourth dense block, giving six levels /2 … /64.
* Levels /2 … /32 (the first five downsamplings) are fused by element-wise addition.
* The deepest level (/64) is fused by :class:`DifferenceFusion`: Q (from RGB) and K (from aux) by 1×1
  convolutions, W = 1 − softmax(QᵀK); the complementary features V·W of each modality are added to both
  inputs, and the two enhanced streams are summed.
* A UNet++ decoder: node X(i, j) = two 3×3 convolutions on [X(i, 0), …, X(i, j−1), Up(X(i+1, j−1))],
  where Up is a residual upsampling unit (transposed convolution main path + bilinear shortcut).
* Reconstruction layer (two 3×3 convolutions with a 1×1 residual path) on X(0, 5) at /2, then the
  classifier: one convolution and bilinear ×2 back to the input size.
* Loss: :func:`ce_dice_loss` (cross-entropy + Dice, ½ each), also as ``NestedDFFNet.loss``.

Where the text leaves a choice open, this implementation fixes it and says so: fused features feed the
decoder (the two encoders stay separate streams), the decoder widths are (32, 64, 128, 256, 256) for
levels /2 … /32, and V·W is divided by the number of positions N so that its scale does not grow with
the input size (1 − softmax rows sum to N − 1). The ``tiny`` variant (growth rate 16, blocks 2/3/4/3,
no ImageNet weights) is not in the paper; it exists for CPU tests and quick experiments.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.networks._registry import register_network
from rgbt_seg_ros.networks.blocks import ConvBNAct, SegmentationNet, create_backbone

# variant -> (timm model, extra DenseNet kwargs, decoder widths for levels /2 … /32)
VARIANTS = {
    "densenet121": ("densenet121", {}, (32, 64, 128, 256, 256)),
    "densenet169": ("densenet169", {}, (32, 64, 128, 256, 256)),
    "densenet201": ("densenet201", {}, (32, 64, 128, 256, 256)),
    "densenet161": ("densenet161", {}, (32, 64, 128, 256, 256)),
    "tiny": ("densenet121", {"growth_rate": 12, "block_config": (2, 2, 3, 2)}, (8, 16, 24, 32, 32)),
}


def ce_dice_loss(output, target: torch.Tensor, ignore_index: int = 255, eps: float = 1.0) -> torch.Tensor:
    """½ cross-entropy + ½ multi-class Dice loss on softmax probabilities (pixels = ``ignore_index`` skipped).

    ``output`` is logits B×K×H×W or the train-mode dict; ``target`` is B×H×W class ids.
    """
    logits = output["logits"] if isinstance(output, dict) else output
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index)
    valid = (target != ignore_index).unsqueeze(1).to(logits.dtype)
    probs = logits.softmax(1) * valid
    one_hot = F.one_hot(target.clamp(0, logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    one_hot = one_hot * valid
    inter = (probs * one_hot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + one_hot.sum((0, 2, 3))
    dice = 1.0 - (2.0 * inter + eps) / (denom + eps)
    return 0.5 * ce + 0.5 * dice.mean()


class DifferenceFusion(nn.Module):
    """Deep difference-feature fusion: W = 1 − softmax(QᵀK) re-weights each modality's values V."""

    def __init__(self, channels: int):
        super().__init__()
        key_ch = max(channels // 8, 16)
        self.query = nn.Conv2d(channels, key_ch, 1)
        self.key = nn.Conv2d(channels, key_ch, 1)
        self.value_rgb = nn.Conv2d(channels, channels, 1)
        self.value_aux = nn.Conv2d(channels, channels, 1)

    def difference_weights(self, rgb: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        """W (B×N×N, row = RGB position, column = aux position): 1 − softmax over aux positions of QᵀK."""
        q = self.query(rgb).flatten(2)
        k = self.key(aux).flatten(2)
        return 1.0 - torch.softmax(torch.matmul(q.transpose(1, 2), k), dim=-1)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.difference_weights(rgb, aux)
        w = w / w.shape[-1]  # rows of 1 − softmax sum to N − 1: keep the scale independent of H×W
        # Complementary aux features at each RGB position and RGB features at each aux position.
        comp_from_aux = torch.matmul(self.value_aux(aux).flatten(2), w.transpose(1, 2)).view_as(rgb)
        comp_from_rgb = torch.matmul(self.value_rgb(rgb).flatten(2), w).view_as(aux)
        both = comp_from_aux + comp_from_rgb
        return rgb + both, aux + both


class ResidualUp(nn.Module):
    """×2 upsampling: transposed conv → BN-ReLU → 3×3 conv-BN, plus a bilinear 1×1-projected shortcut."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.main = nn.Sequential(nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2, bias=False), nn.BatchNorm2d(out_ch),
                                  nn.ReLU(inplace=True), ConvBNAct(out_ch, out_ch, 3, act=False))
        self.shortcut = ConvBNAct(in_ch, out_ch, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = F.interpolate(self.shortcut(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        return F.relu(self.main(x) + skip)


class Reconstruction(nn.Module):
    """Two 3×3 convolutions with a 1×1 residual path."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.body = nn.Sequential(ConvBNAct(in_ch, out_ch, 3), ConvBNAct(out_ch, out_ch, 3, act=False))
        self.shortcut = ConvBNAct(in_ch, out_ch, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def _transition(channels: int) -> nn.Sequential:
    """DenseNet transition layer appended after dense block 4: halves channels and resolution."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                         nn.Conv2d(channels, channels // 2, 1, bias=False), nn.AvgPool2d(2))


class NestedDFFNet(SegmentationNet):
    size_multiple = 64  # six ×2 downsamplings
    loss = staticmethod(ce_dice_loss)

    def __init__(self, variant: str, num_classes: int, aux_channels: int, pretrained: bool):
        super().__init__(num_classes, aux_channels)
        model, kwargs, widths = VARIANTS[variant]
        if pretrained and kwargs:
            raise RgbtSegError(f"nested_dff variant {variant!r} has no ImageNet weights; use pretrained=False")
        self.rgb_encoder = create_backbone(model, 3, pretrained, **kwargs)
        self.aux_encoder = create_backbone(model, aux_channels, pretrained, **kwargs)
        enc = list(self.rgb_encoder.feature_info.channels())  # /2, /4, /8, /16, /32
        self.rgb_transition = _transition(enc[-1])
        self.aux_transition = _transition(enc[-1])
        enc.append(enc[-1] // 2)  # /64
        self.difference_fusion = DifferenceFusion(enc[-1])

        self.levels = len(enc)  # 6
        widths = tuple(widths)
        # Node (i, j), j >= 1: inputs X(i, 0) (enc[i] ch), X(i, 1..j-1) (widths[i] ch each), Up(X(i+1, j-1)).
        self.nodes = nn.ModuleDict()
        self.ups = nn.ModuleDict()
        for j in range(1, self.levels):
            for i in range(self.levels - j):
                below = enc[i + 1] if j == 1 else widths[i + 1]
                self.ups[f"{i}_{j}"] = ResidualUp(below, widths[i])
                in_ch = enc[i] + j * widths[i]
                self.nodes[f"{i}_{j}"] = nn.Sequential(ConvBNAct(in_ch, widths[i], 3), ConvBNAct(widths[i], widths[i], 3))
        self.reconstruction = Reconstruction(widths[0], widths[0])
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def encode(self, rgb: torch.Tensor, aux: torch.Tensor) -> list[torch.Tensor]:
        """Fused features, finest (/2) to deepest (/64)."""
        rgb_feats = self.rgb_encoder(rgb)
        aux_feats = self.aux_encoder(aux)
        fused = [r + a for r, a in zip(rgb_feats, aux_feats)]
        deep_rgb, deep_aux = self.difference_fusion(self.rgb_transition(rgb_feats[-1]),
                                                    self.aux_transition(aux_feats[-1]))
        return fused + [deep_rgb + deep_aux]

    def forward_padded(self, rgb: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        grid: list[list[torch.Tensor]] = [[x] for x in self.encode(rgb, aux)]
        for j in range(1, self.levels):
            for i in range(self.levels - j):
                up = self.ups[f"{i}_{j}"](grid[i + 1][j - 1])
                grid[i].append(self.nodes[f"{i}_{j}"](torch.cat(grid[i][:j] + [up], 1)))
        x = self.reconstruction(grid[0][-1])
        return F.interpolate(self.classifier(x), scale_factor=2.0, mode="bilinear", align_corners=False)


@register_network("nested_dff", variants=tuple(VARIANTS), default_variant="densenet121", smallest_variant="tiny",
                  description="dual DenseNet, addition + deep difference fusion, UNet++ nested decoder",
                  paper="Nested RGB-T network fusing deep difference features (seed 000)")
def build_nested_dff(num_classes: int, modality: str, variant: str, pretrained: bool, aux_channels: int):
    return NestedDFFNet(variant, num_classes, aux_channels, pretrained)
