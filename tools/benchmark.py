"""Benchmarks of the VKD pipeline, each next to a baseline measured in the same run.

    python tools/benchmark.py {step,loader,pipeline,eval,extract,cache,dist,search,all}
        [--json FILE]

What each measures: ``python tools/benchmark.py --help`` (the logic and its description live
in vkd_torchreid/apps/benchmark/).
"""
from __future__ import annotations

import sys

from vkd_torchreid.apps.benchmark import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
