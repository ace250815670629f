"""The ROS 2 package files: package.xml (catkin_pkg, the parser colcon uses), CMakeLists.txt,
msg/ (rosbags' .msg parser + CDR round trip), launch files, parameter YAMLs and the RViz layout.

No ROS 2 here: these are the checks that can run without it (colcon-ros, which identifies
ament_cmake packages, is not installed, so colcon identification is not tested).
"""
from __future__ import annotations

import ast
import os
import py_compile
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# rcl matches a parameter file's keys against the node's fully qualified name: "/**/" lets the files apply
# in any namespace (launch namespace:=cam makes the node /cam/rgbt_seg; a bare "rgbt_seg" key matches only /rgbt_seg)
NODE_KEY = "/**/rgbt_seg"
MSGS = sorted((ROOT / "msg").glob("*.msg"))
LAUNCH = sorted((ROOT / "launch").glob("*.launch.py"))
PARAM_FILES = [ROOT / "config" / n for n in ("mfnet_rgbt.yaml", "pst900_rgbt.yaml", "realsense_rgbd.yaml",
                                             "demo_rgbt.yaml")]


def test_package_xml_is_valid_format_3_with_rosdep_keys():
    from catkin_pkg.package import parse_package

    pkg = parse_package(str(ROOT / "package.xml"))
    pkg.validate()
    assert pkg.package_format == 3 and pkg.name == "rgbt_seg_ros"
    assert pkg.get_build_type() == "ament_cmake"
    exec_deps = {d.name for d in pkg.exec_depends}
    build_deps = {d.name for d in pkg.build_depends} | {d.name for d in pkg.buildtool_depends}
    assert {"rclpy", "sensor_msgs", "std_msgs", "message_filters", "diagnostic_msgs", "builtin_interfaces",
            "rosidl_default_runtime", "launch_ros", "python3-numpy", "python3-opencv", "python3-yaml"} <= exec_deps
    assert {"ament_cmake", "ament_cmake_python", "rosidl_default_generators", "std_msgs"} <= build_deps
    assert [g.name for g in pkg.member_of_groups] == ["rosidl_interface_packages"]
    from rgbt_seg_ros import __version__

    assert pkg.version == __version__


def _cmake() -> str:
    return (ROOT / "CMakeLists.txt").read_text()


def test_cmake_generates_every_msg_and_installs_the_executable():
    text = _cmake()
    block = re.search(r"rosidl_generate_interfaces\((.*?)\)", text, re.S).group(1)
    listed = set(re.findall(r'"(msg/[^"]+\.msg)"', block))
    assert listed == {f"msg/{p.name}" for p in MSGS}
    deps = set(block.split("DEPENDENCIES")[1].split())
    used = {m.split("/")[0] for p in MSGS for m in re.findall(r"^\s*(\w+/\w+)", p.read_text(), re.M)}
    assert used <= deps, used - deps
    # rosidl_generator_py registers the python package itself: a second ament_python_install_package fails
    assert "ament_python_install_package" not in re.sub(r"#.*", "", text)
    assert "install(PROGRAMS scripts/rgbt_seg_node DESTINATION lib/${PROJECT_NAME})" in text
    assert "launch config" in text and 'REGEX "/rgbt_seg_ros/(msg|models)$" EXCLUDE' in text
    script = ROOT / "scripts" / "rgbt_seg_node"
    assert os.access(script, os.X_OK) and script.read_text().startswith("#!/usr/bin/env python3")
    tree = ast.parse(script.read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "rgbt_seg_ros.ros.node"]
    assert imports and imports[0].names[0].name == "main"


@pytest.mark.parametrize("path", MSGS, ids=lambda p: p.name)
def test_msg_parses_with_rosbags_and_round_trips(path):
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    name = f"rgbt_seg_ros/msg/{path.stem}"
    types = get_types_from_msg(path.read_text(), name)
    assert name in types
    store = get_typestore(Stores.ROS2_HUMBLE)
    store.register(types)
    if path.stem != "SegmentationInfo":
        return
    T = store.types
    msg = T[name](
        header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=3, nanosec=5), frame_id="cam"),
        model_name="fusion_baseline/resnet18", model_file="m.safetensors", modality="thermal",
        class_names=["a", "b"], colours=[T["std_msgs/msg/ColorRGBA"](r=1.0, g=0.0, b=0.0, a=1.0)] * 2,
        aux_used=True, pair_skew=0.004, latency_total_ms=12.5, stage_names=["infer"],
        stage_latency_ms=np.array([10.0], np.float32), pairs_processed=7, pairs_dropped=2, frames_unpaired=1)
    back = store.deserialize_cdr(store.serialize_cdr(msg, name), name)
    assert back.class_names == ["a", "b"] and back.pairs_dropped == 2 and back.header.frame_id == "cam"


@pytest.mark.parametrize("path", LAUNCH, ids=lambda p: p.name)
def test_launch_files_compile_and_declare_what_they_use(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)
    tree = ast.parse(path.read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    src = path.read_text()
    used = set(re.findall(r'(?:LaunchConfiguration|get)\("(\w+)"\)', src))
    declared = set(re.findall(r'DeclareLaunchArgument\("(\w+)"', src))
    declared |= set(re.findall(r'^\s+"(\w+)": \(', src, re.M))  # the ARGS table of rgbt_seg.launch.py
    passed = re.search(r"PASSED_ON = \((.*?)\)", src, re.S)
    if passed:
        declared |= set(re.findall(r'"(\w+)"', passed.group(1)))
    assert used and used <= declared, used - declared
    assert 'executable="rgbt_seg_node"' in src or "rgbt_seg.launch.py" in src


def test_parameter_files_apply_to_the_launched_node_in_any_namespace():
    launch = (ROOT / "launch/rgbt_seg.launch.py").read_text()
    assert 'name="rgbt_seg", namespace=get("namespace")' in launch
    for path in PARAM_FILES:
        assert list(yaml.safe_load(path.read_text())) == [NODE_KEY], path.name


def test_replay_passes_only_arguments_the_live_launch_declares():
    live = set(re.findall(r'^\s+"(\w+)": \(', (ROOT / "launch/rgbt_seg.launch.py").read_text(), re.M))
    replay = (ROOT / "launch/replay.launch.py").read_text()
    passed = set(re.findall(r'"(\w+)"', re.search(r"PASSED_ON = \((.*?)\)", replay, re.S).group(1)))
    assert passed | {"use_sim_time"} <= live
    assert '"--clock"' in replay and '"use_sim_time", "true"' in replay and "rgbt_seg.rviz" in replay


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.name)
def test_parameter_files_use_declared_names_and_exact_types(path):
    from rgbt_seg_ros.ros.params import SPECS, validate_params

    data = yaml.safe_load(path.read_text())
    assert list(data) == [NODE_KEY] and list(data[NODE_KEY]) == ["ros__parameters"]
    params = data[NODE_KEY]["ros__parameters"]
    for key, value in params.items():
        spec = SPECS[key]  # KeyError = a parameter the node does not declare
        # rclpy types parameters statically by their default: 1 for a double is rejected at start-up
        ok = {"string": lambda v: isinstance(v, str), "bool": lambda v: isinstance(v, bool),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "double": lambda v: isinstance(v, float),
              "double_array": lambda v: isinstance(v, list) and all(isinstance(x, float) for x in v)}[spec.type]
        assert ok(value), f"{path.name}: {key}={value!r} is not a {spec.type}"
    cfg = validate_params(params)
    assert cfg.modality in ("thermal", "depth")


def test_demo_parameters_match_the_demo_rig():
    from rgbt_seg_ros.synthetic.demo_bag import DemoBagSpec

    params = yaml.safe_load((ROOT / "config" / "demo_rgbt.yaml").read_text())[NODE_KEY]["ros__parameters"]
    spec = DemoBagSpec()
    np.testing.assert_allclose(np.reshape(params["extrinsic_rotation"], (3, 3)), spec.extrinsic_R, atol=1e-8)
    np.testing.assert_allclose(params["extrinsic_translation"], spec.extrinsic_t)
    assert params["plane_distance"] == spec.plane_distance
    # slop must cover the thermal clock offset plus half an RGB period, or nothing pairs
    assert params["slop"] >= spec.thermal_clock_offset + 0.5 / spec.rgb_rate


def test_rviz_shows_the_node_outputs():
    text = (ROOT / "config" / "rgbt_seg.rviz").read_text()
    cfg = yaml.safe_load(text)
    topics = {d["Topic"]["Value"] for d in cfg["Visualization Manager"]["Displays"]}
    assert topics == {"/rgb/image", "/rgbt_seg/colour", "/rgbt_seg/confidence", "/rgbt_seg/overlay"}
    assert all(d["Class"] == "rviz_default_plugins/Image" for d in cfg["Visualization Manager"]["Displays"])


def test_ros_imports_stay_inside_ros_folder():
    bad = []
    for path in (ROOT / "rgbt_seg_ros").rglob("*.py"):
        if "ros" in path.relative_to(ROOT / "rgbt_seg_ros").parts[:1]:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] in ("rclpy", "message_filters", "cv_bridge") for n in names):
                bad.append(str(path.relative_to(ROOT)))
    assert not bad


def test_ros_free_modules_import_without_ros():
    code = ("import sys; import rgbt_seg_ros.ros, rgbt_seg_ros.ros.params, rgbt_seg_ros.ros.slot, "
            "rgbt_seg_ros.ros.health, rgbt_seg_ros.ros.messages; "
            "print(sorted(m for m in ('rclpy', 'message_filters', 'cv_bridge') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
