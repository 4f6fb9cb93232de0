"""Writes configs/ for every paper experiment from vkd_torchreid/apps/paper_configs.py.

    python tools/make_configs.py [--out configs]
"""
from __future__ import annotations

import argparse
import os

from vkd_torchreid.apps.paper_configs import write_all

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "configs"))
    paths = write_all(os.path.normpath(parser.parse_args().out))
    print(f"wrote {len(paths)} configs")
