"""pip install for rgbt_seg_ros (ROS 2 workspaces build the same package with ament_cmake, see CMakeLists.txt)."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = "0.1.0"

ONNX = ["onnx>=1.15", "onnxruntime>=1.17", "onnxscript>=0.1"]
TRAIN = ["tensorboard>=2.12", "matplotlib>=3.6"]
DEV = ONNX + TRAIN + [
    "pytest>=7.4",
    "pytest-timeout>=2.2",
    "mcap-ros2-support>=0.5",
    "catkin_pkg>=1.0",
    "colcon-core>=0.15",
    "scikit-learn>=1.3",
]

setup(
    name="rgbt_seg_ros",
    version=VERSION,
    description="RGB-thermal / RGB-depth fusion semantic segmentation for ROS 2, with ROS-free replay and training tools",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["rgbt_seg_ros", "rgbt_seg_ros.*"]),
    include_package_data=True,
    # msg/ and models/ reach the Python package through the rgbt_seg_ros/msg and rgbt_seg_ros/models symlinks
    package_data={"rgbt_seg_ros": ["msg/*.msg", "models/*.safetensors", "models/*.md"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/rgbt_seg_ros"]),
        ("share/rgbt_seg_ros", ["package.xml"]),
    ],
    install_requires=[
        "numpy>=1.23",
        "numba>=0.59",  # the fused CPU post-processing kernels (pipeline/kernels.py); 0.59: Python 3.12
        "opencv-python-headless>=4.8",
        "pyyaml>=6.0",
        "tqdm>=4.65",
        "rosbags>=0.11",  # 0.11 reads a bare .mcap without metadata.yaml
        "safetensors>=0.4",
        "torch>=2.1",
        "torchvision>=0.16",
        "timm>=1.0",
    ],
    extras_require={"onnx": ONNX, "train": TRAIN, "dev": DEV},
    entry_points={
        "console_scripts": [
            "rgbt-seg = rgbt_seg_ros.cli:main",
            "rgbt_seg_node = rgbt_seg_ros.ros.node:main",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Framework :: Robot Framework :: Tool",
    ],
)
