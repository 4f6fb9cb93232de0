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

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import torch

import vkd_torchreid
from vkd_torchreid.compat import torchreid_evaluate_rank
from vkd_torchreid.config import get_default_config
from vkd_torchreid.engine import DistillOptions, EngineOptions, TeacherEngine, VKDEngine
from vkd_torchreid.evaluation import evaluate_rank
from vkd_torchreid.models import build_model
from vkd_torchreid.utils.device import autocast, to_device

MODES = {"fp32": (False, ""), "channels_last": (True, ""), "bf16": (True, "bf16")}
MARS_SHAPES = {"i2v": (1980, 11310), "v2v_no_query": (1980, 9330)}
TORCHREID_SLICE = 200
RESIZE_FRAMES = 64  # decoded frames per repetition of the resize micro-benchmark
RESIZE_MIN_REPS = 7


def timeit(fn: Callable[[], Any], reps: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``reps`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> Dict[str, Any]:
    return {"cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "vkd_torchreid": vkd_torchreid.__version__}


# --------------------------------------------------------------------------- step
def _fake_dm() -> Any:
    return types.SimpleNamespace(train_loader=[], test_loader={}, sources=[], targets=[])


def _batch(args: argparse.Namespace, n: int) -> Dict[str, torch.Tensor]:
    b = args.p * args.k
    return {"img": torch.randn(b, n, 3, args.height, args.width),
            "pid": torch.arange(args.p).repeat_interleave(args.k),
            "camid": torch.zeros(b, dtype=torch.int64)}


def _options(use_gpu: bool, amp: str = "", channels_last: bool = False,
             m: int = 2) -> Tuple[EngineOptions, DistillOptions]:
    """The engines' options from the default config with these settings."""
    cfg = get_default_config()
    cfg.use_gpu, cfg.train.amp, cfg.train.channels_last = use_gpu, amp, channels_last
    cfg.vkd.student_frames = m
    return EngineOptions.from_config(cfg), DistillOptions.from_config(cfg)


def bench_step(args: argparse.Namespace) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    use_gpu = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if use_gpu else "cpu")
    for mode, (cl, amp) in MODES.items():
        torch.manual_seed(0)
        teacher = build_model(args.model, args.classes, loss="triplet", pretrained=False)
        student = build_model(args.model, args.classes, loss="triplet", pretrained=False)
        opts, distill = _options(use_gpu, amp, cl, args.m)
        engine = VKDEngine(_fake_dm(), student, teacher,
                           torch.optim.Adam(student.parameters(), lr=1e-4), None, opts, distill)
        engine.set_model_mode("train")
        batch = _batch(args, args.n)
        vkd_s = timeit(functools.partial(engine.forward_backward, batch), args.reps)

        def bare(engine: VKDEngine = engine, batch: Dict[str, torch.Tensor] = batch,
                 cl: bool = cl, amp: str = amp) -> None:
            x = to_device(batch["img"], device, cl)
            with autocast(device, amp):
                with torch.inference_mode():
                    engine.teacher.forward_features(x)
                xs = to_device(batch["img"][:, :args.m], device, cl)
                emb, logits = engine.model.forward_features(xs)
            (emb.float().sum() + logits.float().sum()).backward()

        bare_s = timeit(bare, args.reps)
        out[mode] = {"vkd_s": vkd_s, "bare_s": bare_s, "overhead": vkd_s / bare_s - 1}
        print(f"step {mode:14s} vkd {vkd_s:7.3f} s   bare {bare_s:7.3f} s   "
              f"overhead {100 * (vkd_s / bare_s - 1):+5.1f}%", flush=True)
    torch.manual_seed(0)
    model = build_model(args.model, args.classes, loss="triplet", pretrained=False)
    engine = TeacherEngine(_fake_dm(), model, torch.optim.Adam(model.parameters(), lr=1e-4),
                           None, _options(use_gpu)[0])
    engine.set_model_mode("train")
    batch = _batch(args, args.n)
    t_s = timeit(lambda: engine.forward_backward(batch), args.reps)

    def bare_teacher() -> None:
        emb, logits = engine.model.forward_features(to_device(batch["img"], device, False))
        (emb.sum() + logits.sum()).backward()

    tb_s = timeit(bare_teacher, args.reps)
    out["teacher_fp32"] = {"vkd_s": t_s, "bare_s": tb_s, "overhead": t_s / tb_s - 1}
    print(f"step teacher_fp32     step {t_s:7.3f} s   bare {tb_s:7.3f} s", flush=True)
    out["speedup_bf16_vs_fp32"] = out["fp32"]["vkd_s"] / out["bf16"]["vkd_s"]
    out["config"] = {"model": args.model, "P": args.p, "K": args.k, "N": args.n, "M": args.m,
                     "height": args.height, "width": args.width}
    return out


# --------------------------------------------------------------------------- loader
def _pil_pipeline(args: argparse.Namespace, paths: List[List[str]]) -> Callable[[], Any]:
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.Resize((args.height, args.width), interpolation=T.InterpolationMode.BICUBIC),
                    T.Pad(10), T.RandomCrop((args.height, args.width)), T.RandomHorizontalFlip(),
                    T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                    T.RandomErasing(p=0.5, scale=(0.02, 0.4), ratio=(0.3, 3.3))])

    class PilFrames(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.stack([tf(Image.open(p).convert("RGB")) for p in paths[i]])

    return PilFrames


def _resize_ms(paths: List[str], height: int, width: int, reps: int) -> float:
    """Median ms per frame of ``resize`` alone on decoded frames (decoding is not timed)."""
    from vkd_torchreid.data.io import read_image
    from vkd_torchreid.data.transforms import resize

    frames = [read_image(p) for p in paths[:RESIZE_FRAMES]]

    def run() -> None:
        for img in frames:
            resize(img, height, width)

    return 1000 * timeit(run, max(reps, RESIZE_MIN_REPS)) / len(frames)


def _bench_loader_source(args: argparse.Namespace, root: str,
                         src: Tuple[int, int]) -> Dict[str, Any]:
    """Loader frames/s (ours and PIL) and resize ms/frame for synthetic frames of size ``src``."""
    from vkd_torchreid.config import build_config
    from vkd_torchreid.data.manager import VKDDataManager
    from vkd_torchreid.synthetic import write_synthetic

    # One epoch = exactly loader_batches batches of P identities, and every rep consumes a
    # whole epoch: abandoning an iterator mid-epoch would make persistent workers decode
    # prefetched batches that nobody reads.
    ids = 2 * args.p * args.loader_batches
    write_synthetic("vkd_mars", root, ids=ids, cams=4, tracklets=2, frames=16, seed=0,
                    height=src[0], width=src[1])
    out: Dict[str, Any] = {"source": list(src), "ours_fps": {}, "pil_fps": {}}
    b = args.p * args.k
    label = f"{src[0]}x{src[1]}"
    for workers in args.loader_workers:
        dm = VKDDataManager.from_config(build_config("", [
            "data.root", root, "data.height", str(args.height), "data.width", str(args.width),
            "vkd.stage", "student", "vkd.teacher_checkpoint", "(unused)",
            "train.batch_size", str(b), "sampler.num_instances", str(args.k),
            "video.seq_len", str(args.n), "data.workers", str(workers), "use_gpu", "False"]))
        loader = dm.train_loader
        batches = args.loader_batches
        frames = batches * b * args.n

        assert len(loader) == batches, (len(loader), batches)
        if "resize_ms" not in out:
            all_paths = [p for tracklet in loader.dataset.paths for p in tracklet]
            out["resize_ms"] = _resize_ms(all_paths, args.height, args.width, args.reps)
            print(f"loader source {label}: resize {out['resize_ms']:.3f} ms/frame", flush=True)

        def ours(loader: Any = loader) -> None:
            for _ in loader:
                pass

        out["ours_fps"][str(workers)] = frames / timeit(ours, args.reps)
        # the same items, decoded and augmented by PIL + torchvision
        specs = [spec for batch in list(iter(loader.batch_sampler))[:batches] for spec in batch]
        paths = [[dm.train_loader.dataset.paths[t][f] for t, f in refs] for _, _, refs in specs]
        pil = torch.utils.data.DataLoader(_pil_pipeline(args, paths)(), batch_size=b,
                                          num_workers=workers)

        def plain(pil: Any = pil) -> None:
            for _ in pil:
                pass

        out["pil_fps"][str(workers)] = len(paths) * args.n / timeit(plain, args.reps)
        print(f"loader source {label} workers={workers}: "
              f"ours {out['ours_fps'][str(workers)]:8.0f} frames/s   "
              f"PIL {out['pil_fps'][str(workers)]:8.0f} frames/s", flush=True)
    out["ratio"] = {w: out["ours_fps"][w] / out["pil_fps"][w] for w in out["ours_fps"]}
    return out


def bench_loader(args: argparse.Namespace) -> Dict[str, Any]:
    sources = args.source_sizes or [(args.src_height, args.src_width)]
    sources = list(dict.fromkeys(sources))  # each size once, in the given order
    out: Dict[str, Any] = {"target": [args.height, args.width], "sources": {}}
    with tempfile.TemporaryDirectory(prefix="vkd_bench_") as root:
        for src in sources:
            out["sources"][f"{src[0]}x{src[1]}"] = _bench_loader_source(
                args, os.path.join(root, f"{src[0]}x{src[1]}"), src)
    # The first source's figures also at the top level, where they were before.
    first = out["sources"][f"{sources[0][0]}x{sources[0][1]}"]
    out.update({k: first[k] for k in ("ours_fps", "pil_fps", "ratio")})
    cols = "".join(f"  {f'ours w={w}':>10s} {f'PIL w={w}':>9s}" for w in args.loader_workers)
    print(f"loader to {args.height}x{args.width} (frames/s; resize alone in ms/frame)")
    print(f"{'source':>9s}  {'resize ms':>9s}{cols}")
    for key, r in out["sources"].items():
        row = "".join(f"  {r['ours_fps'][str(w)]:10.0f} {r['pil_fps'][str(w)]:9.0f}"
                      for w in args.loader_workers)
        print(f"{key:>9s}  {r['resize_ms']:9.3f}{row}", flush=True)
    return out


# --------------------------------------------------------------------------- eval
def mars_like_matrix(num_q: int, num_g: int, seed: int = 0) -> tuple:
    """A random distance matrix with MARS-like ids/cameras; queries are in the gallery."""
    rng = np.random.RandomState(seed)
    ids = 626
    g_pids = rng.randint(0, ids, size=num_g)
    g_cams = rng.randint(0, 6, size=num_g)
    q_idx = rng.choice(num_g, size=num_q, replace=False)
    distmat = rng.rand(num_q, num_g).astype(np.float32)
    return distmat, g_pids[q_idx], g_pids, g_cams[q_idx], g_cams


def bench_eval(args: argparse.Namespace) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for name, (q, g) in MARS_SHAPES.items():
        d, qp, gp, qc, gc = mars_like_matrix(q, g)
        ours = timeit(functools.partial(evaluate_rank, d, qp, gp, qc, gc), args.reps)
        ours_mars = timeit(functools.partial(evaluate_rank, d, qp, gp, qc, gc, ap_mode="mars"),
                           args.reps)
        n = min(TORCHREID_SLICE, q)
        tr = timeit(functools.partial(torchreid_evaluate_rank, d[:n], qp[:n], gp, qc[:n], gc,
                                      use_cython=False), 1, warmup=0) * q / n
        out[name] = {"ours_s": ours, "ours_mars_s": ours_mars, "torchreid_s": tr,
                     "speedup": tr / ours, "shape": [q, g]}
        print(f"eval {name} {q}x{g}: ours {ours:.3f} s, ours (mars AP) {ours_mars:.3f} s, "
              f"torchreid {tr:.1f} s (from {n} queries) -> {tr / ours:.0f}x", flush=True)
    out.update({k: out["i2v"][k] for k in ("ours_s", "ours_mars_s", "torchreid_s", "speedup")})
    return out


# --------------------------------------------------------------------------- extract
def bench_extract(args: argparse.Namespace) -> Dict[str, Any]:
    from vkd_torchreid.engine.extract import extract

    model = build_model(args.model, args.classes, loss="triplet", pretrained=False).eval()
    items = args.extract_items
    imgs = torch.randn(items, args.n, 3, args.height, args.width)
    loader = [{"img": imgs[i:i + 8], "pid": torch.zeros(len(imgs[i:i + 8]), dtype=torch.int64),
               "camid": torch.zeros(len(imgs[i:i + 8]), dtype=torch.int64)}
              for i in range(0, items, 8)]
    out = {}
    for label, cl, amp in (("fp32", False, ""), ("fast", True, "bf16")):
        m = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        secs = timeit(lambda m=m, cl=cl, amp=amp: extract(m, loader, torch.device("cpu"), amp, cl),
                      args.reps)
        out[f"{label}_fps"] = items * args.n / secs
        print(f"extract {label}: {out[f'{label}_fps']:.0f} frames/s", flush=True)
    return out


def _sizes(text: str) -> List[Tuple[int, int]]:
    """``'256x128,400x170'`` -> ``[(256, 128), (400, 170)]`` (height x width)."""
    sizes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            h, w = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r}: expected HEIGHTxWIDTH, e.g. 400x170") from None
        if h < 8 or w < 8:
            raise argparse.ArgumentTypeError(f"{part!r}: frames of at least 8x8 pixels")
        sizes.append((h, w))
    if not sizes:
        raise argparse.ArgumentTypeError("expected HEIGHTxWIDTH[,HEIGHTxWIDTH...]")
    return sizes


def _workers(text: str) -> List[int]:
    """``'0,2'`` -> ``[0, 2]``."""
    try:
        counts = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected worker counts, e.g. 0,1,2") from None
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected worker counts >= 0, e.g. 0,1,2")
    return list(dict.fromkeys(counts))


BENCHES = {"step": bench_step, "loader": bench_loader, "eval": bench_eval,
           "extract": bench_extract}


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=[*BENCHES, "all"])
    parser.add_argument("--json", default="", help="write the figures to this JSON file")
    parser.add_argument("--model", default="vkd_resnet50")
    parser.add_argument("--classes", type=int, default=625)
    parser.add_argument("-p", type=int, default=4, help="identities per batch (P)")
    parser.add_argument("-k", type=int, default=2, help="items per identity (K)")
    parser.add_argument("-n", type=int, default=8, help="teacher frames per item (N)")
    parser.add_argument("-m", type=int, default=2, help="student frames per item (M)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--src-height", type=int, default=256,
                        help="synthetic frame height (without --source-sizes)")
    parser.add_argument("--src-width", type=int, default=128,
                        help="synthetic frame width (without --source-sizes)")
    parser.add_argument("--source-sizes", type=_sizes, default=None, metavar="HxW[,HxW...]",
                        help="loader: synthetic frame sizes to benchmark in turn, e.g. "
                             "256x128,400x170,128x64 (default: --src-height x --src-width)")
    parser.add_argument("--loader-workers", type=_workers, default=[0, 1, 2], metavar="N[,N...]",
                        help="loader: worker counts (default 0,1,2)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--loader-batches", type=int, default=4)
    parser.add_argument("--extract-items", type=int, default=32)
    parser.add_argument("--cpu", action="store_true", help="benchmark on the CPU even with CUDA")
    args = parser.parse_args(argv)
    result: Dict[str, Any] = {"machine": machine()}
    print(f"machine: {result['machine']}", flush=True)
    for name in (BENCHES if args.what == "all" else [args.what]):
        result[name] = BENCHES[name](args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
