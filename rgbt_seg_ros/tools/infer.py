"""rgbt-seg infer: the pipeline over paired image files, writing label / colour / confidence PNGs."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.tools import BACKEND_HELP, BACKENDS, check_output_folder

HELP = """Run the pipeline on image files: an RGB folder plus a thermal (or depth) folder whose files have the
same names (extensions may differ), or one folder of 4-channel RGB+T PNGs as MFNet stores them
(R, G, B, thermal; a 4th channel that is constant 255 is an ordinary alpha channel: such files are skipped).

Outputs, one file per input pair, named after the input:
  OUT/labels/NAME.png       class ids (8-bit PNG; 16-bit past 255 classes)
  OUT/colour/NAME.png       palette colours (RGB)
  OUT/confidence/NAME.png   max softmax probability as a 16-bit PNG: confidence = value / 65535
                            (or NAME.npy, float32 in [0, 1], with --confidence-format npy)
  OUT/overlay/NAME.png      with --overlay: colours blended over the RGB image

Thermal files: 8-bit or 16-bit grey (16-bit = raw counts, normalised as the model card says unless
--config overrides it).
Depth files: 16-bit PNG in millimetres (0 = invalid), or .npy float32 metres.

example:
  rgbt-seg infer --rgb data/vi --thermal data/ir --out seg/ --model mfnet.safetensors
  rgbt-seg infer --rgbt data/mfnet_images --out seg/ --model mfnet.safetensors"""

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy")


def configure(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("inputs (--rgb with --thermal or --depth, or --rgbt)")
    src.add_argument("--rgb", type=Path, help="folder of RGB images")
    second = src.add_mutually_exclusive_group()
    second.add_argument("--thermal", type=Path, help="folder of thermal images, same names as --rgb")
    second.add_argument("--depth", type=Path, help="folder of depth images (16-bit PNG mm or .npy m), same names")
    src.add_argument("--rgbt", type=Path, help="folder of 4-channel RGB+thermal PNGs (MFNet layout)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--model", help="model file (.safetensors or .onnx); default: the built-in model")
    parser.add_argument("--config", type=Path, help="pipeline YAML (registration, resize, overlay; "
                        "normalisation keys set here override the model card's)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS, help=BACKEND_HELP)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--confidence-format", default="png16", choices=("png16", "npy"),
                        help="png16 (value/65535) or npy (float32), default png16")
    parser.add_argument("--overlay", action="store_true", help="also write overlay images")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")


def _files(folder: Path, flag: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise RgbtSegError(f"{flag} {folder}: not a folder")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            if p.stem in found:
                raise RgbtSegError(f"{flag} {folder}: two files named {p.stem} ({found[p.stem].name}, {p.name})")
            found[p.stem] = p
    if not found:
        raise RgbtSegError(f"{flag} {folder}: no image files ({', '.join(IMAGE_EXTS)})")
    return found


def read_image(path: Path) -> np.ndarray:
    """An image file as stored (OpenCV channel order, any bit depth), or a .npy array."""
    import cv2

    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise RgbtSegError(f"file {path}: not a readable .npy array ({exc})") from None
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise RgbtSegError(f"file {path}: OpenCV cannot read it as an image")
    return image


def rgb_from_file(image: np.ndarray, path: Path) -> np.ndarray:
    import cv2

    if image.dtype != np.uint8:
        raise RgbtSegError(f"file {path}: RGB must be 8-bit, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise RgbtSegError(f"file {path}: RGB must have 1, 3 or 4 channels, got an array of shape {image.shape}")
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def aux_from_file(image: np.ndarray, path: Path, modality: str) -> tuple[np.ndarray, str]:
    """(array, encoding) as a message of that modality would carry it."""
    if image.ndim == 3:
        if image.shape[2] == 1 or (image[:, :, 0] == image[:, :, 1]).all() and (image[:, :, 0] == image[:, :, 2]).all():
            image = image[:, :, 0]  # grey stored as 3 channels
        else:
            raise RgbtSegError(f"file {path}: a {modality} image must have one channel, got {image.shape[2]}")
    if modality == "depth":
        if image.dtype == np.uint16:
            return image, "16UC1"
        if image.dtype == np.float32:
            return image, "32FC1"
        raise RgbtSegError(f"file {path}: depth must be 16-bit PNG (mm) or float32 .npy (m), got {image.dtype}")
    if image.dtype == np.uint8:
        return image, "mono8"
    if image.dtype == np.uint16:
        return image, "mono16"
    if image.dtype == np.float32:
        return image, "32FC1"
    raise RgbtSegError(f"file {path}: thermal must be 8/16-bit or float32, got {image.dtype}")


def _pairs(args) -> tuple[list[tuple[str, Path, Path | None]], str, list[str]]:
    """[(name, rgb file, aux file or None for --rgbt)], modality, notes."""
    notes: list[str] = []
    if args.rgbt is not None:
        if args.rgb or args.thermal or args.depth:
            raise RgbtSegError("--rgbt: use it alone, not with --rgb/--thermal/--depth")
        return [(n, p, None) for n, p in _files(args.rgbt, "--rgbt").items()], "thermal", notes
    if args.rgb is None or (args.thermal is None and args.depth is None):
        raise RgbtSegError("inputs: give --rgb DIR with --thermal DIR or --depth DIR, or --rgbt DIR")
    modality = "depth" if args.depth is not None else "thermal"
    aux_dir = args.depth or args.thermal
    rgb, aux = _files(args.rgb, "--rgb"), _files(aux_dir, f"--{modality}")
    common = sorted(rgb.keys() & aux.keys())
    if not common:
        raise RgbtSegError(f"--{modality} {aux_dir}: no file name matches one in --rgb {args.rgb} "
                           f"(e.g. {next(iter(rgb))} vs {next(iter(aux))})")
    for name, only in (("--rgb", rgb.keys() - aux.keys()), (f"--{modality}", aux.keys() - rgb.keys())):
        if only:
            notes.append(f"note: {len(only)} file(s) only in {name} skipped (e.g. {sorted(only)[0]})")
    return [(n, rgb[n], aux[n]) for n in common], modality, notes


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _imwrite(path: Path, image: np.ndarray) -> None:
    import cv2

    def write(tmp: Path) -> None:
        if not cv2.imwrite(str(tmp), image):
            raise RgbtSegError(f"output {path}: OpenCV could not write it")

    _write_atomic(path, write)


def main(args: argparse.Namespace) -> int:
    from rgbt_seg_ros.pipeline.pipeline import DEFAULT_OUTPUTS
    from rgbt_seg_ros.pipeline.timing import LatencyStats
    from rgbt_seg_ros.tools.replay import build_pipeline, check_modality

    check_output_folder(args.out)
    pairs, modality, notes = _pairs(args)
    outputs = set(DEFAULT_OUTPUTS) if args.overlay else set(DEFAULT_OUTPUTS) - {"overlay"}
    folders = {name: args.out / name for name in sorted(outputs)}
    conf_ext = ".png" if args.confidence_format == "png16" else ".npy"
    if not args.force:
        for name, _, _ in pairs:
            for kind, folder in folders.items():
                target = folder / (name + (conf_ext if kind == "confidence" else ".png"))
                if target.exists():
                    raise RgbtSegError(f"output {target} exists; pass --force to overwrite")
    pipeline, _ = build_pipeline(args.model, args.backend, args.device, args.precision, args.config)
    for line in notes + check_modality(pipeline.card, modality, rgb_only=False, flag="--{}"):
        print(line, file=sys.stderr)
    def make_folders() -> None:  # when the first result is ready: a first input that fails leaves nothing
        for folder in folders.values():
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RgbtSegError(f"--out {args.out}: cannot create {folder} ({exc.strerror or exc})") from None

    warmup_s = pipeline.warm_up()  # the first pairs' timings are then the network's, as later ones
    stats = LatencyStats()
    done = skipped = 0
    for name, rgb_path, aux_path in pairs:
        if aux_path is None:
            image = read_image(rgb_path)
            if image.ndim != 3 or image.shape[2] != 4 or image.dtype != np.uint8:
                raise RgbtSegError(f"file {rgb_path}: --rgbt needs 8-bit 4-channel PNGs (R, G, B, thermal), "
                                   f"got {image.dtype} {image.shape}")
            if (image[:, :, 3] == 255).all():
                print(f"note: {rgb_path.name} skipped: its 4th channel is constant 255 (alpha, not thermal)",
                      file=sys.stderr)
                skipped += 1
                continue
            rgb = np.ascontiguousarray(image[:, :, 2::-1])  # OpenCV gives B, G, R, T
            aux, aux_enc = image[:, :, 3].copy(), "mono8"
        else:
            rgb = rgb_from_file(read_image(rgb_path), rgb_path)
            aux, aux_enc = aux_from_file(read_image(aux_path), aux_path, modality)
        try:
            result = pipeline.process(rgb, aux, aux_enc, outputs=outputs)
        except RgbtSegError as exc:
            raise RgbtSegError(f"pair {name}: {exc}") from None
        stats.add(result.timings)
        if done == 0:
            make_folders()
        _imwrite(folders["labels"] / f"{name}.png", result.labels)
        _imwrite(folders["colour"] / f"{name}.png", result.colour[:, :, ::-1])
        if "overlay" in folders:
            _imwrite(folders["overlay"] / f"{name}.png", result.overlay[:, :, ::-1])
        if conf_ext == ".png":
            _imwrite(folders["confidence"] / f"{name}.png",
                     np.round(result.confidence * 65535.0).astype(np.uint16))
        else:
            _write_atomic(folders["confidence"] / f"{name}.npy",
                          lambda tmp: np.save(tmp, result.confidence.astype(np.float32)))
        done += 1
    if done == 0:
        raise RgbtSegError(f"inputs: none of the {len(pairs)} file(s) could be segmented")
    summary = stats.summary().get("total", {})
    print(f"wrote {done} pair(s) to {args.out}" + (f" ({skipped} skipped)" if skipped else "")
          + (f"; pipeline total per pair p50 {summary['p50']:.1f} ms, p95 {summary['p95']:.1f} ms (after a "
             f"{warmup_s:.1f} s network warm-up)" if summary else ""))
    return 0
