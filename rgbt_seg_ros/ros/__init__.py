"""The ROS 2 front door: the ``rgbt_seg`` node (``node.py``) and the ROS-free logic it stands on.

Only ``node.py`` imports rclpy / message_filters; ``params``, ``slot``, ``health`` and ``messages``
are plain Python so they are tested without ROS. Importing this package imports nothing from ROS.
"""
