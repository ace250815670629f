"""Message data without ROS: ``sensor_msgs`` images ⇄ numpy (``image``) and bags through ``rosbags`` (``bag``).

* ``io.image``: ``image_to_numpy``, ``numpy_to_image_fields`` / ``numpy_to_image``, ``compressed_to_numpy``,
  ``message_to_numpy`` (Image or CompressedImage), ``to_rgb8``.
* ``io.bag``: ``BagReader`` (rosbag2 sqlite3/mcap and ROS 1, one-line errors), ``BagWriter`` (atomic
  rosbag2, mcap or sqlite3, with ``rgbt_seg_ros/msg/SegmentationInfo`` registered), ``output_typestore``.
* ``io.info``: ``info_fields``, the SegmentationInfo content shared by the node and replay.

CameraInfo → camera model lives in ``rgbt_seg_ros.pipeline.camera`` (``CameraModel.from_camera_info``).
"""
