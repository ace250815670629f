"""Live segmentation: the rgbt_seg node with a parameter file, optional model, namespace and topic remaps.

    ros2 launch rgbt_seg_ros rgbt_seg.launch.py params_file:=<yaml> model_file:=<file> \
        rgb_image:=/camera/color/image_raw aux_image:=/thermal/image_raw

Outputs are ~/labels, ~/colour, ~/confidence, ~/overlay, ~/info (i.e. /<namespace>/rgbt_seg/...).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

ARGS = {
    "params_file": (PathJoinSubstitution([FindPackageShare("rgbt_seg_ros"), "config", "mfnet_rgbt.yaml"]),
                    "Parameter YAML (/**/rgbt_seg: ros__parameters: ...)"),
    "model_file": ("", "Model file; empty = the one in params_file (or the built-in model)"),
    "namespace": ("", "Namespace of the node and its outputs"),
    "rgb_image": ("rgb/image", "RGB image topic"),
    "rgb_info": ("rgb/camera_info", "RGB CameraInfo topic"),
    "aux_image": ("", "Thermal or depth image topic; empty = thermal/image or depth/image"),
    "aux_info": ("", "Thermal or depth CameraInfo topic; empty = thermal/camera_info or depth/camera_info"),
    "use_sim_time": ("false", "Use /clock (bag replay)"),
    "log_level": ("info", "Logging level of the node"),
}


def _node(context):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    overrides = {"use_sim_time": get("use_sim_time").lower() in ("1", "true", "yes")}
    if get("model_file"):
        overrides["model_file"] = get("model_file")
    remaps = [("rgb/image", get("rgb_image")), ("rgb/camera_info", get("rgb_info"))]
    for modality in ("thermal", "depth"):  # only the one the node subscribes to matters
        if get("aux_image"):
            remaps.append((f"{modality}/image", get("aux_image")))
        if get("aux_info"):
            remaps.append((f"{modality}/camera_info", get("aux_info")))
    return [Node(
        package="rgbt_seg_ros", executable="rgbt_seg_node", name="rgbt_seg", namespace=get("namespace"),
        parameters=[get("params_file"), overrides], remappings=remaps, output="screen",
        respawn=False,  # bad parameters exit with one line; restarting would only repeat it
        arguments=["--ros-args", "--log-level", get("log_level")],
    )]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=desc)
         for name, (default, desc) in ARGS.items()] + [OpaqueFunction(function=_node)])
