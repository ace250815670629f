"""Replay a bag into the node on simulated time and show everything in RViz.

    ros2 launch rgbt_seg_ros replay.launch.py bag:=<bag folder or .mcap> params_file:=<yaml> \
        rgb_image:=/camera/rgb/image aux_image:=/camera/thermal/image

Runs `ros2 bag play --clock` (publishes /clock), the node with use_sim_time:=true, and RViz with
config/rgbt_seg.rviz. Topic arguments are those of rgbt_seg.launch.py.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription, OpaqueFunction
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

SHARE = FindPackageShare("rgbt_seg_ros")
PASSED_ON = ("params_file", "model_file", "namespace", "rgb_image", "rgb_info", "aux_image", "aux_info", "log_level")


def _play(context):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    cmd = ["ros2", "bag", "play", get("bag"), "--clock", "--rate", get("rate")]
    if get("loop").lower() in ("1", "true", "yes"):
        cmd.append("--loop")
    return [ExecuteProcess(cmd=cmd, output="screen")]


def generate_launch_description():
    args = [
        DeclareLaunchArgument("bag", description="rosbag2 folder or file to play"),
        DeclareLaunchArgument("rate", default_value="1.0", description="Playback rate"),
        DeclareLaunchArgument("loop", default_value="false", description="Loop the bag"),
        DeclareLaunchArgument("rviz", default_value="true", description="Start RViz"),
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([SHARE, "config", "mfnet_rgbt.yaml"])),
        DeclareLaunchArgument("model_file", default_value=""),
        DeclareLaunchArgument("namespace", default_value=""),
        DeclareLaunchArgument("rgb_image", default_value="rgb/image"),
        DeclareLaunchArgument("rgb_info", default_value="rgb/camera_info"),
        DeclareLaunchArgument("aux_image", default_value=""),
        DeclareLaunchArgument("aux_info", default_value=""),
        DeclareLaunchArgument("log_level", default_value="info"),
    ]
    node = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([SHARE, "launch", "rgbt_seg.launch.py"])),
        launch_arguments=[(k, LaunchConfiguration(k)) for k in PASSED_ON] + [("use_sim_time", "true")])
    rviz = Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
                arguments=["-d", PathJoinSubstitution([SHARE, "config", "rgbt_seg.rviz"])],
                parameters=[{"use_sim_time": True}], condition=IfCondition(LaunchConfiguration("rviz")))
    return LaunchDescription(args + [node, rviz, OpaqueFunction(function=_play)])
