"""JSON files written atomically: a reader sees the old file or the new one, never half."""
from __future__ import annotations

import json
import os
from typing import Any


def write_json(obj: Any, path: str) -> None:
    """Writes ``obj`` as indented JSON at ``path`` (temporary file, fsync, then rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
