"""Synthetic RGB-T(-D) road scenes with labels (the built-in model's training data and the demo's input)."""
from __future__ import annotations

from rgbt_seg_ros.synthetic.scenes import (BACKGROUND, CAR, NUM_CLASSES, PERSON, ROAD, SIDEWALK, VEGETATION, Scene,
                                           SceneGenerator, default_intrinsics, thermal_celsius)

__all__ = ["BACKGROUND", "CAR", "NUM_CLASSES", "PERSON", "ROAD", "SIDEWALK", "VEGETATION", "Scene", "SceneGenerator",
           "default_intrinsics", "thermal_celsius"]
