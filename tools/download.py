"""The authors' released checkpoints and the public parts of the datasets.

    python tools/download.py checkpoints --root logs [--which baseline|distilled|all]
    python tools/download.py mars --root reid-data
    python tools/download.py veri|atrw|duke [--root reid-data]   (where to get them, layout)

gdown does the transfers, which resume from ``<file>.download/``; files are verified (checksums,
archive CRCs) before they get their final name and archives are unpacked atomically.
See :mod:`vkd_torchreid.apps.download`.
"""
from __future__ import annotations

import sys

from vkd_torchreid.apps.download import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
