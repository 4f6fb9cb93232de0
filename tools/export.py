"""ONNX export of a trained network (image and tracklet models), checked with onnxruntime.

    python tools/export.py ARGS   is   vkd-reid export ARGS   (arguments: --help)
"""
from __future__ import annotations

import importlib.util
import os
import sys

if importlib.util.find_spec("vkd_torchreid") is None:  # a source checkout, not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    from vkd_torchreid import cli

    return cli.main(["export", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
