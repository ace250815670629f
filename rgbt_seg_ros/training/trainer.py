"""``rgbt-seg train CONFIG.yaml``: train any registry network and write a self-describing model file.

Single process or ``torchrun`` (DistributedDataParallel + DistributedSampler; NCCL on CUDA, gloo on CPU).
A run is a number of optimizer *steps*, split into *stages* (one stage by default; MAFS uses two:
masked reconstruction, then joint fusion + segmentation). Everything that decides the next step —
model, optimizer, scheduler, AMP scaler, EMA, task-weighting state, RNG states, step counter — is in
the checkpoint, so ``resume`` continues the same run: same step, same optimizer state, same batches
(augmentations are seeded by (seed, epoch, sample index), the sampler by (seed, epoch)).

Checkpoints are ``torch.save`` files read back with ``weights_only=True`` (tensors, dicts, lists, numbers
and strings only). The final model is written with :func:`rgbt_seg_ros.inference.save_model`.
See ``config/train/*.yaml`` for the configuration keys; :data:`DEFAULTS` lists them all.
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from rgbt_seg_ros.errors import RgbtSegError, first_line
from rgbt_seg_ros.inference.artifact import IMAGENET_MEAN, IMAGENET_STD, ModelCard, save_model
from rgbt_seg_ros.training import losses as L
from rgbt_seg_ros.training.datasets import IGNORE, TrainTransform, build_dataset
from rgbt_seg_ros.training.metrics import ConfusionMatrix, excluded_classes

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "output_dir": "runs/train",
    "model_out": None,  # default: <output_dir>/model.safetensors
    "resume": None,  # "auto" (latest checkpoint in output_dir) or a checkpoint path
    "network": {"name": None, "variant": None, "pretrained": False, "aux_channels": None},
    "modality": "thermal",
    "data": {
        "train": None, "val": None,
        "input_size": [480, 640],  # training crop (h, w) = the card's network input size
        "batch_size": 8, "num_workers": 0,
        "rgb_mean": list(IMAGENET_MEAN), "rgb_std": list(IMAGENET_STD), "aux_mean": [0.5], "aux_std": [0.25],
        "normalization": {},  # pipeline NormalizationConfig (thermal AGC, depth range); recorded in the card
        "augment": {"scale": [0.5, 2.0], "flip": True, "photometric": 0.5, "aux_dropout": 0.0, "rgb_dropout": 0.0},
    },
    "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01, "momentum": 0.9, "betas": [0.9, 0.999],
              "nesterov": False},
    "schedule": {"name": "poly", "power": 0.9, "gamma": 0.999, "min_lr_ratio": 0.0, "warmup_steps": 0,
                 "warmup_ratio": 0.1},
    "train": {"steps": 1000, "amp": False, "grad_clip": None, "ema": None, "log_every": 10, "val_every": 0,
              "ckpt_every": 200, "keep_checkpoints": 2, "tensorboard": True, "progress": True, "num_images": 4,
              "save_dtype": "float32", "find_unused_parameters": True, "threads": None, "channels_last": False},
    "loss": {
        "ce": 1.0, "dice": 0.0, "ohem": 0.0, "ohem_thresh": 0.7, "ohem_min_kept": 100000,
        "class_weights": None,  # null | list of K floats | "auto" (median-frequency from a sample of the data)
        "aux_weight": 0.4,  # deep supervision: weight of each "aux_logits" head
        "kd": 0.0, "kd_temperature": 4.0, "teacher": None,  # teacher: a model file (.safetensors)
        "fusion": 0.0, "fusion_key": "fused", "fusion_grad_weight": 10.0,  # fused-image loss (MAFS)
        "reconstruction": 0.0, "mask_patch": 32, "mask_ratio": [0.1, 0.7],  # masked-reconstruction stage
        "task_weighting": None,  # null | {"alpha": 0.8, "temperature": 500, "period": 100}
    },
    "stages": None,  # list of {"name", "steps", "loss": {overrides}}; default: one stage of train.steps
    "card": {"dataset": None, "notes": ""},
}


# ------------------------------------------------------------------------------------------------- config

def _merge(base: dict, over: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if k not in base:
            raise RgbtSegError(f"config key {where}{k!r} is unknown; known: {', '.join(base)}")
        # data.train / data.val are dataset mappings and data.normalization a pipeline config: taken whole.
        opaque = where == "data." and k in ("train", "val", "normalization")
        if isinstance(base[k], dict) and not opaque and v is not None:
            if not isinstance(v, dict):
                raise RgbtSegError(f"config key {where}{k!r} must be a mapping")
            out[k] = _merge(base[k], v, f"{where}{k}.")
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config(path_or_dict) -> dict:
    """YAML file (or dict) merged over :data:`DEFAULTS`; unknown keys are errors naming the key."""
    if isinstance(path_or_dict, dict) and "_source" in path_or_dict:
        return path_or_dict  # already loaded (and possibly overridden by the command line)
    if isinstance(path_or_dict, dict):
        data, src = path_or_dict, "config"
    else:
        import yaml

        path = Path(path_or_dict)
        if not path.is_file():
            raise RgbtSegError(f"training config {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:  # a checkpoint or model file given by mistake
            raise RgbtSegError(f"training config {path}: not valid YAML ({first_line(exc)})") from None
        src = str(path)
    if not isinstance(data, dict):
        raise RgbtSegError(f"training config {src}: the top level must be a mapping")
    cfg = _merge(DEFAULTS, data, "")
    if not cfg["network"]["name"]:
        raise RgbtSegError("config key 'network.name' is required (see `rgbt-seg networks`)")
    if not cfg["data"]["train"]:
        raise RgbtSegError("config key 'data.train' is required (a dataset mapping with 'type')")
    if cfg["modality"] not in ("thermal", "depth"):
        raise RgbtSegError(f"config key 'modality': {cfg['modality']!r} is not thermal or depth")
    if cfg["optim"]["name"] not in ("adamw", "sgd"):
        raise RgbtSegError(f"config key 'optim.name': {cfg['optim']['name']!r} is not adamw or sgd")
    if cfg["schedule"]["name"] not in ("poly", "cosine", "exponential", "constant"):
        raise RgbtSegError(f"config key 'schedule.name': {cfg['schedule']['name']!r} is not poly, cosine, "
                           "exponential or constant")
    _check_numbers(cfg)
    for st in cfg["stages"] or []:
        if not isinstance(st, dict) or "steps" not in st:
            raise RgbtSegError("config key 'stages': every stage needs 'steps'")
        unknown = set(st) - {"name", "steps", "loss"}
        if unknown:
            raise RgbtSegError(f"config key 'stages': unknown stage key {sorted(unknown)[0]!r}")
        _merge(DEFAULTS["loss"], st.get("loss") or {}, "stages.loss.")
    stages_of(cfg)  # the step counts, checked before anything is made on disk
    cfg["_source"] = src
    return cfg


# (section, key, kind, least): kind "int" or "number"; None values mean "off" where the defaults say so
_NUMBERS = (("data", "batch_size", "int", 1), ("data", "num_workers", "int", 0), ("optim", "lr", "number", 0.0),
            ("optim", "weight_decay", "number", 0.0), ("train", "log_every", "int", 1),
            ("train", "val_every", "int", 0), ("train", "ckpt_every", "int", 0), ("train", "keep_checkpoints", "int", 0),
            ("train", "threads", "int", 0), ("schedule", "warmup_steps", "int", 0))


def _check_numbers(cfg: dict) -> None:
    """Wrong types and impossible values as one line naming the key, not as a traceback hours into a run."""
    for section, key, kind, least in _NUMBERS:
        value = cfg[section][key]
        if value is None and DEFAULTS[section][key] is None:
            continue
        if kind == "number" and isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                value = cfg[section][key] = float(value)
            except ValueError:
                pass
        ok_type = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type or value < least or (key == "lr" and value <= 0):
            need = "a whole number" if kind == "int" else "a number"
            bound = "> 0" if key == "lr" else f"≥ {least}"
            raise RgbtSegError(f"config key '{section}.{key}': must be {need} {bound}, got {value!r}")
    size = cfg["data"]["input_size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in size)):
        raise RgbtSegError(f"config key 'data.input_size': must be [height, width] in pixels (≥ 8), got {size!r}")
    if cfg["train"]["save_dtype"] not in ("float32", "float16", "bfloat16"):
        raise RgbtSegError(f"config key 'train.save_dtype': {cfg['train']['save_dtype']!r} is not float32, float16 "
                           f"or bfloat16")


def stages_of(cfg: dict) -> list[dict]:
    """[(name, first_step, last_step_exclusive, loss config)] covering the whole run."""
    raw = cfg["stages"] or [{"name": "train", "steps": cfg["train"]["steps"]}]
    out, start = [], 0
    for i, st in enumerate(raw):
        n = st["steps"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            where = "train.steps" if not cfg["stages"] else f"stages[{i}].steps"
            raise RgbtSegError(f"config key '{where}': must be a whole number ≥ 1, got {n!r}")
        out.append({"name": st.get("name", f"stage{i + 1}"), "start": start, "end": start + n,
                    "loss": _merge(cfg["loss"], st.get("loss") or {}, "stages.loss.")})
        start += n
    return out


# ------------------------------------------------------------------------------------------------- schedule

class LRFactor:
    """Multiplicative LR factor per step: warm-up (linear from ``warmup_ratio``) then poly/cosine/exponential.
    A callable object (not a lambda) so LambdaLR's state_dict carries it."""

    def __init__(self, name: str, total: int, warmup: int = 0, warmup_ratio: float = 0.1, power: float = 0.9,
                 gamma: float = 0.999, min_ratio: float = 0.0):
        self.name, self.total, self.warmup, self.warmup_ratio = name, max(1, int(total)), int(warmup), float(warmup_ratio)
        self.power, self.gamma, self.min_ratio = float(power), float(gamma), float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        if self.name == "poly":
            f = (1.0 - t) ** self.power
        elif self.name == "cosine":
            f = 0.5 * (1.0 + math.cos(math.pi * t))
        elif self.name == "exponential":
            f = self.gamma ** (step - self.warmup)
        else:
            f = 1.0
        return self.min_ratio + (1.0 - self.min_ratio) * f


# ------------------------------------------------------------------------------------------------- distributed

def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": json.dumps(random.getstate()),
             "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _dataset_from(data_cfg: dict, key: str):
    """``data.<key>`` built; its errors say which of the config's datasets they are about."""
    try:
        return build_dataset(data_cfg[key])
    except RgbtSegError as exc:
        raise RgbtSegError(f"config key 'data.{key}': {exc}") from None


# ------------------------------------------------------------------------------------------------- trainer

class Trainer:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.world, self.rank, self.local_rank = _dist_info()
        self.distributed = self.world > 1
        if cfg["train"]["threads"]:
            torch.set_num_threads(int(cfg["train"]["threads"]))
        if torch.cuda.is_available():
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.is_main = self.rank == 0
        self.out_dir = Path(cfg["output_dir"])
        self.seed = int(cfg["seed"])
        _seed_everything(self.seed)
        self.stages = stages_of(cfg)
        self.total_steps = self.stages[-1]["end"]
        self._build_data()
        self._build_model()
        self._build_optim()
        if self.is_main:  # after everything the config names has been built: a typo there leaves no folder
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RgbtSegError(f"output_dir {self.out_dir}: cannot be made ({exc.strerror or exc})") from None
        self.step = 0
        self.skipped_steps = 0
        self.writer = None
        self.teacher = None
        self.weighting: L.AlphaFairDWA | None = None

    # -- construction -----------------------------------------------------------------------------
    def _transform(self, train: bool) -> TrainTransform:
        d = self.cfg["data"]
        a = d["augment"]
        return TrainTransform(d["input_size"], self.cfg["modality"], d["rgb_mean"], d["rgb_std"], d["aux_mean"],
                              d["aux_std"], train=train, scale=a["scale"], flip=a["flip"],
                              photometric=a["photometric"], aux_dropout=a["aux_dropout"],
                              rgb_dropout=a["rgb_dropout"], seed=self.seed, normalization=d["normalization"])

    def _build_data(self) -> None:
        d = self.cfg["data"]
        self.train_set = _dataset_from(d, "train")
        if self.train_set.modality != self.cfg["modality"]:
            raise RgbtSegError(f"config key 'modality' is {self.cfg['modality']!r} but data.train is "
                               f"{self.train_set.modality!r} data")
        self.train_tf = self._transform(True)
        self.train_set.transform = self.train_tf
        self.val_set = None
        if d["val"]:
            self.val_set = _dataset_from(d, "val")
            self.val_set.transform = self._transform(False)
        self.class_set = self.train_set.class_set
        self.num_classes = self.class_set.num_classes
        self.batch_size = int(d["batch_size"])
        per_rank = len(self.train_set) // self.world
        self.batches_per_epoch = per_rank // self.batch_size
        if self.batches_per_epoch < 1:
            raise RgbtSegError(f"data.train: {len(self.train_set)} samples are fewer than batch_size × ranks "
                               f"({self.batch_size} × {self.world})")

    def _build_model(self) -> None:
        from rgbt_seg_ros.networks import create_network

        n = self.cfg["network"]
        aux_channels = n["aux_channels"] or self.train_set.aux_channels
        try:
            self.model = create_network(n["name"], self.num_classes, modality=self.cfg["modality"],
                                        variant=n["variant"], pretrained=bool(n["pretrained"]),
                                        aux_channels=aux_channels)
        except RgbtSegError as exc:
            raise RgbtSegError(f"config key 'network': {exc}") from None
        self.aux_channels = aux_channels
        self.model.to(self.device)
        self.memory_format = torch.channels_last if self.cfg["train"]["channels_last"] else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.ema = None
        if self.cfg["train"]["ema"]:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(float(self.cfg["train"]["ema"])),
                                     use_buffers=True)
        self.ddp = self.model
        if self.distributed:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.local_rank] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(self.cfg["train"]["find_unused_parameters"]))

    def _build_optim(self) -> None:
        o, s = self.cfg["optim"], self.cfg["schedule"]
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on norms and biases
        groups = [{"params": decay, "weight_decay": float(o["weight_decay"])}, {"params": no_decay, "weight_decay": 0.0}]
        if o["name"] == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=float(o["lr"]), betas=tuple(o["betas"]))
        else:
            self.optimizer = torch.optim.SGD(groups, lr=float(o["lr"]), momentum=float(o["momentum"]),
                                             nesterov=bool(o["nesterov"]))
        self.lr_factor = LRFactor(s["name"], self.total_steps, s["warmup_steps"], s["warmup_ratio"], s["power"],
                                  s["gamma"], s["min_lr_ratio"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        amp = self.cfg["train"]["amp"]
        self.amp_dtype = None
        if amp:
            self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def _class_weights(self, spec) -> torch.Tensor | None:
        if spec is None:
            return None
        if spec == "auto":
            # Median-frequency balancing over (up to) 64 training samples.
            counts = np.zeros(self.num_classes, np.float64)
            for i in np.linspace(0, len(self.train_set) - 1, min(64, len(self.train_set))).astype(int):
                lab = self.train_set.read(int(i))["labels"]
                lab = lab[lab != IGNORE]
                counts += np.bincount(lab[lab < self.num_classes], minlength=self.num_classes)
            freq = counts / max(counts.sum(), 1)
            w = np.where(freq > 0, np.median(freq[freq > 0]) / np.maximum(freq, 1e-12), 0.0)
            return torch.tensor(w, dtype=torch.float32, device=self.device)
        if len(spec) != self.num_classes:
            raise RgbtSegError(f"config key 'loss.class_weights': {len(spec)} weights for {self.num_classes} classes")
        return torch.tensor([float(v) for v in spec], dtype=torch.float32, device=self.device)

    def _loader(self, epoch: int, skip_batches: int):
        from torch.utils.data import DataLoader, DistributedSampler

        sampler = DistributedSampler(self.train_set, num_replicas=self.world, rank=self.rank, shuffle=True,
                                     seed=self.seed, drop_last=True)
        sampler.set_epoch(epoch)
        self.train_tf.set_epoch(epoch)
        indices = list(sampler)[: self.batches_per_epoch * self.batch_size][skip_batches * self.batch_size:]
        nw = int(self.cfg["data"]["num_workers"])
        # its own generator: a DataLoader draws its base seed from the global torch generator otherwise,
        # which would shift every dropout mask after a mid-epoch resume (that makes a new loader)
        generator = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=indices, num_workers=nw,
                          drop_last=True, persistent_workers=False, pin_memory=self.device.type == "cuda",
                          generator=generator)

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        state = {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "rng": _rng_state(), "config": json.dumps({k: v for k, v in self.cfg.items() if k != "_source"})}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.weighting is not None:
            state["weighting"] = self.weighting.state_dict()
        return state

    def save_checkpoint(self) -> Path | None:
        if not self.is_main:
            return None
        path = self.out_dir / f"checkpoint_{self.step:07d}.pt"
        tmp = path.with_suffix(".pt.partial")
        try:
            torch.save(self.checkpoint_state(), tmp)
            tmp.replace(path)
        finally:  # Ctrl-C or a full disk mid-write: no half checkpoint left beside the good ones
            tmp.unlink(missing_ok=True)
        keep = int(self.cfg["train"]["keep_checkpoints"])
        for old in sorted(self.out_dir.glob("checkpoint_*.pt"))[:-keep] if keep > 0 else []:
            old.unlink()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise RgbtSegError(f"resume: checkpoint {path} does not exist")
        try:  # weights_only: a checkpoint never unpickles objects, only tensors and plain containers
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise RgbtSegError(f"resume: checkpoint {path} cannot be read ({first_line(exc)})") from None
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            if self.ema is not None and "ema" in state:
                self.ema.load_state_dict(state["ema"])
            self._pending_weighting = state.get("weighting")
            _set_rng_state(state["rng"])
            self.step = int(state["step"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise RgbtSegError(f"resume: checkpoint {path} does not fit this run's network and optimiser "
                               f"({first_line(exc)})") from None

    def _resume_path(self) -> Path | None:
        r = self.cfg["resume"]
        if not r:
            return None
        if r == "auto":
            found = sorted(self.out_dir.glob("checkpoint_*.pt"))
            return found[-1] if found else None
        return Path(r)

    # -- losses -----------------------------------------------------------------------------------
    def _teacher(self, lcfg):
        if self.teacher is None and lcfg["kd"] > 0:
            from rgbt_seg_ros.inference.artifact import load_model

            if not lcfg["teacher"]:
                raise RgbtSegError("config key 'loss.teacher' is required when loss.kd > 0 (a model file)")
            self.teacher, card = load_model(lcfg["teacher"], device=self.device)
            if card.num_classes != self.num_classes:
                raise RgbtSegError(f"loss.teacher {lcfg['teacher']}: {card.num_classes} classes, the data has "
                                   f"{self.num_classes}")
            # the teacher sees the student's input tensors: it must have been trained on the same ones
            d = self.cfg["data"]
            mine = {"modality": self.cfg["modality"], "aux_channels": self.aux_channels,
                    **{k: tuple(float(v) for v in d[k]) for k in ("rgb_mean", "rgb_std", "aux_mean", "aux_std")}}
            differs = [k for k, v in mine.items() if getattr(card, k) != v]
            ours = json.loads(json.dumps(self.train_tf.norm.to_dict()))  # tuples as lists, as a card stores them
            differs += [f"normalization.{k}" for k, v in card.normalization.items() if ours.get(k, v) != v]
            if differs:
                raise RgbtSegError(f"loss.teacher {lcfg['teacher']}: its card differs from this run in "
                                   f"{', '.join(differs)}; a teacher must take the student's inputs as they are")
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        return self.teacher

    def _seg_losses(self, out: dict, target: torch.Tensor, lcfg: dict, weights) -> dict[str, torch.Tensor]:
        logits = out["logits"]
        terms = {}

        def seg(lg):
            t = 0.0
            if lcfg["ce"]:
                t = t + lcfg["ce"] * L.cross_entropy(lg, target, weights)
            if lcfg["ohem"]:
                t = t + lcfg["ohem"] * L.ohem_cross_entropy(lg, target, weights, thresh=lcfg["ohem_thresh"],
                                                            min_kept=lcfg["ohem_min_kept"])
            if lcfg["dice"]:
                t = t + lcfg["dice"] * L.dice_loss(lg, target)
            return t

        main = seg(logits)
        if torch.is_tensor(main):
            terms["seg"] = main
        heads = out.get("aux_logits") or []
        if heads and lcfg["aux_weight"] and torch.is_tensor(main):
            terms["deep_sup"] = lcfg["aux_weight"] * sum(seg(h) for h in heads)
        return terms

    def compute_loss(self, rgb, aux, target, stage: dict, weights) -> tuple[torch.Tensor, dict[str, float]]:
        lcfg = stage["loss"]
        logs: dict[str, float] = {}
        stray = ((target >= self.num_classes) & (target != IGNORE)) | (target < 0)
        if bool(stray.any()):  # cross_entropy would fail with an index error (a device-side assert on CUDA)
            bad = torch.unique(target[stray])[:5].tolist()
            raise RgbtSegError(f"training labels hold class ids {bad} outside 0..{self.num_classes - 1} "
                               f"(ignore index {IGNORE}); check the dataset's class set and label mapping")
        if lcfg["reconstruction"]:
            # Masked reconstruction: hide random 32×32 patches of both inputs; the fused image must restore them.
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step * self.world + self.rank)
            b, _, h, w = rgb.shape
            m_rgb = L.random_patch_mask(b, h, w, lcfg["mask_patch"], lcfg["mask_ratio"], g).to(self.device)
            m_aux = L.random_patch_mask(b, h, w, lcfg["mask_patch"], lcfg["mask_ratio"], g).to(self.device)
            net_rgb, net_aux = rgb * m_rgb, aux * m_aux  # 0 = the mean in normalised space
        else:
            net_rgb, net_aux = rgb, aux
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            try:
                out = self.ddp(net_rgb, net_aux)
            except ValueError as exc:
                if "Expected more than 1 value per channel" not in str(exc):
                    raise
                # torch's batch norm on a 1×1 pooled map (pyramid pooling) cannot train on one image
                raise RgbtSegError(f"network {self.cfg['network']['name']}: {rgb.shape[0]} image(s) per step and "
                                   "process is too few for its batch norm on pooled 1×1 maps; use "
                                   "data.batch_size ≥ 2 per process") from None
        if not isinstance(out, dict):
            out = {"logits": out}
        terms: dict[str, torch.Tensor] = {}
        if lcfg["ce"] or lcfg["ohem"] or lcfg["dice"]:
            terms.update(self._seg_losses(out, target, lcfg, weights))
        if lcfg["reconstruction"] or lcfg["fusion"]:
            key = lcfg["fusion_key"]
            if key not in out:
                raise RgbtSegError(f"loss.reconstruction/fusion: network {self.cfg['network']['name']!r} returns no "
                                   f"{key!r} output in train mode (it returns {', '.join(out)})")
            rgb01, aux01 = self._unit_inputs(rgb, aux)
            rec = L.fusion_loss(out[key], rgb01, aux01, lcfg["fusion_grad_weight"])
            terms["fusion"] = (lcfg["reconstruction"] or lcfg["fusion"]) * rec
        if lcfg["kd"]:
            teacher = self._teacher(lcfg)
            with torch.no_grad():
                t_logits = teacher(rgb, aux)
            terms["kd"] = lcfg["kd"] * L.kd_kl(out["logits"], t_logits, lcfg["kd_temperature"], target)
        if not terms:
            raise RgbtSegError(f"stage {stage['name']!r}: every loss weight is 0")
        if lcfg["task_weighting"]:
            if self.weighting is None:
                tw = lcfg["task_weighting"]
                self.weighting = L.AlphaFairDWA(sorted(terms), float(tw.get("alpha", 0.8)),
                                                float(tw.get("temperature", 500.0)), int(tw.get("period", 100)))
                pending = getattr(self, "_pending_weighting", None)
                if pending:
                    self.weighting.load_state_dict(pending)
            total, wlog = self.weighting.combine(terms)
            logs.update(wlog)
        else:
            total = sum(terms.values())
        logs.update({f"loss/{k}": float(v.detach()) for k, v in terms.items()})
        logs["loss/total"] = float(total.detach())
        self._last_out = out
        return total, logs

    def _unit_inputs(self, rgb, aux):
        d = self.cfg["data"]
        rm = torch.tensor(d["rgb_mean"], device=rgb.device).view(1, -1, 1, 1)
        rs = torch.tensor(d["rgb_std"], device=rgb.device).view(1, -1, 1, 1)
        am = torch.tensor(d["aux_mean"], device=aux.device).view(1, -1, 1, 1)
        as_ = torch.tensor(d["aux_std"], device=aux.device).view(1, -1, 1, 1)
        return (rgb * rs + rm).clamp(0, 1), (aux * as_ + am).clamp(0, 1)

    # -- validation / logging ---------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, max_batches: int | None = None) -> dict:
        if self.val_set is None:
            return {}
        model = self.ema.module if self.ema is not None else self.model
        was_training = model.training
        model.eval()
        cm = ConfusionMatrix(self.num_classes, IGNORE)
        images = []
        for i in range(len(self.val_set)):
            if max_batches is not None and i >= max_batches:
                break
            rgb, aux, lab = self.val_set[i]
            logits = model(rgb[None].to(self.device), aux[None].to(self.device))
            pred = logits.argmax(1)[0].cpu().numpy()
            cm.update(pred, lab.numpy())
            if len(images) < int(self.cfg["train"]["num_images"]):
                images.append((rgb, pred, lab.numpy()))
        model.train(was_training)
        sc = cm.scores(self.class_set.class_names, excluded_classes(self.class_set))
        return {"mIoU": sc.miou, "mAcc": sc.macc, "images": images}

    def _log_images(self, images) -> None:
        if self.writer is None or not images:
            return
        pal = self.class_set.palette_array()
        d = self.cfg["data"]
        mean, std = np.asarray(d["rgb_mean"]), np.asarray(d["rgb_std"])
        for i, (rgb, pred, lab) in enumerate(images):
            img = np.clip(rgb.numpy().transpose(1, 2, 0) * std + mean, 0, 1)
            lab_c = pal[np.where(lab == IGNORE, 0, lab).clip(0, len(pal) - 1)] / 255.0
            panel = np.concatenate([img, lab_c, pal[pred] / 255.0], axis=1)  # RGB | ground truth | prediction
            self.writer.add_image(f"val/{i}", panel.astype(np.float32), self.step, dataformats="HWC")

    # -- main loop --------------------------------------------------------------------------------
    def stage_at(self, step: int) -> dict:
        for st in self.stages:
            if st["start"] <= step < st["end"]:
                return st
        return self.stages[-1]

    def fit(self, max_steps: int | None = None) -> dict:
        """Train until the run's last step (or ``max_steps`` more steps), then write the model file."""
        resume = self._resume_path()
        if resume is not None:
            self.load_checkpoint(resume)
            if self.is_main:
                print(f"resumed from {resume} at step {self.step}", flush=True)
        if self.is_main and self.cfg["train"]["tensorboard"]:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tb"))
        tcfg = self.cfg["train"]
        stop = self.total_steps if max_steps is None else min(self.total_steps, self.step + int(max_steps))
        weights_cache: dict[str, torch.Tensor | None] = {}
        self.model.train()
        bar = None
        if self.is_main and tcfg["progress"]:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc="train", dynamic_ncols=True)
        t0 = time.perf_counter()
        last_val: dict = {}
        while self.step < stop:
            epoch, skip = divmod(self.step, self.batches_per_epoch)
            for rgb, aux, target in self._loader(epoch, skip):
                if self.step >= stop:
                    break
                stage = self.stage_at(self.step)
                key = json.dumps(stage["loss"]["class_weights"])
                if key not in weights_cache:
                    weights_cache[key] = self._class_weights(stage["loss"]["class_weights"])
                rgb = rgb.to(self.device).contiguous(memory_format=self.memory_format)
                aux = aux.to(self.device).contiguous(memory_format=self.memory_format)
                target = target.to(self.device)
                loss, logs = self.compute_loss(rgb, aux, target, stage, weights_cache[key])
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
                clip = float(tcfg["grad_clip"]) if tcfg["grad_clip"] else math.inf
                grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), clip))
                logs["grad_norm"] = grad_norm
                if math.isfinite(grad_norm):
                    self.scaler.step(self.optimizer)
                else:
                    # A non-finite gradient would poison the weights for good: skip this update (as
                    # GradScaler does for fp16 overflows) and count it.
                    self.skipped_steps += 1
                    logs["skipped_steps"] = float(self.skipped_steps)
                    if bar is not None:
                        bar.write(f"step {self.step}: non-finite gradient, update skipped ({self.skipped_steps} so far)")
                self.scaler.update()
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                self.step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{logs['loss/total']:.3f}", stage=stage["name"])
                if self.writer is not None and (self.step % int(tcfg["log_every"]) == 0 or self.step == stop):
                    for k, v in logs.items():
                        self.writer.add_scalar(k, v, self.step)
                    self.writer.add_scalar("lr", self.optimizer.param_groups[0]["lr"], self.step)
                if tcfg["ckpt_every"] and self.step % int(tcfg["ckpt_every"]) == 0:
                    self.save_checkpoint()
                if tcfg["val_every"] and self.step % int(tcfg["val_every"]) == 0 and self.val_set is not None:
                    if self.is_main:
                        last_val = self.validate()
                        if self.writer is not None:
                            self.writer.add_scalar("val/mIoU", last_val["mIoU"], self.step)
                            self.writer.add_scalar("val/mAcc", last_val["mAcc"], self.step)
                            self._log_images(last_val["images"])
                        if bar is not None:
                            bar.write(f"step {self.step}: val mIoU {100 * last_val['mIoU']:.1f}")
                    if self.distributed:
                        dist.barrier()
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t0
        if tcfg["ckpt_every"] or self.step < self.total_steps:  # stopped early (max_steps): keep the steps
            self.save_checkpoint()
        result = {"step": self.step, "seconds": elapsed, "skipped_steps": self.skipped_steps}
        if self.step >= self.total_steps:
            if self.is_main and self.val_set is not None:
                last_val = self.validate()
                if self.writer is not None:
                    self.writer.add_scalar("val/mIoU", last_val["mIoU"], self.step)
                    self._log_images(last_val["images"])
            if self.is_main:
                result["model"] = str(self.write_model(last_val))
            if self.distributed:
                dist.barrier()
        if last_val:
            result["val_mIoU"] = last_val["mIoU"]
        if self.writer is not None:
            self.writer.close()
        return result

    def write_model(self, val: dict | None = None) -> Path:
        model = self.ema.module if self.ema is not None else self.model
        state = {k: v for k, v in model.state_dict().items()}
        d, a = self.cfg["data"], self.cfg["data"]["augment"]
        net = self.cfg["network"]
        metrics = {}
        if val and "mIoU" in val:
            metrics = {"mIoU": round(float(val["mIoU"]), 4), "mAcc": round(float(val["mAcc"]), 4),
                       "split": f"{d['val'].get('type', 'val')}-val"}
        card = ModelCard(
            network=net["name"], num_classes=self.num_classes, class_names=list(self.class_set.class_names),
            palette=[list(c) for c in self.class_set.palette], variant=getattr(self.model, "variant", net["variant"]),
            modality=self.cfg["modality"], aux_channels=self.aux_channels, input_size=tuple(d["input_size"]),
            rgb_mean=tuple(d["rgb_mean"]), rgb_std=tuple(d["rgb_std"]), aux_mean=tuple(d["aux_mean"]),
            aux_std=tuple(d["aux_std"]), dataset=self.cfg["card"]["dataset"] or self.class_set.name,
            # every key, resolved: what the data was normalised with, whatever the pipeline defaults become
            normalization=self.train_tf.norm.to_dict(),
            supports_rgb_only=float(a["aux_dropout"]) > 0 or net["name"] == "rgb_only", trained=True,
            metrics=metrics,
            notes=(self.cfg["card"]["notes"] + " " if self.cfg["card"]["notes"] else "")
            + f"trained by rgbt-seg train {self.cfg['_source']} for {self.step} steps",
        )
        dtype = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(self.cfg["train"]["save_dtype"])
        path = Path(self.cfg["model_out"] or self.out_dir / "model.safetensors")
        return save_model(path, state, card, dtype=dtype)


def train(config, max_steps: int | None = None) -> dict:
    """Build a :class:`Trainer` from a config file or dict and run it; tears down the process group after."""
    cfg = load_config(config)
    trainer = Trainer(cfg)
    try:
        return trainer.fit(max_steps)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
