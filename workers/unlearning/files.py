"""What every served or private safetensors file of this library shares: its metadata header."""

from __future__ import annotations

import json


def read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, without loading its tensors."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]).get("__metadata__", {})
