"""The seeded study of the method's options on the synthetic world (resumable).

    python tools/study.py --config-file configs/study.yaml --seeds 3 --out log/study
    python tools/study.py --config-file configs/study.yaml --seeds 3 --variants vkd control

Re-running the same command skips every (variant, seed) already finished; the summary
(mean, std, min-max over seeds) is printed and written to <out>/summary.{json,md}.
The same as ``vkd-reid study ...``.
"""
from __future__ import annotations

import sys

from vkd_torchreid.apps.study import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
