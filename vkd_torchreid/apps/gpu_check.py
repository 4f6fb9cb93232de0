"""The GPU check of the device data path (finishing on the device, decoding on the GPU):

    python tools/gpu_check.py [--device cuda] [--frames 64] [--json FILE]

1. runs the CUDA tests of the area (``tests/test_device_finish.py`` and
   ``tests/test_losses.py``, those named for CUDA;
   they skip without it), and
2. prints how far GPU decoding (nvJPEG + antialiased bicubic resize) is from the CPU path
   (OpenCV + Pillow), in uint8 levels, for synthetic JPEG frames at the input size (decoding
   alone), larger (shrinking) and smaller (enlarging), and how fast a batch decodes.

3. counts, on CUDA, the reductions that a decode overwrote: N tensors are filled and freed
   while reductions of them are still queued behind a long kernel, then a batch is decoded,
   by torchvision's ``decode_jpeg`` called as it is (which reuses those blocks) and by
   :func:`~vkd_torchreid.data.gpu_decode.decode_jpegs` (which must not);

4. with ``--train-steps K``, runs the training probe (:mod:`vkd_torchreid.apps.train_probe`):
   K teacher-stage steps per ``--decode`` device, and where a non-finite loss comes from;

5. with ``--benchmarks``, runs ``vkd-reid benchmark pipeline`` and ``step`` at the paper's
   student batch (:data:`PIPELINE_ARGS`, :data:`STEP_ARGS`; a few minutes on an H200).

The report (``--json``) is rewritten after each part, so a run cut short keeps what it did.

It writes its synthetic frames to a temporary folder and needs under two minutes on a GPU.
With ``--device cpu`` the numbers are torchvision's libjpeg on the CPU (the tests' stand-in).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from vkd_torchreid.apps.benchmark.common import timeit
from vkd_torchreid.data.gpu_decode import (
    decode_difference,
    decode_frames,
    decode_jpegs,
    torchvision_decode,
)
from vkd_torchreid.data.io import read_jpeg_bytes
from vkd_torchreid.synthetic import write_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = ("tests/test_device_finish.py", "tests/test_losses.py")
#: (source height, width) of the frames, resized to 256 x 128.
SOURCES = ((256, 128), (320, 160), (192, 96))
TARGET = (256, 128)
_PAPER_BATCH = ["--model", "vkd_resnet50", "-p", "8", "-k", "4", "-n", "8", "--height", "256",
                "--width", "128"]
#: ``--benchmarks``: the loader and the teacher-stage step together, both decoders.
PIPELINE_ARGS = ["pipeline", *_PAPER_BATCH, "--loader-workers", "8,14", "--stage", "teacher",
                 "--amp", "bf16", "--channels-last", "--steps", "30", "--warmup-steps", "3"]
#: ``--benchmarks``: the student step next to its bare compute.
STEP_ARGS = ["step", *_PAPER_BATCH, "-m", "2", "--reps", "10"]


def _frames(root: str, size: Sequence[int], count: int) -> List[str]:
    """``count`` synthetic MARS frames of ``size`` (JPEG, quality 90)."""
    folder = os.path.join(root, f"{size[0]}x{size[1]}")
    write_synthetic("vkd_mars", folder, ids=8, cams=2, tracklets=1, frames=max(1, count // 8),
                    seed=0, height=size[0], width=size[1])
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(folder)
                   for f in files if f.endswith(".jpg"))
    return paths[:count]


def _decode_rate(paths: Sequence[str], device: torch.device, reps: int = 5) -> float:
    """Frames per second of :func:`decode_frames` (decode, resize, crop) on a batch: the
    median of ``reps`` calls after a warm-up (nvJPEG handles, kernels), each closed by a
    device synchronisation."""
    jpeg = [read_jpeg_bytes(p) for p in paths]
    geometry = torch.zeros(len(jpeg), 3, dtype=torch.int64)
    return len(jpeg) / timeit(lambda: decode_frames(jpeg, geometry, TARGET, 10, device), reps)


def decode_report(device: torch.device, count: int) -> Dict[str, Any]:
    """Difference and speed of decoding ``count`` frames of each source size on ``device``."""
    out: Dict[str, Any] = {"device": str(device), "target": list(TARGET), "sources": {}}
    with tempfile.TemporaryDirectory(prefix="vkd_gpu_check_") as root:
        for size in SOURCES:
            paths = _frames(root, size, count)
            row = decode_difference(paths, *TARGET, device)
            row["frames_per_s"] = _decode_rate(paths, device)
            out["sources"][f"{size[0]}x{size[1]}"] = row
    return out


def corrupted_reductions(decode: Callable[[], Any], nbytes: Sequence[int],
                         device: torch.device, rounds: int = 10,
                         sleep_cycles: int = 50_000_000) -> Tuple[int, int]:
    """(overwritten, checked) reductions over ``rounds``: each round fills one uint8 tensor of
    each size in ``nbytes`` (those of the decoded frames, so that their blocks fit), queues
    a long kernel then a sum of each tensor, frees the tensors while the sums are still
    queued, calls ``decode`` and checks every sum. A sum is wrong only if the decode wrote
    into a block whose queued reader had not run yet."""
    bad = checked = 0
    for r in range(rounds):
        values = [(i + r) % 250 + 1 for i in range(len(nbytes))]
        tensors = [torch.full((n,), v, dtype=torch.uint8, device=device)
                   for n, v in zip(nbytes, values)]
        torch.cuda.synchronize(device)
        torch.cuda._sleep(sleep_cycles)  # the sums below stay queued behind this
        sums = [t.sum(dtype=torch.int64) for t in tensors]
        del tensors
        decode()
        torch.cuda.synchronize(device)
        bad += sum(int(s) != n * v for s, n, v in zip(sums, nbytes, values))
        checked += len(sums)
    return bad, checked


def reuse_report(paths: Sequence[str], device: torch.device) -> Dict[str, Any]:
    """:func:`corrupted_reductions` for torchvision's decode as it is and for ours."""
    jpeg = [read_jpeg_bytes(p) for p in paths]
    nbytes = [int(f.numel()) for f in decode_jpegs(jpeg, device)]
    out: Dict[str, Any] = {"frames": len(jpeg)}
    for name, decode in (
            ("torchvision", lambda: torchvision_decode(jpeg, device)),
            ("ours", lambda: decode_jpegs(jpeg, device))):
        bad, checked = corrupted_reductions(decode, nbytes, device)
        out[name] = {"overwritten": bad, "checked": checked}
    return out


def run_tests() -> int:
    """The CUDA tests of the area (pytest's exit status)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p))
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
           "-k", "cuda", *TESTS]
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=REPO, env=env)


def _print_decode(report: Dict[str, Any]) -> None:
    print(f"decode on {report['device']} vs the CPU path (OpenCV + Pillow), uint8 levels, "
          f"to {TARGET[0]}x{TARGET[1]}:")
    print(f"{'source':>9s} {'frames':>6s} {'decode mean':>11s} {'decode max':>10s} "
          f"{'mean':>6s} {'max':>5s} {'frames/s':>9s}")
    for key, r in report["sources"].items():
        print(f"{key:>9s} {r['frames']:6d} {r['decode_mean']:11.3f} {r['decode_max']:10.0f} "
              f"{r['mean']:6.3f} {r['max']:5.0f} {r['frames_per_s']:9.0f}")


def _memory_reuse(device: torch.device, frames: int) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vkd_gpu_check_") as root:
        out = reuse_report(_frames(root, TARGET, frames), device)
    for name in ("torchvision", "ours"):
        r = out[name]
        print(f"decode into memory still queued for reading ({name}): {r['overwritten']} "
              f"of {r['checked']} reductions overwritten", flush=True)
    return out


def _benchmarks() -> Dict[str, Any]:
    """:data:`PIPELINE_ARGS` and :data:`STEP_ARGS` through the benchmark command."""
    from vkd_torchreid.apps.benchmark import BENCHES, build_parser

    out = {}
    for argv in (PIPELINE_ARGS, STEP_ARGS):
        print("$ vkd-reid benchmark " + " ".join(argv), flush=True)
        out[argv[0]] = BENCHES[argv[0]](build_parser().parse_args(argv))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--frames", type=int, default=64, help="frames per source size")
    parser.add_argument("--skip-tests", action="store_true", help="only the decode numbers")
    parser.add_argument("--json", default="", help="also write the numbers to this file")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="also run the training probe for this many steps (0: no)")
    parser.add_argument("--decode", default="cpu,cuda",
                        help="the probe's data.decode_device values (cuda needs CUDA)")
    parser.add_argument("--model", default="vkd_resnet50", help="the probe's network")
    parser.add_argument("--benchmarks", action="store_true",
                        help="also run the pipeline and step benchmarks at the paper's batch")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available here", file=sys.stderr)
        return 2
    report: Dict[str, Any] = {}

    def save() -> None:
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(report, fh, indent=2)

    status = 0 if args.skip_tests else run_tests()
    report.update(decode_report(device, args.frames), tests_exit_status=status)
    _print_decode(report)
    save()
    if device.type == "cuda":
        report["memory_reuse"] = _memory_reuse(device, args.frames)
        save()
    if args.train_steps > 0:
        from vkd_torchreid.apps.train_probe import probe, probe_args

        decodes = [d for d in args.decode.split(",") if d]
        report["train_probe"] = probe(probe_args(args.train_steps, args.model), decodes)
        for row in report["train_probe"]:
            print("train probe: " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
        save()
    if args.benchmarks:
        report["benchmarks"] = _benchmarks()
        save()
    return status
