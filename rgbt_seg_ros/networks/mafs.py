"""MAFS — multi-task adaptive fusion for RGB-T image fusion and semantic segmentation (seed 002).

Two registered graphs built from one class, :class:`MAFS`:

* ``mafs``   — the full multi-task graph. Eval ``forward`` returns logits; :meth:`MAFS.forward_fused` returns
  ``(logits, fused)`` where ``fused`` is the B×1×H×W grayscale fused image in [-1, 1] (tanh).
  Train mode returns ``{"logits", "aux_logits", "boundary", "binary", "fused"}``.
* ``mafs_s`` — the segmentation-only inference graph (exported for the node): the same modules minus the
  full-resolution fusion branch (``fusion_branch.*``). Train mode returns the same dict without ``"fused"``.

Weights layout: every key of ``mafs_s`` exists in ``mafs`` with the same shape; ``mafs`` only adds keys under
``fusion_branch.``. :meth:`MAFS.load_full_state_dict` loads a ``mafs`` checkpoint into ``mafs_s`` strictly
after dropping exactly those keys.

Data flow (strides relative to the input; the input is padded to a multiple of 32 and cropped back):

1. shallow feature extraction per modality (7×7 + 3×3 at full resolution, FReLU; 3×3 stride-2 pair → /2),
   replacing the ResNet stem convolution(s); the ResNet stem's BN/ReLU, max-pool and 4 stages follow;
2. a dynamic extraction module (DEM) after the stem and after stages 1–3: a channel gate computed from both
   modalities plus a per-modality spatial gate decide how much of the other modality each stream takes in;
3. adaptive fusion (AFM) of the shallow features (/2 for segmentation; full resolution for the fusion branch);
4. cross-modal spatial + channel attention fusion (CMA) of the deep features (/4 … /32);
5. progressive heterogeneous fusion (PHF): deep semantic features modulate the shallow fused features
   (SPADE-style scale and shift), /4 → /2 (shared), then /2 → full resolution (fusion branch only);
6. segmentation decoder: FPN → ASPP (shared, on /16 and /8) → multi-stage inverted-pyramid transformer
   (/16 → /8 → /4, channels shrinking as resolution grows, keys/values average-pooled) → merge with the /2
   shallow features → binary-gated semantic head at /2 → logits;
   multilabel auxiliary heads for training: per-stage semantic logits, boundary and binary (foreground) logits
   (one channel each, for BCE with logits);
7. fusion decoder (``mafs`` only): densely connected invertible units (affine coupling, Eq. 6–7: the channels
   are split, one half is scaled by exp(s(·)) and shifted by t(·) of the other half, then the roles swap),
   a 1×1 aggregation of all unit outputs, 3×3 conv → tanh → grayscale fused image.

Variants (backbone streams; the non-backbone widths shrink with them, see :data:`VARIANTS`): ``resnet152``
(paper, default), ``resnet101``, ``resnet50``, ``resnet18`` and ``tiny`` (the smallest: timm's tiered-stem
``resnet10t`` at half width, stem 32 and stages 32/64/128/256, no ImageNet weights). ``tiny`` is not the
paper's network; it exists for CPU tests and CPU training. The /2 shallow width is the backbone's stem width
(``feature_info``), and the shallow extractor replaces the whole stem convolution — the single 7×7 conv, or the
three 3×3 convs of a deep/tiered stem.

Complexity of the paper variant (``resnet152``) at 640×480, MACs = ``FlopCounterMode`` FLOPs / 2, pinned in
``test/test_net_mafs.py``: mafs 128.98 M params / 316.1 GMACs (paper 128.69 M / 324.22 G); mafs_s 128.70 M /
232.7 GMACs (paper 128.41 M / 221.08 G). The difference, 0.275 M / 83 GMACs (paper 0.28 M / 103 G), is the
full-resolution fusion branch. The two ResNet-152 streams alone are 116.3 M / ~139 GMACs. The mafs figure
counts :meth:`MAFS.forward_fused`; a counter that only calls ``forward`` sees the mafs_s graph.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.networks._registry import register_network
from rgbt_seg_ros.networks.blocks import (ASPP, ChannelAttention, ConvBNAct, SegmentationNet, SpatialAttention,
                                          _tracing, backbone_stages, create_backbone, pad_to_multiple, resize_to)

PAPER = ("MAFS: multi-task adaptive fusion network for infrared-visible image fusion and semantic segmentation "
         "(Table XIII: MAFS 128.69 M / 324.22 G, MAFS-S 128.41 M / 221.08 G at 640×480)")


@dataclass(frozen=True)
class MAFSConfig:
    """Widths of one variant. The /2 shallow width is not configured: it is the backbone's stem width
    (``feature_info.channels()[0]``), since the stem's BN/ReLU follow the shallow extractor."""

    backbone: str
    # Extra timm ResNet kwargs, e.g. narrower stages; a variant with any has no ImageNet weights.
    backbone_kwargs: tuple[tuple[str, object], ...] = ()
    full_dim: int = 32         # full-resolution shallow features per modality
    half_fused_dim: int = 64   # AFM output at /2 (feeds the head and the fusion branch's semantic guide)
    deep_dim: int = 256        # CMA output width per level (/4 … /32)
    fpn_dim: int = 256
    aspp_rates: tuple[int, ...] = (2, 4, 6)
    trans_dims: tuple[int, ...] = (256, 128, 64)   # inverted pyramid: /16, /8, /4
    trans_heads: tuple[int, ...] = (4, 2, 1)
    kv_pool: tuple[int, ...] = (2, 4, 8)           # average-pooling of keys/values per stage
    head_dim: int = 64
    dem_reduction: int = 16
    fuse_dim: int = 32         # full-resolution fusion-branch width (split in two halves by the couplings)
    inv_units: int = 5
    inv_growth: int = 16


VARIANTS: dict[str, MAFSConfig] = {
    "resnet152": MAFSConfig("resnet152"),
    "resnet101": MAFSConfig("resnet101"),
    "resnet50": MAFSConfig("resnet50", deep_dim=128, fpn_dim=128, trans_dims=(128, 96, 64), trans_heads=(2, 2, 1)),
    # Narrow everywhere outside the backbones: the smallest variant with ImageNet weights.
    "resnet18": MAFSConfig("resnet18", full_dim=16, half_fused_dim=32, deep_dim=32, fpn_dim=32, aspp_rates=(1, 2, 3),
                           trans_dims=(32, 32, 32), trans_heads=(1, 1, 1), head_dim=32, dem_reduction=8, fuse_dim=16,
                           inv_units=2, inv_growth=8),
    # Not in the paper, no ImageNet weights: timm's tiered-stem ResNet-10 at half width (stem 32, stages
    # 32/64/128/256); shallow, head and fusion-branch widths half those of resnet18. For CPU tests / training.
    "tiny": MAFSConfig("resnet10t", backbone_kwargs=(("channels", (32, 64, 128, 256)), ("stem_width", 16)),
                       full_dim=8, half_fused_dim=16, deep_dim=32, fpn_dim=32, aspp_rates=(1, 2, 3),
                       trans_dims=(32, 32, 16), trans_heads=(1, 1, 1), head_dim=16, dem_reduction=8, fuse_dim=8,
                       inv_units=2, inv_growth=8),
}


# ----------------------------------------------------------------------------------------------- shallow part

class FReLU(nn.Module):
    """Funnel activation max(x, BN(dwconv3×3(x))): a spatial condition that keeps thin thermal edges."""

    def __init__(self, channels: int):
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(x, self.bn(self.dw(x)))


class ShallowExtractor(nn.Module):
    """Per-modality shallow features: full-resolution (``half``) and /2 (``dim``, pre-BN like a ResNet stem conv)."""

    def __init__(self, in_ch: int, dim: int, half: int):
        super().__init__()
        self.full = nn.Sequential(nn.Conv2d(in_ch, half, 7, padding=3, bias=False), nn.BatchNorm2d(half), FReLU(half),
                                  nn.Conv2d(half, half, 3, padding=1, bias=False), nn.BatchNorm2d(half), FReLU(half))
        self.down = nn.Sequential(nn.Conv2d(half, dim, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(dim),
                                  FReLU(dim), nn.Conv2d(dim, dim, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        full = self.full(x)
        return full, self.down(full)


class DynamicExtraction(nn.Module):
    """DEM: gated exchange between the two streams after a backbone stage.

    A channel gate from the pooled statistics of both modalities (2C → 2C/r → 2C, sigmoid) selects what each
    stream offers; a spatial gate (7×7 conv over mean/max maps of both) decides where each stream accepts it.
    Residual form, so the pretrained streams start close to themselves.
    """

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(2 * channels // reduction, 8)
        self.channel_gate = nn.Sequential(nn.Conv2d(2 * channels, hidden, 1), nn.ReLU(inplace=True),
                                          nn.Conv2d(hidden, 2 * channels, 1))
        self.spatial_gate = nn.Conv2d(4, 2, 7, padding=3)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        both = torch.cat([rgb, aux], 1)
        g_rgb, g_aux = torch.sigmoid(self.channel_gate(both.mean((2, 3), keepdim=True))).chunk(2, 1)
        stats = torch.cat([rgb.mean(1, keepdim=True), rgb.amax(1, keepdim=True),
                           aux.mean(1, keepdim=True), aux.amax(1, keepdim=True)], 1)
        s_rgb, s_aux = torch.sigmoid(self.spatial_gate(stats)).chunk(2, 1)
        return rgb + s_rgb * (g_aux * aux), aux + s_aux * (g_rgb * rgb)


class AdaptiveFusion(nn.Module):
    """AFM for shallow features: recalibrate the concatenation, then a soft per-pixel-per-channel choice.

    out = w·rgb' + (1 − w)·aux' with w = sigmoid(local(agg) + global(agg)), agg = 1×1 squeeze of the
    recalibrated concatenation (local: pointwise bottleneck; global: pooled bottleneck).
    """

    def __init__(self, in_ch: int, out_ch: int, reduction: int = 4):
        super().__init__()
        hidden = max(out_ch // reduction, 4)
        self.pre_rgb = ConvBNAct(in_ch, out_ch, 3)
        self.pre_aux = ConvBNAct(in_ch, out_ch, 3)
        self.recalibrate = nn.Sequential(nn.Conv2d(2 * out_ch, 2 * hidden, 1), nn.ReLU(inplace=True),
                                         nn.Conv2d(2 * hidden, 2 * out_ch, 1))
        self.agg = ConvBNAct(2 * out_ch, out_ch, 1)
        self.local_att = nn.Sequential(ConvBNAct(out_ch, hidden, 1), nn.Conv2d(hidden, out_ch, 1))
        self.global_att = nn.Sequential(nn.Conv2d(out_ch, hidden, 1), nn.ReLU(inplace=True),
                                        nn.Conv2d(hidden, out_ch, 1))

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        rgb, aux = self.pre_rgb(rgb), self.pre_aux(aux)
        both = torch.cat([rgb, aux], 1)
        both = both * (1 + torch.sigmoid(self.recalibrate(both.mean((2, 3), keepdim=True))))
        rgb, aux = both.chunk(2, 1)
        agg = self.agg(both)
        w = torch.sigmoid(self.local_att(agg) + self.global_att(agg.mean((2, 3), keepdim=True)))
        return w * rgb + (1 - w) * aux


class CrossModalAttentionFusion(nn.Module):
    """CMA for deep features: each modality is re-weighted by the other's channel attention, then the two are
    blended by cross spatial attention (each stream weighted where the *other* one is not confident)."""

    def __init__(self, in_ch: int, dim: int):
        super().__init__()
        self.reduce_rgb = ConvBNAct(in_ch, dim, 1)
        self.reduce_aux = ConvBNAct(in_ch, dim, 1)
        self.ca_rgb, self.ca_aux = ChannelAttention(dim), ChannelAttention(dim)
        self.sa_rgb, self.sa_aux = SpatialAttention(7), SpatialAttention(7)
        self.out = ConvBNAct(dim, dim, 3)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        rgb, aux = self.reduce_rgb(rgb), self.reduce_aux(aux)
        rgb_c = rgb + rgb * self.ca_aux(aux)
        aux_c = aux + aux * self.ca_rgb(rgb)
        m_rgb, m_aux = self.sa_rgb(rgb_c), self.sa_aux(aux_c)
        return self.out(rgb_c * m_rgb + aux_c * m_aux + rgb_c * (1 - m_aux) * (1 - m_rgb))


class SemanticModulation(nn.Module):
    """PHF step: deep (semantic) features give a per-pixel scale and shift to shallow (detail) features."""

    def __init__(self, dim: int, guide_ch: int, hidden: int):
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(guide_ch, hidden, 3, padding=1), nn.ReLU(inplace=True))
        self.gamma = nn.Conv2d(hidden, dim, 3, padding=1)
        self.beta = nn.Conv2d(hidden, dim, 3, padding=1)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        h = self.shared(resize_to(guide, x))
        # Parameter-free instance norm written out: the ONNX exporter rejects instance_norm of unknown width.
        mean = x.mean((2, 3), keepdim=True)
        normed = (x - mean) * torch.rsqrt((x - mean).pow(2).mean((2, 3), keepdim=True) + 1e-5)
        return self.bn(normed * (1 + torch.sigmoid(self.gamma(h)))) + self.beta(h) + x


# ----------------------------------------------------------------------------------------------- fusion decoder

class DenseSubnet(nn.Module):
    """s(·), t(·) of a coupling: a small densely connected conv block producing 2·out channels."""

    def __init__(self, in_ch: int, out_ch: int, growth: int):
        super().__init__()
        self.c1 = nn.Conv2d(in_ch, growth, 3, padding=1)
        self.c2 = nn.Conv2d(in_ch + growth, growth, 3, padding=1)
        self.c3 = nn.Conv2d(in_ch + 2 * growth, 2 * out_ch, 3, padding=1)
        # Start each coupling at the identity (s = t = 0): stable training and exact invertibility from step 0.
        nn.init.zeros_(self.c3.weight)
        nn.init.zeros_(self.c3.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y1 = F.leaky_relu(self.c1(x), 0.2)
        y2 = F.leaky_relu(self.c2(torch.cat([x, y1], 1)), 0.2)
        s, t = self.c3(torch.cat([x, y1, y2], 1)).chunk(2, 1)
        return s, t


class InvertibleUnit(nn.Module):
    """Affine coupling (Eq. 6–7): split x = [x1, x2];
    y1 = x1 ⊙ exp(s1(x2)) + t1(x2);  y2 = x2 ⊙ exp(s2(y1)) + t2(y1).
    s is bounded by ``clamp``·tanh so exp never overflows; :meth:`inverse` undoes it exactly."""

    def __init__(self, channels: int, growth: int, clamp: float = 1.0):
        super().__init__()
        self.c1 = channels // 2
        self.c2 = channels - self.c1
        self.clamp = clamp
        self.st1 = DenseSubnet(self.c2, self.c1, growth)
        self.st2 = DenseSubnet(self.c1, self.c2, growth)

    def _scale(self, s: torch.Tensor) -> torch.Tensor:
        return self.clamp * torch.tanh(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, :self.c1], x[:, self.c1:]
        s1, t1 = self.st1(x2)
        y1 = x1 * torch.exp(self._scale(s1)) + t1
        s2, t2 = self.st2(y1)
        y2 = x2 * torch.exp(self._scale(s2)) + t2
        return torch.cat([y1, y2], 1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = y[:, :self.c1], y[:, self.c1:]
        s2, t2 = self.st2(y1)
        x2 = (y2 - t2) * torch.exp(-self._scale(s2))
        s1, t1 = self.st1(x2)
        x1 = (y1 - t1) * torch.exp(-self._scale(s1))
        return torch.cat([x1, x2], 1)


class InvertibleChain(nn.Module):
    """Invertible units in sequence; :meth:`forward` also returns every intermediate state (for the dense
    aggregation), :meth:`inverse` inverts the whole chain."""

    def __init__(self, channels: int, units: int, growth: int):
        super().__init__()
        self.units = nn.ModuleList(InvertibleUnit(channels, growth) for _ in range(units))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        states = []
        for unit in self.units:
            x = unit(x)
            states.append(x)
        return states

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for unit in reversed(self.units):
            y = unit.inverse(y)
        return y


class FusionDecoder(nn.Module):
    """Densely connected invertible units → 1×1 aggregation of input and all unit outputs → 3×3 → tanh."""

    def __init__(self, channels: int, units: int, growth: int):
        super().__init__()
        self.chain = InvertibleChain(channels, units, growth)
        self.aggregate = nn.Conv2d(channels * (units + 1), channels, 1)
        self.to_image = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = self.chain(x)
        return torch.tanh(self.to_image(F.leaky_relu(self.aggregate(torch.cat([x, *states], 1)), 0.2)))


class FusionBranch(nn.Module):
    """Everything ``mafs`` has and ``mafs_s`` lacks: full-resolution AFM, the last PHF step, the fusion decoder."""

    def __init__(self, shallow_half: int, guide_ch: int, cfg: MAFSConfig):
        super().__init__()
        self.afm = AdaptiveFusion(shallow_half, cfg.fuse_dim)
        self.phf = SemanticModulation(cfg.fuse_dim, guide_ch, cfg.fuse_dim)
        self.decoder = FusionDecoder(cfg.fuse_dim, cfg.inv_units, cfg.inv_growth)

    def forward(self, rgb_full: torch.Tensor, aux_full: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.phf(self.afm(rgb_full, aux_full), guide))


# ----------------------------------------------------------------------------------------------- seg decoder

class PyramidFPN(nn.Module):
    """FPN that keeps every level (the shared ``blocks.FPNDecoder`` sums them into one map)."""

    def __init__(self, in_ch: int, levels: int, dim: int):
        super().__init__()
        self.lateral = nn.ModuleList(ConvBNAct(in_ch, dim, 1) for _ in range(levels))
        self.smooth = nn.ModuleList(ConvBNAct(dim, dim, 3) for _ in range(levels))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [m(f) for m, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 2, -1, -1):
            lat[i] = lat[i] + resize_to(lat[i + 1], lat[i])
        return [m(x) for m, x in zip(self.smooth, lat)]


class PooledAttentionBlock(nn.Module):
    """Transformer block on a feature map: queries at full resolution, keys/values average-pooled ×``pool``."""

    def __init__(self, dim: int, heads: int, pool: int, mlp_ratio: float = 4.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer width {dim} is not divisible by {heads} heads")
        self.heads, self.pool, self.scale = heads, pool, (dim // heads) ** -0.5
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)                       # B×N×C
        y = self.norm1(tokens)
        kv_map = F.avg_pool2d(y.transpose(1, 2).reshape(b, c, h, w), self.pool, self.pool)
        kv = self.kv(kv_map.flatten(2).transpose(1, 2))             # B×M×2C
        q = self.q(y).reshape(b, -1, self.heads, c // self.heads).transpose(1, 2)
        kv = kv.reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q * self.scale) @ kv[0].transpose(-2, -1), dim=-1)
        tokens = tokens + self.proj((attn @ kv[1]).transpose(1, 2).reshape(b, -1, c))
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class InvertedPyramidTransformer(nn.Module):
    """Multi-stage decoder /16 → /8 → /4: each stage upsamples the previous one, adds the FPN/ASPP level at
    its resolution and runs a pooled-attention block; widths shrink as resolution grows."""

    def __init__(self, in_ch: int, dims: tuple[int, ...], heads: tuple[int, ...], pools: tuple[int, ...]):
        super().__init__()
        self.lateral = nn.ModuleList(ConvBNAct(in_ch, d, 1) for d in dims)
        self.carry = nn.ModuleList([nn.Identity()] + [ConvBNAct(dims[i - 1], dims[i], 1) for i in range(1, len(dims))])
        self.blocks = nn.ModuleList(PooledAttentionBlock(d, h, p) for d, h, p in zip(dims, heads, pools))

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """``levels`` coarse → fine, one per stage; returns every stage's output (coarse → fine)."""
        outs, x = [], None
        for lat, carry, block, feat in zip(self.lateral, self.carry, self.blocks, levels):
            y = lat(feat)
            if x is not None:
                y = y + resize_to(carry(x), y)
            x = block(y)
            outs.append(x)
        return outs


class MultiLabelHead(nn.Module):
    """Binary (foreground) logits gate the features; semantic logits from the gated features; boundary
    logits from the semantic features concatenated with the ungated ones."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.binary = nn.Sequential(ConvBNAct(dim, max(dim // 4, 8), 1), nn.Conv2d(max(dim // 4, 8), 1, 3, padding=1))
        self.semantic_feat = ConvBNAct(dim, dim, 1)
        self.semantic = nn.Conv2d(dim, num_classes, 3, padding=1)
        self.boundary = nn.Sequential(ConvBNAct(2 * dim, dim, 1), nn.Conv2d(dim, 1, 3, padding=1))

    def forward(self, feat: torch.Tensor, with_aux: bool):
        binary = self.binary(feat)
        sem_feat = self.semantic_feat(feat * torch.sigmoid(binary))
        logits = self.semantic(sem_feat)
        if not with_aux:
            return logits, None, None
        return logits, self.boundary(torch.cat([sem_feat, feat], 1)), binary


# ----------------------------------------------------------------------------------------------- network

class MAFS(SegmentationNet):
    """Dual ResNet MAFS; ``with_fusion=False`` builds the segmentation-only ``mafs_s`` graph."""

    size_multiple = 32

    def __init__(self, cfg: MAFSConfig, num_classes: int, aux_channels: int, pretrained: bool, with_fusion: bool):
        super().__init__(num_classes, aux_channels)
        self.cfg, self.with_fusion = cfg, with_fusion
        stages_rgb, chans = self._stages(cfg, pretrained)
        stages_aux, _ = self._stages(cfg, pretrained)
        # /2 shallow width = the stem's output width (64 for the plain ResNets, 2 × stem_width for deep stems).
        self.shallow_dim = sd = chans[0]
        hf = cfg.half_fused_dim
        self.shallow_rgb = ShallowExtractor(3, sd, cfg.full_dim)
        self.shallow_aux = ShallowExtractor(aux_channels, sd, cfg.full_dim)
        self.stages_rgb, self.stages_aux = stages_rgb, stages_aux
        # DEM after the stem and stages 1–3 (the deepest stage goes straight to CMA).
        self.dem = nn.ModuleList(DynamicExtraction(c, cfg.dem_reduction) for c in chans[:4])
        self.afm_half = AdaptiveFusion(sd, hf)
        self.cma = nn.ModuleList(CrossModalAttentionFusion(c, cfg.deep_dim) for c in chans[1:])
        self.phf_half = SemanticModulation(hf, cfg.deep_dim, hf // 2)
        self.fpn = PyramidFPN(cfg.deep_dim, 4, cfg.fpn_dim)
        self.aspp = ASPP(cfg.fpn_dim, cfg.fpn_dim, cfg.aspp_rates)
        self.transformer = InvertedPyramidTransformer(cfg.fpn_dim, cfg.trans_dims, cfg.trans_heads, cfg.kv_pool)
        self.aux_classifiers = nn.ModuleList(nn.Sequential(ConvBNAct(d, d, 3), nn.Conv2d(d, num_classes, 1))
                                             for d in cfg.trans_dims)
        td, hd = cfg.trans_dims[-1], cfg.head_dim
        self.pre_head = nn.Sequential(ConvBNAct(td, hd, 3), ConvBNAct(hd, hd, 3))
        self.merge_shallow = ConvBNAct(hd + hf, hd, 3)
        self.head = MultiLabelHead(hd, num_classes)
        self.fusion_branch = FusionBranch(cfg.full_dim, hf, cfg) if with_fusion else None

    @staticmethod
    def _stages(cfg: MAFSConfig, pretrained: bool) -> tuple[nn.ModuleList, list[int]]:
        features = create_backbone(cfg.backbone, 3, pretrained, (0, 1, 2, 3, 4), **dict(cfg.backbone_kwargs))
        stages = backbone_stages(features)
        # The shallow extractor replaces the stem convolution(s) — timm's ``conv1``: one 7×7 conv, or for the
        # deep / tiered stems (resnet10t, ResNet-D) a Sequential of three 3×3 convs — and keeps the stem's
        # BN + ReLU, which must then be all that is left of stage 0.
        stem_conv, *rest = stages[0].children()
        if (not any(isinstance(m, nn.Conv2d) for m in stem_conv.modules())
                or any(isinstance(m, nn.Conv2d) for r in rest for m in r.modules())):
            raise ValueError(f"backbone {cfg.backbone}: unexpected stem layout {stages[0]}")
        stages[0] = nn.Sequential(*rest)
        return stages, features.feature_info.channels()

    # -- core ---------------------------------------------------------------------------------------------
    def _run(self, rgb: torch.Tensor, aux: torch.Tensor, want_fused: bool, want_aux: bool) -> dict:
        rgb_full, r = self.shallow_rgb(rgb)
        aux_full, a = self.shallow_aux(aux)
        half_r = half_a = None
        deep = []
        for i in range(5):
            r, a = self.stages_rgb[i](r), self.stages_aux[i](a)
            if i < 4:
                r, a = self.dem[i](r, a)
            if i == 0:
                half_r, half_a = r, a
            else:
                deep.append(self.cma[i - 1](r, a))                    # /4, /8, /16, /32
        shallow = self.phf_half(self.afm_half(half_r, half_a), deep[0])   # /2, semantic-aware
        pyr = self.fpn(deep)                                           # /4 … /32 (/32 feeds the rest top-down)
        # Shared ASPP on the coarse levels the transformer reads; at /4 its dilated 3×3s would cost ~40 GMACs.
        stages = self.transformer([self.aspp(pyr[2]), self.aspp(pyr[1]), pyr[0]])   # /16, /8, /4
        feat = self.pre_head(stages[-1])
        feat = self.merge_shallow(torch.cat([resize_to(feat, shallow), shallow], 1))
        logits, boundary, binary = self.head(feat, want_aux)
        out = {"logits": resize_to(logits, rgb)}
        if want_aux:
            out["aux_logits"] = [clf(s) for clf, s in zip(self.aux_classifiers, stages)]
            out["boundary"] = resize_to(boundary, rgb)
            out["binary"] = resize_to(binary, rgb)
        if want_fused:
            out["fused"] = self.fusion_branch(rgb_full, aux_full, shallow)
        return out

    def forward_padded(self, rgb: torch.Tensor, aux: torch.Tensor):
        if not self.training:
            return self._run(rgb, aux, want_fused=False, want_aux=False)["logits"]
        return self._run(rgb, aux, want_fused=self.with_fusion, want_aux=True)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor):
        out = super().forward(rgb, aux)
        if isinstance(out, dict):
            h, w = rgb.shape[-2:]
            for key in ("boundary", "binary", "fused"):
                if key in out:
                    out[key] = out[key][..., :h, :w]
        return out

    def forward_fused(self, rgb: torch.Tensor, aux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full multi-task graph in any mode: ``(logits B×K×H×W, fused grayscale image B×1×H×W in [-1, 1])``."""
        if self.fusion_branch is None:
            raise RgbtSegError(f"network {getattr(self, 'network_name', 'mafs_s')!r} has no fusion decoder; "
                               "build 'mafs' for the fused image")
        if not _tracing():
            self._check_inputs(rgb, aux)
        h, w = rgb.shape[-2:]
        out = self._run(pad_to_multiple(rgb, self.size_multiple), pad_to_multiple(aux, self.size_multiple),
                        want_fused=True, want_aux=False)
        return out["logits"][..., :h, :w], out["fused"][..., :h, :w]

    def complexity_forward(self, rgb: torch.Tensor, aux: torch.Tensor):
        """The whole graph a complexity count should run: with the fusion decoder for ``mafs`` (plain ``forward``
        skips it in eval mode), plain ``forward`` for ``mafs_s``."""
        return self.forward_fused(rgb, aux) if self.fusion_branch is not None else self(rgb, aux)

    def load_full_state_dict(self, state_dict: dict) -> None:
        """Load a ``mafs`` (or ``mafs_s``) checkpoint; into ``mafs_s`` the ``fusion_branch.*`` keys are dropped
        and everything else must match exactly (strict)."""
        if self.fusion_branch is None:
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fusion_branch.")}
        self.load_state_dict(state_dict, strict=True)


def _check_variant(variant: str, pretrained: bool) -> MAFSConfig:
    try:
        cfg = VARIANTS[variant]
    except KeyError:
        raise RgbtSegError(f"mafs variant {variant!r} unknown; variants: {', '.join(VARIANTS)}") from None
    if pretrained and cfg.backbone_kwargs:
        raise RgbtSegError(f"mafs variant {variant!r} has no ImageNet weights; use pretrained=False")
    return cfg


@register_network("mafs", variants=tuple(VARIANTS), default_variant="resnet152", smallest_variant="tiny",
                  description="MAFS full multi-task graph: dual ResNet, DEM, AFM, CMA, PHF, FPN→ASPP→inverted-"
                              "pyramid transformer, multilabel heads, invertible fusion decoder (fused image)",
                  paper=PAPER, paper_figures={"resnet152": (128.69, 324.22)})
def build_mafs(num_classes: int, modality: str, variant: str, pretrained: bool, aux_channels: int) -> MAFS:
    return MAFS(_check_variant(variant, pretrained), num_classes, aux_channels, pretrained, with_fusion=True)


@register_network("mafs_s", variants=tuple(VARIANTS), default_variant="resnet152", smallest_variant="tiny",
                  description="MAFS segmentation-only inference graph (mafs without the fusion decoder; exported "
                              "for the node); loads mafs checkpoints via load_full_state_dict",
                  paper=PAPER, paper_figures={"resnet152": (128.41, 221.08)})
def build_mafs_s(num_classes: int, modality: str, variant: str, pretrained: bool, aux_channels: int) -> MAFS:
    return MAFS(_check_variant(variant, pretrained), num_classes, aux_channels, pretrained, with_fusion=False)
