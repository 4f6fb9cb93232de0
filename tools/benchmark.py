"""Benchmarks of the VKD pipeline, each next to a baseline measured in the same run.

    python tools/benchmark.py ARGS   is   vkd-reid benchmark ARGS   (arguments: --help)
"""
from __future__ import annotations

import importlib.util
import os
import sys

if importlib.util.find_spec("vkd_torchreid") is None:  # a source checkout, not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    from vkd_torchreid import cli

    return cli.main(["benchmark", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
