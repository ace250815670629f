"""Helpers shared by the bag tests: a content hash of a bag on disk and Foxglove's independent decoder."""
from __future__ import annotations

import hashlib
from pathlib import Path


def tree_hash(path: Path) -> str:
    """sha256 over file names and bytes: proves an input bag was not touched."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def mcap_ros2(path: Path) -> list:
    """(schema, channel, message, decoded) with Foxglove's independent ROS 2 decoder (mcap-ros2-support)."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    with open(path, "rb") as f:
        return list(make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages())
