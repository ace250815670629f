"""ROS-free pipeline: pairing, registration, normalisation, resize, post-processing, palettes, timing.

Front doors use ``SegmentationPipeline`` (pipeline.py), ``ApproximateTimePairer``/``LatestCameraInfo``
(sync.py), ``CameraModel``/``load_camera``/``load_extrinsics`` (camera.py) and ``get_class_set`` (palettes.py).
"""
from rgbt_seg_ros.pipeline.camera import CameraModel, Extrinsics, as_camera_model, load_camera, load_extrinsics
from rgbt_seg_ros.pipeline.config import NormalizationConfig, PipelineConfig, RegistrationConfig
from rgbt_seg_ros.pipeline.palettes import CLASS_SETS, ClassSet, get_class_set
from rgbt_seg_ros.pipeline.pipeline import ALL_OUTPUTS, DEFAULT_OUTPUTS, SegmentationPipeline, SegmentationResult
from rgbt_seg_ros.pipeline.sync import ApproximateTimePairer, LatestCameraInfo, Pair, SyncStats, stamp_seconds
from rgbt_seg_ros.pipeline.timing import LatencyStats, StageTimer

__all__ = ["ALL_OUTPUTS", "ApproximateTimePairer", "LatestCameraInfo", "Pair", "SyncStats", "stamp_seconds", "CLASS_SETS", "CameraModel", "ClassSet", "DEFAULT_OUTPUTS", "Extrinsics", "LatencyStats",
           "NormalizationConfig", "PipelineConfig", "RegistrationConfig", "SegmentationPipeline", "SegmentationResult",
           "StageTimer", "as_camera_model", "get_class_set", "load_camera", "load_extrinsics"]
