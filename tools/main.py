"""Train or evaluate VKD the torchreid way.

    python tools/main.py --config-file configs/teacher_mars_r50.yaml --root reid-data
    python tools/main.py --config-file configs/vkd_mars_r50.yaml \
        vkd.teacher_checkpoint log/teacher_mars_r50/model/latest.pth.tar
    python tools/main.py --config-file configs/vkd_mars_r50.yaml --eval-only \
        model.load_weights path/to/released/experiment_folder
    python tools/main.py --config-file configs/demo.yaml

The stage comes from ``vkd.stage``. Errors end with one line and a non-zero exit.
"""
from __future__ import annotations

import argparse
import sys

from vkd_torchreid.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], argparse.ArgumentParser(description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)))
