"""The GPU check of the device data path: CUDA tests, then GPU-vs-CPU decode differences.

    python tools/gpu_check.py [--device cuda] [--frames 64] [--json FILE]

(the logic and its description live in vkd_torchreid/apps/gpu_check.py).
"""
from __future__ import annotations

import sys

from vkd_torchreid.apps.gpu_check import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
