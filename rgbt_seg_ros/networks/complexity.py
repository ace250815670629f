"""Parameter and multiply-add counts of the registered networks.

``torch.utils.flop_counter.FlopCounterMode`` counts FLOPs of convolutions, matrix products and attention,
with 2 FLOPs per multiply-add; element-wise ops, pooling, resampling and normalisation are not counted.
:func:`count_macs` returns **GMACs = FLOPs / 2**, which is what the papers call "GFLOPs" (fvcore / thop
convention). Counting runs on the ``meta`` device (shapes only, no arithmetic, no memory), so even a
300-GMAC network costs well under a second; if some op lacks a meta kernel it falls back to a real CPU run.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from rgbt_seg_ros.networks._registry import create_network


def count_parameters(net: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for p in net.parameters():
        if not trainable_only or p.requires_grad:
            seen[id(p)] = p.numel()
    return sum(seen.values())


class _CountedGraph(nn.Module):
    """The graph a network's paper counts: ``net.complexity_forward`` where defined (e.g. MAFS with its fused
    image output), else the eval forward."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor):
        graph = getattr(self.net, "complexity_forward", None)
        return graph(rgb, aux) if graph is not None else self.net(rgb, aux)


def _count_flops(net: nn.Module, rgb: torch.Tensor, aux: torch.Tensor, state: dict | None) -> int:
    counter = FlopCounterMode(display=False)
    graph = _CountedGraph(net)
    with counter, torch.no_grad():
        if state is None:
            graph(rgb, aux)
        else:
            functional_call(graph, {f"net.{k}": v for k, v in state.items()}, (rgb, aux))
    return counter.get_total_flops()


def count_macs(net: nn.Module, h: int = 480, w: int = 640, batch: int = 1, aux_channels: int | None = None) -> float:
    """Multiply-adds (GMACs, i.e. FLOPs / 2) of one eval-mode forward on a ``batch``×{3,C}×``h``×``w`` input.

    A network may define ``complexity_forward(rgb, aux)`` when the graph its paper counts differs from the
    eval forward (MAFS counts its fused-image branch); that method is counted instead.
    """
    aux_channels = aux_channels if aux_channels is not None else int(getattr(net, "aux_channels", 1))
    was_training = net.training
    net.eval()
    try:
        try:
            # Meta copies of parameters and buffers: the real weights are untouched and nothing is computed.
            state = {k: torch.empty_like(v, device="meta") for k, v in
                     list(net.named_parameters()) + list(net.named_buffers())}
            flops = _count_flops(net, torch.empty(batch, 3, h, w, device="meta"),
                                 torch.empty(batch, aux_channels, h, w, device="meta"), state)
        except (NotImplementedError, RuntimeError):
            device = next(net.parameters()).device
            if device.type == "meta":
                net.to_empty(device="cpu")  # values do not matter for counting, shapes do
                device = torch.device("cpu")
            flops = _count_flops(net, torch.zeros(batch, 3, h, w, device=device),
                                 torch.zeros(batch, aux_channels, h, w, device=device), None)
    finally:
        net.train(was_training)
    return flops / 2 / 1e9


def network_complexity(name: str, variant: str | None = None, h: int = 480, w: int = 640,
                       num_classes: int = 9, aux_channels: int = 1) -> tuple[float, float]:
    """(parameters in millions, GMACs at h×w) of a registered network, built on the meta device."""
    with torch.device("meta"):
        net = create_network(name, num_classes, variant=variant, aux_channels=aux_channels)
    return count_parameters(net) / 1e6, count_macs(net, h, w, aux_channels=aux_channels)
