"""``rgbt-seg networks``: every registered network and variant with its parameters and GMACs."""
from __future__ import annotations

import argparse
import json

from rgbt_seg_ros.errors import RgbtSegError

HELP = ("list the registered networks and variants with parameters (M) and GMACs (multiply-adds = FLOPs/2, "
        "what papers call GFLOPs), counted on the meta device, beside the paper's figures where it gives them")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", help="networks to list (default: all)")
    parser.add_argument("--variant", help="only this variant")
    parser.add_argument("--size", default="640x480", help="input W×H for the MAC count (default 640x480)")
    parser.add_argument("--classes", type=int, default=9, help="number of classes (default 9, MFNet)")
    parser.add_argument("--aux-channels", type=int, default=1, choices=(1, 3),
                        help="channels of the thermal/depth input (3 = HHA depth)")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of a table")


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise RgbtSegError(f"--size must be WxH such as 640x480, got {text!r}") from None
    if w < 1 or h < 1:
        raise RgbtSegError(f"--size must be positive, got {text!r}")
    return w, h


def _fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def main(args: argparse.Namespace) -> int:
    from rgbt_seg_ros.networks import get_network_spec, list_networks
    from rgbt_seg_ros.networks.complexity import network_complexity

    w, h = _parse_size(args.size)
    specs = [get_network_spec(n) for n in args.names] if args.names else list_networks()
    rows = []
    for spec in specs:
        variants = spec.variants
        if args.variant:
            if args.variant not in spec.variants:
                raise RgbtSegError(f"network {spec.name!r} has no variant {args.variant!r}; "
                                   f"variants: {', '.join(spec.variants)}")
            variants = (args.variant,)
        for variant in variants:
            params_m, gmacs = network_complexity(spec.name, variant, h, w, args.classes, args.aux_channels)
            paper = spec.paper_figures.get(variant) or (None, None)
            rows.append({"network": spec.name, "variant": variant, "default": variant == spec.default_variant,
                         "params_M": round(params_m, 3), "GMACs": round(gmacs, 2), "input": f"{w}x{h}",
                         "paper_params_M": paper[0], "paper_GMACs": paper[1], "description": spec.description})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    header = f"{'network':<16} {'variant':<24} {'params M':>9} {'GMACs':>8} {'paper M':>8} {'paper GMACs':>11}"
    print(f"GMACs = multiply-adds (FLOPs/2) at {w}x{h}, batch 1, eval mode; * = default variant")
    print(header)
    print("-" * len(header))
    for r in rows:
        name = r["variant"] + (" *" if r["default"] else "")
        print(f"{r['network']:<16} {name:<24} {r['params_M']:>9.2f} {r['GMACs']:>8.2f} "
              f"{_fmt(r['paper_params_M'], 2):>8} {_fmt(r['paper_GMACs'], 2):>11}")
    return 0
