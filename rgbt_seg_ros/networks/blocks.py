"""Blocks shared by several fusion networks, written once.

* :class:`SegmentationNet` — base class that gives every network the registry contract: input checks,
  padding to the multiple the network needs and cropping back, eval → logits, train → dict.
* :func:`create_backbone` / :func:`backbone_stages` — timm ``features_only`` encoders (any ``in_chans``;
  timm adapts pretrained stem weights to 1-channel thermal or 3-channel HHA depth); :func:`run_encoder` runs
  one safely on an all-zero (modality-dropped) training batch.
* :class:`ConvBNAct`, :class:`SqueezeExcite`, :class:`ChannelAttention`, :class:`SpatialAttention`,
  :class:`PPM`, :class:`ASPP`, :class:`FAM` (semantic-flow alignment) and :func:`flow_warp`, :class:`FPNDecoder`.

Everything here exports to ONNX (opset 17) with dynamic batch and spatial axes (see
:func:`adaptive_avg_pool` for why PPM does not call ``F.adaptive_avg_pool2d``).
"""
from __future__ import annotations

from typing import Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from rgbt_seg_ros.errors import RgbtSegError


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad bottom/right so H and W are multiples of ``multiple`` (inputs are normalised, so 0 = mean)."""
    h, w = x.shape[-2:]
    pad_h = (multiple - h % multiple) % multiple
    pad_w = (multiple - w % multiple) % multiple
    return F.pad(x, (0, pad_w, 0, pad_h))


def resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to the spatial size of ``ref`` (align_corners=False, as ONNX Resize does)."""
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class SegmentationNet(nn.Module):
    """Base of every registered network: subclasses implement :meth:`forward_padded`.

    ``forward_padded(rgb, aux)`` sees inputs padded to ``size_multiple`` and returns logits at the padded
    size, or (train mode) a dict with ``"logits"`` and optional ``"aux_logits"`` / extras. ``forward``
    checks the inputs, pads, crops ``"logits"`` back to H×W and returns only the logits in eval mode.
    """

    size_multiple: int = 32

    def __init__(self, num_classes: int, aux_channels: int):
        super().__init__()
        self.num_classes = int(num_classes)
        self.aux_channels = int(aux_channels)

    def forward_padded(self, rgb: torch.Tensor, aux: torch.Tensor):
        raise NotImplementedError

    def _check_inputs(self, rgb: torch.Tensor, aux: torch.Tensor) -> None:
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise RgbtSegError(f"network input 'rgb' must be B×3×H×W, got shape {tuple(rgb.shape)}")
        if aux.dim() != 4 or aux.shape[1] != self.aux_channels:
            raise RgbtSegError(f"network input 'aux' must be B×{self.aux_channels}×H×W, got shape {tuple(aux.shape)}")
        if rgb.shape[0] != aux.shape[0] or rgb.shape[-2:] != aux.shape[-2:]:
            raise RgbtSegError(f"network inputs 'rgb' {tuple(rgb.shape)} and 'aux' {tuple(aux.shape)} "
                               "differ in batch or H×W (register the aux image to the RGB frame first)")

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor):
        if not _tracing():
            self._check_inputs(rgb, aux)
        h, w = rgb.shape[-2:]
        out = self.forward_padded(pad_to_multiple(rgb, self.size_multiple), pad_to_multiple(aux, self.size_multiple))
        logits = out["logits"] if isinstance(out, dict) else out
        logits = logits[..., :h, :w]
        if not self.training:
            return logits
        out = dict(out) if isinstance(out, dict) else {}
        out["logits"] = logits
        return out


# ----------------------------------------------------------------------------------------------- backbones

def create_backbone(name: str, in_chans: int = 3, pretrained: bool = False, out_indices: Sequence[int] | None = None,
                    output_stride: int | None = None, **kwargs) -> nn.Module:
    """A timm ``features_only`` encoder; ``.feature_info.channels()`` / ``.reduction()`` describe its outputs.

    ``in_chans=1`` (thermal) or 3 (HHA depth): with ``pretrained=True`` timm adapts the stem weights.
    ``output_stride`` (8 or 16) dilates the last stages where the architecture supports it (ResNets).
    """
    if output_stride not in (None, 32):
        kwargs["output_stride"] = output_stride
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    if not pretrained:
        return timm.create_model(name, features_only=True, pretrained=False, in_chans=in_chans, **kwargs)
    try:
        return timm.create_model(name, features_only=True, pretrained=True, in_chans=in_chans, **kwargs)
    except Exception as exc:  # no hub, no cached weights, proxy errors: many exception types, one cause
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise RgbtSegError(f"backbone {name!r}: cannot load ImageNet weights ({first_line}); "
                           "use pretrained=False or pre-populate the timm / Hugging Face cache") from None


def run_encoder(encoder: nn.Module, x: torch.Tensor):
    """``encoder(x)``; but in training, a batch that is all zeros is normalised with the BatchNorm running statistics.

    Modality dropout zeroes an input, and in a small batch it can zero every sample. Through bias-free convs and
    BatchNorms with β = 0 (any encoder at init) that batch stays exactly 0, so each BatchNorm sees batch variance 0
    and its backward multiplies the gradient by γ/√eps ≈ 316: over a MobileNetV3 (hard-swish passes ½ at 0) it
    overflows float32 → inf, then NaN. Such batch statistics are meaningless anyway (and would pull the running
    variance towards 0); the running ones are what eval applies to the same zeros.
    """
    if not encoder.training or _tracing() or bool(x.any()):
        return encoder(x)
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in norms:
        m.training = False  # only the BatchNorms: any dropout in the encoder stays as it is
    try:
        return encoder(x)
    finally:
        for m in norms:
            m.training = True


def backbone_stages(features: nn.Module) -> nn.ModuleList:
    """Split a timm ``features_only`` net (``FeatureDictNet``/``FeatureListNet``) into sequential stages.

    Stage *i* ends at the *i*-th returned feature, so a network can fuse between stages (feed fused
    features back into the next stage), which a black-box ``features_only`` forward does not allow.
    """
    return_layers = getattr(features, "return_layers", None)
    if return_layers is None:
        raise TypeError(f"{type(features).__name__} is not a timm FeatureDictNet; cannot split it into stages")
    stages, current = nn.ModuleList(), []
    for name, module in features.items():
        current.append(module)
        if name in return_layers:
            stages.append(nn.Sequential(*current))
            current = []
    return stages


# ----------------------------------------------------------------------------------------------- conv blocks

class ConvBNAct(nn.Sequential):
    """Conv → BatchNorm → activation (ReLU by default; ``act=False`` for none)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1,
                 groups: int = 1, act: bool | type[nn.Module] = True):
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation, groups, bias=False),
                                   nn.BatchNorm2d(out_ch)]
        if act:
            layers.append(nn.ReLU(inplace=True) if act is True else act())
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-excitation: global average → bottleneck MLP → sigmoid channel weights."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.fc = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


class ChannelAttention(nn.Module):
    """CBAM channel attention: shared MLP on average- and max-pooled descriptors; returns the weights."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean((2, 3), keepdim=True))
        mx = self.mlp(x.amax((2, 3), keepdim=True))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: channel mean and max → k×k conv → sigmoid map B×1×H×W (returns the map)."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))


def _bin_matrix(size, bins: int, like: torch.Tensor) -> torch.Tensor:
    """bins×size averaging matrix with PyTorch's adaptive-pool bin edges: [floor(i·n/b), ceil((i+1)·n/b))."""
    i = torch.arange(bins, device=like.device)
    start = i * size // bins
    end = ((i + 1) * size + bins - 1) // bins
    pos = torch.arange(size, device=like.device)
    inside = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


def adaptive_avg_pool(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, bins)`` as two small matrix products.

    Same numbers, but it exports to ONNX with a dynamic spatial size: the TorchScript exporter cannot
    export adaptive pooling to bins > 1 unless H×W is static.
    """
    if bins == 1:
        return x.mean((2, 3), keepdim=True)
    rows = _bin_matrix(x.shape[-2], bins, x)
    cols = _bin_matrix(x.shape[-1], bins, x)
    return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


class PPM(nn.Module):
    """Pyramid pooling (PSPNet): adaptive average pools at ``bins``, 1×1 convs, upsample, concat, 3×3 fuse."""

    def __init__(self, in_ch: int, out_ch: int, bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        branch_ch = max(in_ch // len(bins), 16)
        self.bins = tuple(bins)
        self.branches = nn.ModuleList(ConvBNAct(in_ch, branch_ch, 1) for _ in self.bins)
        self.fuse = ConvBNAct(in_ch + branch_ch * len(self.bins), out_ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [resize_to(branch(adaptive_avg_pool(x, b)), x) for b, branch in zip(self.bins, self.branches)]
        return self.fuse(torch.cat([x, *pooled], 1))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3): 1×1, dilated 3×3 at ``rates``, image pooling → 1×1 projection."""

    def __init__(self, in_ch: int, out_ch: int, rates: Sequence[int] = (6, 12, 18)):
        super().__init__()
        self.branches = nn.ModuleList([ConvBNAct(in_ch, out_ch, 1)] +
                                      [ConvBNAct(in_ch, out_ch, 3, dilation=r) for r in rates])
        # No BatchNorm on the 1×1 pooled branch: batch statistics of a 1×1 map are degenerate at batch 1.
        self.image_pool = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1), nn.ReLU(inplace=True))
        self.project = ConvBNAct(out_ch * (len(rates) + 2), out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.image_pool(x.mean((2, 3), keepdim=True)).expand(-1, -1, x.shape[2], x.shape[3])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], 1))


# ----------------------------------------------------------------------------------------------- alignment

def flow_warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` at pixel positions displaced by ``flow`` (B×2×H×W, in pixels of the flow's grid, x then y).

    ``x`` may be at a different resolution than ``flow``; the output has the flow's H×W.
    """
    h, w = flow.shape[-2:]
    # Pixel-centre coordinates in [-1, 1] (align_corners=False convention).
    ys = (torch.arange(h, device=flow.device, dtype=flow.dtype) + 0.5) * (2.0 / h) - 1.0
    xs = (torch.arange(w, device=flow.device, dtype=flow.dtype) + 0.5) * (2.0 / w) - 1.0
    gy = ys.view(1, h, 1).expand(1, h, w)
    gx = xs.view(1, 1, w).expand(1, h, w)
    grid_x = gx + flow[:, 0] * (2.0 / w)
    grid_y = gy + flow[:, 1] * (2.0 / h)
    grid = torch.stack([grid_x, grid_y], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FAM(nn.Module):
    """Flow alignment module (SFNet): warp the high-level (coarse) feature onto the low-level (fine) grid.

    1×1 convs unify both inputs to ``out_ch``; a 3×3 conv on their concatenation predicts a 2-channel
    semantic flow; the coarse feature is upsampled by ``grid_sample`` along that flow. Returns the warped
    coarse feature at the fine resolution (callers add it to whatever they need).
    """

    def __init__(self, low_ch: int, high_ch: int, out_ch: int):
        super().__init__()
        self.low = nn.Conv2d(low_ch, out_ch, 1, bias=False) if low_ch != out_ch else nn.Identity()
        self.high = nn.Conv2d(high_ch, out_ch, 1, bias=False) if high_ch != out_ch else nn.Identity()
        self.flow = nn.Conv2d(2 * out_ch, 2, 3, padding=1, bias=False)
        # Zero flow at init: the module starts as plain bilinear upsampling and learns the offsets.
        nn.init.zeros_(self.flow.weight)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        low_u, high_u = self.low(low), self.high(high)
        flow = self.flow(torch.cat([low_u, resize_to(high_u, low_u)], 1))
        return flow_warp(high_u, flow)


# ----------------------------------------------------------------------------------------------- decoders

class FPNDecoder(nn.Module):
    """Light FPN: 1×1 laterals, top-down sum, 3×3 smoothing, all levels upsampled to the finest and summed."""

    def __init__(self, in_channels: Sequence[int], dim: int):
        super().__init__()
        self.lateral = nn.ModuleList(ConvBNAct(c, dim, 1) for c in in_channels)
        self.smooth = nn.ModuleList(ConvBNAct(dim, dim, 3) for _ in in_channels)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """``feats`` fine → coarse; returns ``dim`` channels at the finest level's resolution."""
        laterals = [lat(f) for lat, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 2, -1, -1):
            laterals[i] = laterals[i] + resize_to(laterals[i + 1], laterals[i])
        outs = [sm(x) for sm, x in zip(self.smooth, laterals)]
        fused = outs[0]
        for x in outs[1:]:
            fused = fused + resize_to(x, fused)
        return fused
