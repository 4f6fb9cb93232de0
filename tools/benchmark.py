"""Benchmarks of the VKD pipeline, each next to a baseline measured in the same run.

    python tools/benchmark.py {step,loader,eval,extract,all} [--json FILE]

- step: one VKD student step (teacher forward on N frames, student forward/backward on M,
  all losses, optimizer step) next to the bare compute of the same batch (our backbone:
  teacher forward + student forward/backward, no loss, no optimizer), for fp32 NCHW,
  channels_last, and channels_last + bfloat16 autocast; also the teacher-stage step.
- loader: frames/s of the VKD train loader on a synthetic MARS next to a plain PIL +
  torchvision-transforms pipeline of the same augmentations, for 0, 1 and 2 workers
  (``--loader-workers``), and ms per frame of ``resize`` alone, for each source frame size
  (``--source-sizes 256x128,400x170,128x64``, height x width; resized to ``--height`` x
  ``--width``).
- eval: ranking time of MARS-sized random matrices, ours (both AP modes) vs torchreid's
  Python evaluate_rank (measured on a query slice and scaled: it is linear in queries).
- extract: test-time frames/s of feature extraction, fp32 and the fast settings.

Median of several repetitions after a warm-up. Prints a table and writes JSON.
"""
from __future__ import annotations

import sys

from vkd_torchreid.apps.benchmark import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
