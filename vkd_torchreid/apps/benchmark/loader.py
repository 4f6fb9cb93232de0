"""The training loader (frames/s) and resize (ms/frame) next to PIL + torchvision."""
from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any, Callable, Dict, List, Tuple

import torch

from vkd_torchreid.apps.benchmark.common import timeit

RESIZE_FRAMES = 64  # decoded frames per repetition of the resize micro-benchmark
RESIZE_MIN_REPS = 7


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
        paths = [[dm.train_loader.dataset.paths[t][f] for t, f in item[2]] for item in specs]
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
