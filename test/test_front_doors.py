"""export, train, evaluate and bench refuse bad input in one line (exit 2), before their long work starts, and
lose nothing: no input replaced, no output written or left half-written."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rgbt_seg_ros.cli import main as cli
from test_replay import small_model  # noqa: F401 - the fixture: a real model file, untrained
from test_training import TINY


def _one_line_error(capsys, rc: int, expected: str) -> None:
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and expected in err, err


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_checks_its_output_before_exporting(tmp_path, small_model, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "a_folder").mkdir()
    (work / "a_file").write_text("mine")
    onnx_file = work / "m.onnx"
    onnx_file.write_bytes(b"not exported")
    before = small_model.read_bytes(), _tree(work)
    for argv, expected in (
            ([str(small_model), "--out", str(work / "a_folder"), "--force"], "is a folder"),
            ([str(small_model), "--out", str(small_model), "--force"], "is the input file"),  # replaced the model with ONNX
            ([str(small_model), "--out", str(work / "a_file" / "m.onnx")], "is a file, not a folder"),
            ([str(small_model), "--out", str(work / "x.onnx"), "--opset", "99"], "--opset 99: choose 17 to"),
            ([str(onnx_file)], "is an ONNX file already")):  # said "exists; pass --force", inviting to replace it
        _one_line_error(capsys, cli(["export", *argv]), expected)
    assert (small_model.read_bytes(), _tree(work)) == before
    assert sorted(p.name for p in work.iterdir()) == ["a_file", "a_folder", "m.onnx"]  # no .partial left


def _write_config(path: Path, tmp_path: Path, **data_over) -> Path:
    import copy

    cfg = copy.deepcopy(TINY)
    cfg["output_dir"] = str(tmp_path / "run")
    for key, value in data_over.items():
        section, name = key.split("__")
        cfg[section][name] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_refuses_bad_values_and_an_existing_model_before_training(tmp_path, capsys):
    config = _write_config(tmp_path / "tiny.yaml", tmp_path)
    existing = tmp_path / "precious.safetensors"
    existing.write_bytes(b"a model trained for a week")
    for argv, expected in (
            (["--model-out", str(existing)], "model_out " + str(existing) + ": exists; pass --force"),
            (["--steps", "0"], "--steps: must be ≥ 1, got 0"),  # was ignored: the config's steps ran
            (["--max-steps", "-1"], "--max-steps: must be ≥ 1, got -1")):  # wrote a checkpoint at step 0
        _one_line_error(capsys, cli(["train", str(config), *argv]), expected)
    for over, expected in (({"data__batch_size": 0}, "'data.batch_size': must be a whole number ≥ 1, got 0"),
                           ({"optim__lr": "fast"}, "'optim.lr': must be a number > 0, got 'fast'"),
                           ({"data__input_size": 64}, "'data.input_size': must be [height, width]"),
                           ({"train__steps": -1}, "'train.steps': must be a whole number ≥ 1, got -1"),
                           ({"train__save_dtype": "fp16"}, "'train.save_dtype': 'fp16' is not float32"),
                           # found only when the trainer builds the network: the run folder was made already
                           ({"network__name": "freqfusoin"}, "config key 'network': unknown network 'freqfusoin'"),
                           ({"network__variant": "resnet19"}, "has no variant 'resnet19'"),
                           # which of the two datasets: the message named neither
                           ({"data__val": {"type": "synthetic", "length": 0}},
                            "config key 'data.val': synthetic dataset: length must be a whole number ≥ 1, got 0")):
        bad = _write_config(tmp_path / "bad.yaml", tmp_path, **over)
        _one_line_error(capsys, cli(["train", str(bad)]), expected)
    binary = tmp_path / "checkpoint.pt"
    binary.write_bytes(bytes(range(256)) * 4)  # a checkpoint given for the config
    _one_line_error(capsys, cli(["train", str(binary)]), "not valid YAML")
    assert existing.read_bytes() == b"a model trained for a week"
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


def test_learning_rate_written_without_a_dot_is_a_number(tmp_path):
    from rgbt_seg_ros.training.trainer import load_config

    cfg = load_config(_write_config(tmp_path / "c.yaml", tmp_path, optim__lr="1e-3"))  # YAML reads it as a string
    assert cfg["optim"]["lr"] == pytest.approx(1e-3)


def test_interrupted_checkpoint_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import rgbt_seg_ros.training.trainer as trainer_module
    from rgbt_seg_ros.training.trainer import Trainer, load_config

    trainer = Trainer(load_config(_write_config(tmp_path / "c.yaml", tmp_path)))
    real_save = trainer_module.torch.save

    def save_then_interrupt(obj, f):  # Ctrl-C halfway through writing the file
        real_save(obj, f)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.torch, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    assert list((tmp_path / "run").glob("*.partial")) == [] and list((tmp_path / "run").glob("*.pt")) == []


def test_evaluate_and_bench_check_outputs_and_values_first(tmp_path, small_model, capsys):
    report = tmp_path / "ev" / "report.md"
    report.parent.mkdir()
    report.write_text("last week's figures")
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    dataset = ["--dataset", "synthetic", "--option", "length=2", "--option", "size=[48,64]", "--no-progress"]
    for argv, expected in (
            (["--out", str(report.parent)], "report.md: exists; pass --force"),  # was overwritten silently
            (["--limit", "0"], "--limit: must be ≥ 1, got 0"),  # printed mIoU nan
            (["--device", "cuda:3"], "parameter device: cuda:3 asked for, but torch sees"),
            (["--device", "gpu"], "parameter device: 'gpu' is not a device name"),
            (["--pipeline-config", str(small_model)], "not valid YAML")):  # a binary file: UnicodeDecodeError
        _one_line_error(capsys, cli(["evaluate", "--model", str(small_model), *dataset, *argv]), expected)
    assert report.read_text() == "last week's figures"
    _one_line_error(capsys, cli(["evaluate", "--model", str(tmp_path), *dataset]), "is a folder, not a model file")
    for argv, expected in ((["--iters", "0"], "--iters: must be ≥ 1, got 0"),
                           (["--json", str(a_file / "out.json")], "is a file, not a folder")):
        _one_line_error(capsys, cli(["bench", "--skip-networks", "--model", str(small_model), *argv]), expected)
    assert a_file.read_text() == "mine"


def test_bench_checks_the_model_file_before_benchmarking(tmp_path, small_model, capsys):
    from rgbt_seg_ros.inference.artifact import load_model
    from rgbt_seg_ros.inference.export import export_onnx

    onnx_file = export_onnx(*load_model(small_model), tmp_path / "small.onnx", check_sizes=((64, 96),)).path
    # the agreement needs the torch weights: it failed after the whole pipeline benchmark had run
    _one_line_error(capsys, cli(["bench", "--skip-networks", "--model", str(onnx_file), "--agreement", "1"]),
                    "--agreement: compares torch with onnxruntime, so --model must be the .safetensors")
    # a missing model was found only after the network benchmarks (minutes each)
    _one_line_error(capsys, cli(["bench", "--pipeline", "--networks", "fusion_baseline", "--model",
                                 str(tmp_path / "missing.safetensors")]), "missing.safetensors does not exist")
