"""rgbt-seg bench: it measures what it says (figures come from real runs, tables match the JSON)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rgbt_seg_ros.cli import main as cli
from rgbt_seg_ros.networks.complexity import network_complexity


@pytest.mark.slow
def test_bench_network_rows_and_pipeline(tmp_path):
    js, md = tmp_path / "b.json", tmp_path / "b.md"
    assert cli(["bench", "--networks", "fusion_baseline", "--size", "160x128", "--iters", "3", "--warmup", "1",
                "--pipeline", "--agreement", "2", "--json", str(js), "--markdown", str(md)]) == 0
    report = json.loads(js.read_text())
    rows = report["networks"]
    assert [(r["network"], r["variant"]) for r in rows] == [("fusion_baseline", "mobilenetv3_small_100")] * 2
    assert {r["backend"].split("-")[0] for r in rows} == {"torch", "onnxruntime"}
    params_m, _ = network_complexity("fusion_baseline", "mobilenetv3_small_100", h=128, w=160, num_classes=9)
    for r in rows:
        assert r["size"] == "160x128" and r["n"] == 3
        assert r["params_M"] == pytest.approx(params_m)
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["fps"] == pytest.approx(1000 / r["mean_ms"])
    p = report["pipeline"]
    assert p["stages"]["total"]["n"] == 3 and p["end_to_end"]["p50"] >= p["stages"]["infer"]["p50"]
    assert 0 < p["overhead_share"] < 1
    agree = report["agreement"]["agreement"]
    assert agree and all(0.99 <= v <= 1.0 for v in agree.values())
    text = md.read_text()
    assert f"{rows[0]['p50_ms']:.1f}" in text and "End to end" in text and "Label agreement" in text


def test_bench_rejects_bad_size_and_backend(capsys):
    assert cli(["bench", "--size", "640by480"]) == 2
    assert "--size" in capsys.readouterr().err
    assert cli(["bench", "--backends", "tensorrt"]) == 2
    assert "--backends" in capsys.readouterr().err


@pytest.mark.slow
def test_pipeline_overhead_benchmark_measures_each_output_set(tmp_path):
    # the script behind the overhead figure: every set it is given gets its own row, from real runs
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "pipeline_overhead.py"
    out = subprocess.run([sys.executable, str(script), "--iters", "3", "--warmup", "1", "--block", "2",
                          "--outputs", "labels", "--outputs", "labels,confidence,overlay", "--maps"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = re.findall(r"^  (labels\S*)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out.stdout, re.M)
    assert [r[0] for r in rows] == ["labels", "labels,confidence,overlay"], out.stdout
    for _, cpu_med, cpu_p95, wall_med, wall_p95 in rows:
        assert 0 < float(cpu_med) <= float(cpu_p95) and 0 < float(wall_med) <= float(wall_p95)
    assert "n=3" in out.stdout and "maps built: 1" in out.stdout
    assert re.search(r"^CPU (?!\? ).+ \(LLVM: \S+\); a pure-Python loop of 10\^6 additions took \d+ ms$", out.stdout, re.M), out.stdout
    builds = re.findall(r"^warp maps, (.+): (\d+) ms \(best of 3\)$", out.stdout, re.M)
    assert [b[0] for b in builds] == ["640×480 network grid", "1280×720 RGB grid (registered_aux)"], out.stdout
    assert all(int(ms) > 0 for _, ms in builds)


@pytest.mark.slow
def test_kernel_ab_compares_a_kernel_with_its_git_version():
    root = Path(__file__).resolve().parents[1]
    if subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: the A/B loads the base version from git")
    script = root / "benchmarks" / "kernel_ab.py"
    for extra in ([], ["--cold", "--labels-only"]):
        out = subprocess.run([sys.executable, str(script), "--base", "HEAD", "--blocks", "3", "--block", "1", *extra],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        ratio = re.search(r"working tree / base per block: median ([\d.]+)", out.stdout)
        assert ratio and 0 < float(ratio.group(1)), out.stdout
        assert ("labels only), cold:" in out.stdout) == bool(extra), out.stdout
    bad = subprocess.run([sys.executable, str(script), "--base", "no-such-revision"], capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode != 0 and "--base no-such-revision" in bad.stderr and "Traceback" not in bad.stderr
