"""One registry of fusion networks: every network module registers its builder here.

A builder is ``builder(num_classes, modality, variant, pretrained, aux_channels) -> nn.Module``.
Every network follows the same contract:

* ``forward(rgb: B×3×H×W, aux: B×C×H×W)``; any H×W (pad to the needed multiple, crop back);
* eval mode returns logits ``B×K×H×W``;
* train mode returns a dict with ``"logits"`` and, where the paper has them, ``"aux_logits"``
  (list of B×K×h×w tensors, any resolution) and network-specific extras (e.g. ``"fused"``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from rgbt_seg_ros.errors import RgbtSegError

MODALITIES = ("thermal", "depth")


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    builder: Callable[..., nn.Module]
    variants: tuple[str, ...]
    default_variant: str
    smallest_variant: str
    description: str
    paper: str = ""
    # Paper figures, where the paper gives them: {variant: (params_M, GMACs_at_640x480)}; None = not given.
    paper_figures: dict = field(default_factory=dict)


_REGISTRY: dict[str, NetworkSpec] = {}


def register_network(name: str, *, variants: tuple[str, ...], default_variant: str, smallest_variant: str | None = None,
                     description: str, paper: str = "", paper_figures: dict | None = None):
    """Decorator registering a builder under ``name``."""

    def wrap(builder: Callable[..., nn.Module]):
        if name in _REGISTRY:
            raise ValueError(f"network {name!r} is registered twice")
        if default_variant not in variants:
            raise ValueError(f"network {name!r}: default variant {default_variant!r} not in {variants}")
        _REGISTRY[name] = NetworkSpec(name, builder, tuple(variants), default_variant,
                                      smallest_variant or default_variant, description, paper,
                                      dict(paper_figures or {}))
        return builder

    return wrap


def _ensure_loaded() -> None:
    # Importing the package imports every network module, which fills the registry.
    from rgbt_seg_ros import networks  # noqa: F401


def list_networks() -> list[NetworkSpec]:
    _ensure_loaded()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_network_spec(name: str) -> NetworkSpec:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise RgbtSegError(f"unknown network {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def create_network(name: str, num_classes: int, modality: str = "thermal", variant: str | None = None,
                   pretrained: bool = False, aux_channels: int | None = None) -> nn.Module:
    """Build a registered network. ``aux_channels`` defaults to 1 (thermal, or raw depth; 3 for HHA depth)."""
    spec = get_network_spec(name)
    if modality not in MODALITIES:
        raise RgbtSegError(f"modality must be one of {MODALITIES}, got {modality!r}")
    variant = variant or spec.default_variant
    if variant not in spec.variants:
        raise RgbtSegError(f"network {name!r} has no variant {variant!r}; variants: {', '.join(spec.variants)}")
    if num_classes < 2:
        raise RgbtSegError(f"num_classes must be >= 2, got {num_classes}")
    aux_channels = 1 if aux_channels is None else int(aux_channels)
    if aux_channels not in (1, 3):
        raise RgbtSegError(f"aux_channels must be 1 or 3 (HHA depth), got {aux_channels}")
    net = spec.builder(num_classes=num_classes, modality=modality, variant=variant, pretrained=pretrained,
                       aux_channels=aux_channels)
    net.network_name, net.variant, net.modality = name, variant, modality
    return net
