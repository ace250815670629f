"""The README's two commands and command table stay true to .ci/run and the CLI."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from rgbt_seg_ros.cli import SUBCOMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_ci_runs_the_readme_test_command():
    ci_lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    command = ci_lines[-1]
    assert "pytest" in command and "pip install" in command
    assert command in README, f"README must show the exact CI command: {command}"


def test_readme_demo_command_installs_and_runs_demo():
    assert re.search(r"pip install -e \. && \S*rgbt-seg demo", README)


def test_every_subcommand_is_documented_and_has_help(capsys):
    for name in SUBCOMMANDS:
        assert f"`rgbt-seg {name}" in README, f"README lacks rgbt-seg {name}"
    assert main([]) == 0
    listing = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in listing


def test_subcommand_help_runs_in_a_fresh_interpreter():
    for name in SUBCOMMANDS:
        proc = subprocess.run([sys.executable, "-m", "rgbt_seg_ros.cli", name, "--help"], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, (name, proc.stderr[-500:])
        assert f"rgbt-seg {name}" in proc.stdout


def test_unknown_subcommand_fails_with_usage(capsys):
    try:
        main(["frobnicate"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "invalid choice" in capsys.readouterr().err
