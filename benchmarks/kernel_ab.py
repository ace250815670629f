"""A/B of one CPU kernel (``rgbt_seg_ros/pipeline/kernels.py``) against its version at a git revision.

This machine's speed drifts by up to 2× within minutes, so two runs of a benchmark one after the other
cannot show a 10 % change. Here both versions run in one process, in alternating blocks of ``--block``
calls on the same inputs, and the ratio is taken per block pair: the drift cancels in each ratio.

    OMP_NUM_THREADS=1 python benchmarks/kernel_ab.py --base HEAD~1 [--kernel argmax_softmax] [--blocks 60]

Kernels and their inputs: ``argmax_softmax`` (9×640×480 logits → labels + confidence; ``--labels-only``
skips the confidence), ``hwc_to_chw`` (640×480×3 uint8 → normalised float CHW). Each call takes one of
four input sets in turn, so the inputs are not all in the cache; ``--cold`` also writes over a 64 MiB buffer
(untimed) before every call, so that the inputs come from memory as a pipeline's do after the network ran.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KERNELS = "rgbt_seg_ros/pipeline/kernels.py"


def load_revision(rev: str, folder: Path):
    """kernels.py as it was at ``rev``, imported as its own module (compiled afresh: no disk cache)."""
    shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{KERNELS}"], capture_output=True, text=True)
    if shown.returncode != 0:
        raise SystemExit(f"--base {rev}: git has no {KERNELS} there ({(shown.stderr.strip().splitlines() or ['?'])[-1]})")
    source = shown.stdout
    path = folder / "kernels_base.py"
    path.write_text(source.replace("cache=True", "cache=False"))
    spec = importlib.util.spec_from_file_location("kernels_base", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def calls(kernel: str, labels_only: bool):
    """(argument tuples, one per input set) for ``kernel``."""
    rng = np.random.default_rng(0)
    if kernel == "argmax_softmax":
        conf = np.empty(0 if labels_only else 480 * 640, np.float32)
        return [((3 * rng.standard_normal((9, 480 * 640))).astype(np.float32), np.empty(480 * 640, np.uint8), conf)
                for _ in range(4)]
    if kernel == "hwc_to_chw":
        scale, offset = np.full(3, 1 / (255 * 0.25), np.float32), np.full(3, -2.0, np.float32)
        return [(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), scale, offset, np.empty((3, 480, 640), np.float32))
                for _ in range(4)]
    raise SystemExit(f"--kernel: {kernel!r} is not argmax_softmax or hwc_to_chw")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision of the version to compare with (e.g. HEAD~1)")
    ap.add_argument("--kernel", default="argmax_softmax")
    ap.add_argument("--labels-only", action="store_true", help="argmax_softmax without the confidence")
    ap.add_argument("--blocks", type=int, default=60)
    ap.add_argument("--block", type=int, default=10, help="calls per block")
    ap.add_argument("--cold", action="store_true", help="evict the caches (untimed) before every call")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from rgbt_seg_ros.pipeline import kernels as current

    with tempfile.TemporaryDirectory() as tmp:
        base = load_revision(args.base, Path(tmp))
        new_fn, old_fn = getattr(current, args.kernel), getattr(base, args.kernel)
        inputs = calls(args.kernel, args.labels_only)
        old_fn(*inputs[0])  # compile both before timing
        new_fn(*inputs[0])

        evict = np.zeros(64 << 20, np.uint8) if args.cold else None

        def block(fn) -> float:
            spent = 0.0
            for i in range(args.block):
                if evict is not None:
                    evict[::64] += 1  # one write per cache line
                t = time.thread_time()
                fn(*inputs[i % len(inputs)])
                spent += time.thread_time() - t
            return spent / args.block * 1e3

        old_ms, new_ms = [], []
        for _ in range(args.blocks):
            old_ms.append(block(old_fn))
            new_ms.append(block(new_fn))
    ratio = np.asarray(new_ms) / np.asarray(old_ms)
    print(f"{args.kernel}{' (labels only)' if args.labels_only else ''}{', cold' if args.cold else ''}: {args.base} {np.median(old_ms):.2f} ms, "
          f"working tree {np.median(new_ms):.2f} ms per call (thread CPU, medians of {args.blocks} blocks of "
          f"{args.block}); working tree / base per block: median {np.median(ratio):.3f}, "
          f"IQR {np.percentile(ratio, 25):.3f}–{np.percentile(ratio, 75):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
