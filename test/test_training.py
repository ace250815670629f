"""Trainer: losses, schedules, config errors, resume = same run, torchrun on CPU (gloo), model file, MAFS stages."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.inference.artifact import load_model, read_card
from rgbt_seg_ros.training import losses as L
from rgbt_seg_ros.training.trainer import LRFactor, Trainer, load_config

TINY = {
    "seed": 3,
    "network": {"name": "fusion_baseline", "variant": "mobilenetv3_small_100"},
    "data": {"train": {"type": "synthetic", "seed": 0, "length": 16, "size": [48, 64]},
             "val": {"type": "synthetic", "seed": 9, "length": 2, "size": [48, 64]},
             "input_size": [32, 64], "batch_size": 2,
             "augment": {"scale": [0.8, 1.2], "photometric": 0.5, "aux_dropout": 0.3}},
    "optim": {"name": "adamw", "lr": 0.001},
    "schedule": {"name": "poly", "warmup_steps": 2},
    "train": {"steps": 4, "ckpt_every": 2, "tensorboard": False, "progress": False, "ema": 0.9, "grad_clip": 1.0,
              "threads": 1},
    "loss": {"ce": 1.0, "dice": 0.5, "ohem": 0.5, "ohem_min_kept": 100},
}


def _cfg(tmp_path, **over) -> dict:
    import copy

    cfg = copy.deepcopy(TINY)
    cfg["output_dir"] = str(tmp_path)
    for k, v in over.items():
        cfg[k] = v
    return cfg


# ------------------------------------------------------------------------------------------------ losses

def test_ce_ohem_dice_kd_behave():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 8, 8))
    target[0, 0] = L.IGNORE
    logits = torch.randn(2, 4, 8, 8)
    ce = L.cross_entropy(logits, target)
    # OHEM with a threshold that keeps every pixel and min_kept=all is plain CE
    assert L.ohem_cross_entropy(logits, target, thresh=1.0 - 1e-9, min_kept=10 ** 6) == pytest.approx(float(ce), rel=1e-5)
    # and it focuses on hard pixels: never below the mean
    assert float(L.ohem_cross_entropy(logits, target, thresh=0.7, min_kept=10)) >= float(ce) - 1e-6
    perfect = torch.nn.functional.one_hot(target.clamp(0, 3), 4).permute(0, 3, 1, 2).float() * 50
    assert float(L.dice_loss(perfect, target)) < 1e-3
    assert float(L.dice_loss(-perfect, target)) > 0.9
    assert float(L.kd_kl(logits, logits, 4.0, target)) == pytest.approx(0.0, abs=1e-6)
    assert float(L.kd_kl(logits, torch.randn(2, 4, 4, 4), 4.0)) > 0  # teacher at another resolution
    # aux heads at lower resolution are upsampled to the labels
    assert torch.isfinite(L.cross_entropy(torch.randn(2, 4, 2, 2), target))


def test_random_patch_mask_structure_and_ratio():
    g = torch.Generator().manual_seed(0)
    m = L.random_patch_mask(64, 96, 128, patch=32, ratio=(0.4, 0.4), generator=g)
    assert m.shape == (64, 1, 96, 128)
    cells = m[:, 0, ::32, ::32]
    # constant inside each 32×32 cell
    assert torch.equal(m[:, 0], cells.repeat_interleave(32, 1).repeat_interleave(32, 2))
    assert abs(1 - float(cells.mean()) - 0.4) < 0.05


def test_alpha_fair_dwa_weights_follow_loss_ratios():
    w = L.AlphaFairDWA(["a", "b"], alpha=0.8, temperature=1.0, period=2)
    for la, lb in [(1.0, 1.0)] * 2 + [(0.5, 1.0)] * 2:  # task a halves, task b stays
        total, logs = w.combine({"a": torch.tensor(la), "b": torch.tensor(lb)})
    wa, wb = w.weights()
    assert wa + wb == pytest.approx(2.0)
    assert wb > wa  # the task that improves less gets more weight
    assert wb / wa == pytest.approx(math.exp(1.0) / math.exp(0.5))
    # alpha-fair utility: L^(1-a)/(1-a)
    assert float(w.utility(torch.tensor(4.0))) == pytest.approx(4.0 ** 0.2 / 0.2)
    state = w.state_dict()
    w2 = L.AlphaFairDWA(["a", "b"], alpha=0.8, temperature=1.0, period=2)
    w2.load_state_dict(state)
    assert w2.weights() == w.weights()


@pytest.mark.parametrize("name,at_half", [("poly", 0.5 ** 0.9), ("cosine", 0.5), ("exponential", 0.9 ** 50),
                                          ("constant", 1.0)])
def test_lr_schedules(name, at_half):
    f = LRFactor(name, total=110, warmup=10, warmup_ratio=0.1, power=0.9, gamma=0.9)
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx(0.55)
    assert f(60) == pytest.approx(at_half)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(RgbtSegError, match="'optimiser'"):
        load_config(_cfg(tmp_path, optimiser={}))
    bad = _cfg(tmp_path)
    bad["train"] = dict(bad["train"], stepz=3)
    with pytest.raises(RgbtSegError, match=r"train\.'stepz'|'stepz'"):
        load_config(bad)
    with pytest.raises(RgbtSegError, match="network.name"):
        load_config(_cfg(tmp_path, network={"variant": "x"}))
    with pytest.raises(RgbtSegError, match="schedule.name"):
        load_config(_cfg(tmp_path, schedule={"name": "linear"}))
    path = tmp_path / "bad.yaml"
    path.write_text("seed: [1,\n")
    with pytest.raises(RgbtSegError, match="not valid YAML"):
        load_config(path)


# ------------------------------------------------------------------------------------------------ resume

def _flat_optimizer_tensors(state: dict) -> list[torch.Tensor]:
    out = []
    for k in sorted(state["optimizer"]["state"]):
        for name in sorted(state["optimizer"]["state"][k]):
            v = state["optimizer"]["state"][k][name]
            if torch.is_tensor(v):
                out.append(v)
    return out


def _assert_same_run(a: dict, b: dict):
    assert a["step"] == b["step"]
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6, msg=k)
    ta, tb = _flat_optimizer_tensors(a), _flat_optimizer_tensors(b)
    assert len(ta) == len(tb) > 0
    for x, y in zip(ta, tb):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    for k in a.get("ema", {}):
        torch.testing.assert_close(a["ema"][k], b["ema"][k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_resume_continues_the_same_run_and_writes_a_complete_model(tmp_path):
    straight = Trainer(load_config(_cfg(tmp_path / "a")))
    res = straight.fit()
    assert res["step"] == 4 and Path(res["model"]).is_file()
    first = Trainer(load_config(_cfg(tmp_path / "b")))
    first.fit(max_steps=2)  # interrupted after step 2 (checkpointed)
    assert sorted(p.name for p in (tmp_path / "b").glob("checkpoint_*.pt")) == ["checkpoint_0000002.pt"]
    second = Trainer(load_config(_cfg(tmp_path / "b", resume="auto")))
    res_b = second.fit()
    assert res_b["step"] == 4
    a = torch.load(tmp_path / "a" / "checkpoint_0000004.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint_0000004.pt", weights_only=True)
    _assert_same_run(a, b)
    card = read_card(res["model"])
    assert card.network == "fusion_baseline" and card.variant == "mobilenetv3_small_100"
    assert card.class_names[-1] == "person" and len(card.palette) == card.num_classes == 6
    assert card.input_size == (32, 64) and card.supports_rgb_only and card.dataset == "synthetic"
    assert "mIoU" in card.metrics
    net, _ = load_model(res["model"])
    assert net(torch.zeros(1, 3, 32, 64), torch.zeros(1, 1, 32, 64)).shape == (1, 6, 32, 64)


def test_resume_is_the_same_run_with_dropout_in_the_network(tmp_path):
    # freqfusion's Dropout2d draws from the global torch generator: a resumed run must draw the same masks
    net = {"name": "freqfusion", "variant": "zepto"}
    train = dict(TINY["train"], ema=None)
    Trainer(load_config(_cfg(tmp_path / "a", network=net, train=train))).fit()
    Trainer(load_config(_cfg(tmp_path / "b", network=net, train=train))).fit(max_steps=3)  # stops mid-epoch
    Trainer(load_config(_cfg(tmp_path / "b", network=net, train=train, resume="auto"))).fit()
    a = torch.load(tmp_path / "a" / "checkpoint_0000004.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint_0000004.pt", weights_only=True)
    _assert_same_run(a, b)


def test_bad_checkpoints_and_early_stops(tmp_path):
    # --max-steps keeps its steps even without periodic checkpoints
    cfg = _cfg(tmp_path / "run", train=dict(TINY["train"], ckpt_every=0, ema=None))
    assert Trainer(load_config(cfg)).fit(max_steps=1)["step"] == 1
    ckpt = tmp_path / "run" / "checkpoint_0000001.pt"
    assert ckpt.is_file()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:1000])
    other = _cfg(tmp_path / "other", network={"name": "freqfusion", "variant": "zepto"})
    for path, cfg, expected in ((truncated, _cfg(tmp_path / "t"), "cannot be read"),
                                (ckpt, other, "does not fit this run's network")):
        trainer = Trainer(load_config(cfg))
        with pytest.raises(RgbtSegError, match=f"resume: checkpoint {path}.*{expected}"):
            trainer.load_checkpoint(path)


def test_a_teacher_must_take_the_students_inputs(tmp_path):
    teacher = Trainer(load_config(_cfg(tmp_path / "teacher", train=dict(TINY["train"], steps=1, ema=None))))
    teacher_path = teacher.fit()["model"]
    data = dict(TINY["data"], aux_mean=[0.3], aux_std=[0.2])  # normalised differently from the teacher
    cfg = _cfg(tmp_path / "student", data=data, train=dict(TINY["train"], steps=1, ema=None),
               loss=dict(TINY["loss"], kd=1.0, teacher=teacher_path))
    with pytest.raises(RgbtSegError, match="loss.teacher .*differs from this run in aux_mean, aux_std"):
        Trainer(load_config(cfg)).fit()


def test_model_card_records_the_resolved_training_normalisation(tmp_path):
    from rgbt_seg_ros.inference import create_backend
    from rgbt_seg_ros.pipeline import NormalizationConfig, SegmentationPipeline

    cfg = _cfg(tmp_path, train=dict(TINY["train"], ema=None))
    cfg["data"] = dict(TINY["data"], normalization={"thermal_agc": "fixed", "thermal_range": [1000, 9000]})
    trainer = Trainer(load_config(cfg))
    card = read_card(trainer.write_model())  # untrained weights: only the card matters here
    # every key, the unset ones at the defaults the data went through
    expect = dict(NormalizationConfig().to_dict(), thermal_agc="fixed", thermal_range=[1000.0, 9000.0])
    assert card.normalization == expect == trainer.train_tf.norm.to_dict()
    pipe = SegmentationPipeline(create_backend(tmp_path / "model.safetensors"))
    assert pipe.normalization.thermal_agc == "fixed" and pipe.normalization.thermal_range == (1000.0, 9000.0)


def test_train_subcommand_reports_config_errors(tmp_path):
    from rgbt_seg_ros.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_cfg(tmp_path, lossy={})))
    assert main(["train", str(path)]) == 2


@pytest.mark.slow
def test_torchrun_two_processes_gloo_and_resume(tmp_path):
    """torchrun --nproc_per_node=2 on CPU: 2 steps, stop; resume to 4 = an uninterrupted 4-step run."""
    cfg = _cfg(tmp_path / "x")
    cfg["data"]["augment"]["aux_dropout"] = 0.2
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def run(out: Path, *extra: str) -> subprocess.CompletedProcess:
        c = dict(cfg, output_dir=str(out))
        p = out.with_suffix(".yaml")
        out.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(yaml.safe_dump(c))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "rgbt_seg_ros.cli", "train", str(p), "--no-progress", *extra]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    run(tmp_path / "ddp_a")
    run(tmp_path / "ddp_b", "--max-steps", "2")
    proc = run(tmp_path / "ddp_b", "--resume", "auto")
    assert json.loads(proc.stdout.strip().splitlines()[-1])["step"] == 4
    a = torch.load(tmp_path / "ddp_a" / "checkpoint_0000004.pt", weights_only=True)
    b = torch.load(tmp_path / "ddp_b" / "checkpoint_0000004.pt", weights_only=True)
    _assert_same_run(a, b)
    # two ranks really split the data: a single process sees a different run
    single = Trainer(load_config(dict(cfg, output_dir=str(tmp_path / "single"))))
    single.fit()
    s = torch.load(tmp_path / "single" / "checkpoint_0000004.pt", weights_only=True)
    assert any(not torch.allclose(s["model"][k].float(), a["model"][k].float()) for k in a["model"])


@pytest.mark.slow
def test_mafs_two_stage_schedule_reconstruction_then_joint_with_kd(tmp_path):
    """Stage 1 masked reconstruction on the fused image; stage 2 segmentation + fusion + KD, α-fair DWA."""
    teacher = Trainer(load_config(_cfg(tmp_path / "teacher", train=dict(TINY["train"], steps=1, ema=None))))
    teacher_path = teacher.fit()["model"]
    cfg = _cfg(tmp_path / "mafs", network={"name": "mafs", "variant": "resnet18"},
               train=dict(TINY["train"], ema=None, ckpt_every=0),
               stages=[{"name": "reconstruct", "steps": 1, "loss": {"ce": 0.0, "dice": 0.0, "ohem": 0.0,
                                                                       "reconstruction": 1.0}},
                       {"name": "joint", "steps": 2, "loss": {"dice": 0.0, "ohem": 0.0, "fusion": 1.0, "kd": 1.0,
                                                               "teacher": teacher_path,
                                                               "task_weighting": {"alpha": 0.8, "temperature": 500,
                                                                                  "period": 1}}}])
    tr = Trainer(load_config(cfg))
    seen = []
    orig = tr.compute_loss

    def spy(*a, **k):
        loss, logs = orig(*a, **k)
        seen.append(logs)
        return loss, logs

    tr.compute_loss = spy
    res = tr.fit()
    assert res["step"] == 3
    assert set(seen[0]) >= {"loss/fusion"} and "loss/seg" not in seen[0]
    assert {"loss/seg", "loss/deep_sup", "loss/fusion", "loss/kd", "weight/kd"} <= set(seen[1])
    assert all(math.isfinite(v) for logs in seen for v in logs.values())


def test_shipped_training_configs_load():
    """Every config in config/train/ names only known keys and a registered network."""
    from rgbt_seg_ros.networks import list_networks
    from rgbt_seg_ros.training.trainer import stages_of

    root = Path(__file__).resolve().parents[1] / "config" / "train"
    files = sorted(root.glob("*.yaml"))
    assert {"builtin.yaml", "mafs_mfnet.yaml", "fafnet_nyuv2.yaml", "efnet_mfnet.yaml", "nested_dff_mfnet.yaml",
            "freqfusion_pst900.yaml"} <= {f.name for f in files}
    names = {s.name for s in list_networks()}
    for f in files:
        cfg = load_config(f)
        assert cfg["network"]["name"] in names, f
        assert stages_of(cfg)[-1]["end"] > 0
    mafs = stages_of(load_config(root / "mafs_mfnet.yaml"))
    assert [s["name"] for s in mafs] == ["reconstruct", "joint"]
    assert mafs[0]["loss"]["reconstruction"] > 0 and mafs[0]["loss"]["mask_patch"] == 32
    assert mafs[1]["loss"]["task_weighting"] == {"alpha": 0.8, "temperature": 500, "period": 500}


def test_training_labels_outside_the_class_set_are_named_not_an_index_error(tmp_path):
    trainer = Trainer(load_config(_cfg(tmp_path)))
    rgb, aux = torch.zeros(1, 3, 32, 64), torch.zeros(1, 1, 32, 64)
    target = torch.zeros(1, 32, 64, dtype=torch.int64)
    target[0, 0, :3] = 7  # 6 classes: an id of another class set
    with pytest.raises(RgbtSegError, match=r"training labels hold class ids \[7\] outside 0..5"):
        trainer.compute_loss(rgb, aux, target, trainer.stages[0], None)


def test_batch_size_one_with_pyramid_pooling_is_one_line(tmp_path):
    # fafnet's pyramid pooling normalises 1×1 maps: torch's batch norm needs two images in train mode
    cfg = _cfg(tmp_path, network={"name": "fafnet", "variant": "tiny"},
               data=dict(TINY["data"], batch_size=1), train=dict(TINY["train"], steps=1, ema=None))
    with pytest.raises(RgbtSegError, match=r"network fafnet: 1 image\(s\) per step .* data.batch_size ≥ 2"):
        Trainer(load_config(cfg)).fit()
