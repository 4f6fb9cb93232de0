"""The authors' released checkpoints and the public parts of the datasets.

    python tools/download.py checkpoints --root logs [--which baseline|distilled|all]
    python tools/download.py mars --root reid-data
    python tools/download.py veri|atrw|duke [--root reid-data]   (where to get them, layout)

Downloads resume from a ``.part`` file; archives are verified (length, checksums, zip CRCs)
before they get their final name and are unpacked atomically.
See :mod:`vkd_torchreid.apps.download`.
"""
from __future__ import annotations

import sys

from vkd_torchreid.apps.download import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
