"""Offline training and evaluation for the registry networks.

* :mod:`~rgbt_seg_ros.training.datasets` — MFNet, PST900, FMB, RGB-X (NYU-Depth v2 / SUN RGB-D), image folders,
  synthetic scenes; joint augmentation and modality dropout (:class:`TrainTransform`);
* :mod:`~rgbt_seg_ros.training.losses` — CE / OHEM / Dice, deep supervision, KD, masked reconstruction, α-fair DWA;
* :mod:`~rgbt_seg_ros.training.trainer` — ``rgbt-seg train``: single process or torchrun/DDP, resumable;
* :mod:`~rgbt_seg_ros.training.metrics` / :mod:`~rgbt_seg_ros.training.evaluate` — ``rgbt-seg evaluate``.
"""
