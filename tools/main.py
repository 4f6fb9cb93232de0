"""Train or evaluate VKD the torchreid way, or run the demo: the same as ``vkd-reid``.

    python tools/main.py --config-file configs/teacher_mars_r50.yaml --root reid-data
    python tools/main.py --config-file configs/vkd_mars_r50.yaml \
        vkd.teacher_checkpoint log/teacher_mars_r50/model/latest.pth.tar
    python tools/main.py --config-file configs/vkd_mars_r50.yaml --eval-only \
        model.load_weights path/to/released/experiment_folder
    python tools/main.py --config-file configs/demo.yaml   (the config declares the demo)
    python tools/main.py COMMAND ...   is   vkd-reid COMMAND ...

The stage comes from ``vkd.stage``. Errors end with one ``error:`` line and exit status 2.
"""
from __future__ import annotations

import importlib.util
import os
import sys

if importlib.util.find_spec("vkd_torchreid") is None:  # a source checkout, not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    from vkd_torchreid import cli

    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
