"""rgbt-seg demo: synthetic RGB-T bag → pipeline with the built-in model → output bag + preview PNG."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HELP = """Write a synthetic RGB + thermal rosbag2 that behaves like a real rig (RGB 1280x720 at 30 Hz, thermal
640x512 mono16 at ~9 Hz with its own clock offset, jitter and dropped frames, CameraInfos, a thermal
camera mounted beside the RGB camera), segment it with the built-in model, and write:

  OUT/demo_input/        the input bag (mcap)
  OUT/demo_output/       input topics + /rgbt_seg/{labels,colour,confidence,overlay,info}
  OUT/pipeline.yaml      the registration used (plane-induced homography); reuse it with `rgbt-seg replay`
  OUT/preview.png        RGB | registered thermal | colour labels | confidence, for the first pair

Nothing is downloaded. Without the built-in model file the demo runs an UNTRAINED network and says so.

example:
  rgbt-seg demo                       # ./rgbt_seg_demo, 30 RGB frames (1 s)
  rgbt-seg demo --out /tmp/d --frames 90 --day"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("rgbt_seg_demo"),
                        help="output folder (default ./rgbt_seg_demo)")
    parser.add_argument("--frames", type=int, default=30, help="RGB frames at 30 Hz (default 30 = 1 s)")
    parser.add_argument("--day", action="store_true", help="a day scene (default: night, where thermal matters most)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    parser.add_argument("--model", help="model file instead of the built-in one")
    parser.add_argument("--force", action="store_true", help="replace the bags of an earlier run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def untrained_backend(class_set: str = "synthetic", input_size: tuple[int, int] = (480, 640),
                      variant: str = "mobilenetv3_small_100", modality: str = "thermal"):
    """A registry fusion network with random weights (card says trained=False): for when no model file exists."""
    import torch

    from rgbt_seg_ros.inference.artifact import ModelCard
    from rgbt_seg_ros.inference.torch_backend import TorchBackend
    from rgbt_seg_ros.networks import create_network
    from rgbt_seg_ros.pipeline.palettes import get_class_set

    classes = get_class_set(class_set)
    torch.manual_seed(0)
    net = create_network("fusion_baseline", classes.num_classes, modality=modality, variant=variant,
                         pretrained=False, aux_channels=1)
    card = ModelCard(network="fusion_baseline", variant=variant, num_classes=classes.num_classes,
                     class_names=list(classes.class_names), palette=[list(c) for c in classes.palette],
                     modality=modality, input_size=tuple(input_size), dataset=classes.name, trained=False,
                     notes="untrained fallback of rgbt-seg demo")
    return TorchBackend(net, card)


def preview_image(rgb: np.ndarray, result) -> np.ndarray:
    """RGB | registered thermal | colour labels | confidence, side by side at half the RGB size."""
    import cv2

    h, w = rgb.shape[:2]
    size = (w // 2, h // 2)
    aux = result.registered_aux if result.registered_aux is not None else np.zeros((h, w), np.float32)
    aux8 = cv2.applyColorMap(np.clip(aux * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[:, :, ::-1]
    conf8 = np.repeat(np.clip(result.confidence * 255.0, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    tiles = [cv2.resize(x, size, interpolation=cv2.INTER_AREA) for x in (rgb, aux8, result.colour, conf8)]
    for tile, text in zip(tiles, ("RGB", "thermal registered to RGB", "labels", "confidence")):
        # white on a darkened box: readable on the confidence tile's white as on the night RGB's black
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.8, 2)
        box = tile[max(0, 28 - th - 6):28 + base + 4, 4:min(tile.shape[1], 16 + tw)]
        box //= 4
        cv2.putText(tile, text, (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2, cv2.LINE_AA)
    return np.concatenate(tiles, axis=1)


def main(args: argparse.Namespace) -> int:
    import cv2
    import yaml

    from rgbt_seg_ros.errors import RgbtSegError
    from rgbt_seg_ros.inference import builtin_model_path, create_backend
    from rgbt_seg_ros.io.bag import folders_to_make, remove_made_folders
    from rgbt_seg_ros.pipeline.config import PipelineConfig
    from rgbt_seg_ros.pipeline.pipeline import SegmentationPipeline
    from rgbt_seg_ros.synthetic.demo_bag import TOPICS, DemoBagSpec, write_demo_bag
    from rgbt_seg_ros.tools import check_output_folder
    from rgbt_seg_ros.tools.replay import ReplaySettings, check_modality, run_replay

    t0 = time.perf_counter()
    out: Path = args.out
    if args.frames < 1:
        raise RgbtSegError(f"--frames: must be ≥ 1, got {args.frames}")
    if args.seed < 0:
        raise RgbtSegError(f"--seed: must be ≥ 0, got {args.seed}")  # numpy's generators take no negative seed
    check_output_folder(out)
    in_bag, out_bag = out / "demo_input", out / "demo_output"
    for p in (in_bag, out_bag):
        if p.exists() and not args.force:
            raise RgbtSegError(f"output {p} exists (an earlier demo run); pass --force to replace it or choose --out")
    spec = DemoBagSpec(frames=args.frames, seed=args.seed, night=not args.day)

    model_path = Path(args.model) if args.model else builtin_model_path()
    if model_path.is_file():
        backend = create_backend(model_path)
        model_desc = str(model_path)
        if backend.card.modality != "thermal":
            raise RgbtSegError(f"model {model_path}: an RGB-{backend.card.modality} model; "
                               f"the demo bag is RGB + thermal")
        for line in check_modality(backend.card, "thermal", rgb_only=False):
            print(line, file=sys.stderr)  # e.g. the trained=false warning
    elif args.model:
        raise RgbtSegError(f"--model {args.model}: file does not exist")
    else:
        print(f"UNTRAINED weights: the built-in model is missing ({model_path}); running an untrained "
              f"fusion_baseline/mobilenetv3_small_100 with the synthetic classes, so the labels are meaningless",
              file=sys.stderr)
        backend = untrained_backend()
        model_desc = "untrained fusion_baseline/mobilenetv3_small_100"

    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(desc="render", unit="img", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    made = folders_to_make(out)
    try:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RgbtSegError(f"--out {out}: cannot create it ({exc.strerror or exc})") from None
        demo = write_demo_bag(in_bag, spec, force=args.force, progress=progress if bar is not None else None)
    except BaseException:  # an error or Ctrl-C while making --out or rendering: the bag writer left nothing, nor do we
        remove_made_folders(made)
        raise
    if bar is not None:
        bar.close()
    config = demo.pipeline_config()
    (out / "pipeline.yaml").write_text(yaml.safe_dump({"pipeline": config}, sort_keys=False), encoding="utf-8")
    print(f"wrote {in_bag}: {demo.counts[TOPICS['rgb']]} RGB frames {spec.rgb_size[1]}x{spec.rgb_size[0]}, "
          f"{demo.counts[TOPICS['thermal']]} thermal frames {spec.thermal_size[1]}x{spec.thermal_size[0]} "
          f"({demo.thermal_dropped} dropped by the simulated camera)")

    pipeline = SegmentationPipeline(backend, PipelineConfig.from_dict(config))
    settings = ReplaySettings(rgb_topic=TOPICS["rgb"], aux_topic=TOPICS["thermal"], modality="thermal",
                              rgb_info_topic=TOPICS["rgb_info"], aux_info_topic=TOPICS["thermal_info"],
                              force=args.force, progress=not args.no_progress, model_file=model_desc)
    summary = run_replay(in_bag, out_bag, pipeline, settings, keep_first=True)
    print("\n".join(summary.lines()))
    if summary.first_result is not None:
        preview = preview_image(*summary.first_result)
        path = out / "preview.png"
        cv2.imwrite(str(path), preview[:, :, ::-1])
        print(f"wrote {path} (RGB | registered thermal | colour labels | confidence)")
    print(f"demo finished in {time.perf_counter() - t0:.1f} s; model: {model_desc}")
    print(f"replay it yourself: rgbt-seg replay {in_bag} --out {out / 'my_output'} --config {out / 'pipeline.yaml'}"
          + (" --model MODEL" if not model_path.is_file() else ""))
    return 0
