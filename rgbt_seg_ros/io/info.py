"""Field values of ``rgbt_seg_ros/msg/SegmentationInfo``, without ROS.

The node (``ros/messages.fill_info``, rclpy classes) and replay (rosbags classes) both build the message
from ``info_fields`` so that the two publish the same content.
"""
from __future__ import annotations

from typing import Any

from rgbt_seg_ros.pipeline.timing import TOTAL


def info_fields(*, card, model_file: str, modality: str, aux_used: bool, pair_skew: float,
                latency_total_ms: float | None, timings: dict[str, float], pairs_processed: int,
                pairs_dropped: int, frames_unpaired: int) -> dict[str, Any]:
    """Every field but ``header``; ``colours`` as (r, g, b, a) tuples in [0, 1], to be made into ColorRGBA.

    ``timings`` may hold the pipeline's ``total``: it spans the stages, so it is not listed among them; it
    fills ``latency_total_ms`` only when no end-to-end figure is given (``latency_total_ms=None``).
    """
    stages = {str(k): float(v) for k, v in timings.items() if k != TOTAL}
    if latency_total_ms is None:
        latency_total_ms = timings.get(TOTAL, sum(stages.values()))
    return {
        "model_name": card.network + (f"/{card.variant}" if card.variant else ""),
        "model_file": str(model_file),
        "modality": str(modality),
        "class_names": [str(c) for c in card.class_names],
        "colours": [(r / 255.0, g / 255.0, b / 255.0, 1.0) for r, g, b in card.palette],
        "aux_used": bool(aux_used),
        "pair_skew": float(pair_skew),
        "latency_total_ms": float(latency_total_ms),
        "stage_names": list(stages),
        "stage_latency_ms": list(stages.values()),
        "pairs_processed": int(pairs_processed),
        "pairs_dropped": int(pairs_dropped),
        "frames_unpaired": int(frames_unpaired),
    }
