"""Fusion networks behind one registry (see ``_registry``). Importing this package registers them all."""
from rgbt_seg_ros.networks._registry import (MODALITIES, NetworkSpec, create_network, get_network_spec,
                                             list_networks, register_network)

# Each module registers itself on import; keep this list in sync with the files in this folder.
from rgbt_seg_ros.networks import baselines, efnet, fafnet, freqfusion, mafs, nested_dff  # noqa: E402,F401

__all__ = ["MODALITIES", "NetworkSpec", "create_network", "get_network_spec", "list_networks", "register_network"]
