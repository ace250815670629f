"""``rgbt-seg``: the command-line front door. Each subcommand lives in ``rgbt_seg_ros/tools/<name>.py``.

A tool module provides ``HELP`` (one line), ``configure(parser)`` and ``main(args) -> int``. Modules are
imported only when their subcommand runs, so ``rgbt-seg --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from rgbt_seg_ros import __version__
from rgbt_seg_ros.errors import RgbtSegError

# subcommand -> (module, one-line help). Order is the order shown in --help.
SUBCOMMANDS = {
    "demo": ("rgbt_seg_ros.tools.demo", "write a synthetic demo bag, segment it with the built-in model, write a preview"),
    "replay": ("rgbt_seg_ros.tools.replay", "run the pipeline over a rosbag2 / ROS 1 bag and write an output bag"),
    "infer": ("rgbt_seg_ros.tools.infer", "run the pipeline over paired image files and write label/colour/confidence PNGs"),
    "networks": ("rgbt_seg_ros.tools.networks", "list the registered networks and variants with parameters and GMACs"),
    "train": ("rgbt_seg_ros.tools.train", "train a network from a YAML config and write a self-describing model file"),
    "evaluate": ("rgbt_seg_ros.tools.evaluate", "evaluate a model file on a dataset: mIoU, mAcc, confusion matrix"),
    "export": ("rgbt_seg_ros.tools.export", "export a model file to ONNX with its metadata and a parity check"),
    "bench": ("rgbt_seg_ros.tools.bench", "benchmark networks, backends and the pipeline overhead"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rgbt-seg",
        description="RGB-thermal / RGB-depth fusion semantic segmentation: demo, bag replay, image folders, "
                    "training, evaluation, export and benchmarks. The ROS 2 node is `ros2 run rgbt_seg_ros rgbt_seg_node`.",
    )
    parser.add_argument("--version", action="version", version=f"rgbt-seg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        args = parser.parse_args(argv)  # prints help / version / an "invalid choice" error
        parser.print_help()
        return 0 if args.command is None and not argv else 2
    name = argv[0]
    module = importlib.import_module(SUBCOMMANDS[name][0])
    sub_parser = argparse.ArgumentParser(prog=f"rgbt-seg {name}", description=module.HELP,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
    module.configure(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    previous = _on_sigterm_raise()
    try:
        return int(module.main(args) or 0)
    except RgbtSegError as exc:
        print(f"rgbt-seg {name}: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"rgbt-seg {name}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"rgbt-seg {name}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, docker stop, systemd) unwinds like Ctrl-C, so outputs being written are removed."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _on_sigterm_raise():
    """Install the SIGTERM handler (main thread only); returns the previous handler, or None if not installed."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


if __name__ == "__main__":
    sys.exit(main())
