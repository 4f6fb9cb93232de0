"""The seeded study of the method's options on the synthetic world (resumable).

    python tools/study.py --config-file configs/study.yaml --seeds 3 --out log/study
    python tools/study.py --config-file configs/study.yaml --seeds 3 --variants vkd control

Re-running the same command skips every (variant, seed) already finished; the summary
(mean, std, min-max over seeds) is printed and written to <out>/summary.{json,md}.
"""
from __future__ import annotations

import argparse
import sys

from vkd_torchreid.apps.study import VARIANTS, run_study
from vkd_torchreid.cli import setup_logging, teardown_logging
from vkd_torchreid.config import build_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, help="the study's config (demo section)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 1..N")
    parser.add_argument("--out", default="log/study", help="output folder (resumable)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    import vkd_torchreid  # noqa: F401  (registers datasets and models)

    try:
        cfg = build_config(args.config_file, args.opts)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.out)
    try:
        run_study(cfg, args.out, list(range(1, args.seeds + 1)), args.variants)
    finally:
        teardown_logging()
    return 0


if __name__ == "__main__":
    sys.exit(main())
