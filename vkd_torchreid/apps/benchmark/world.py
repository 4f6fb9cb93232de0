"""A synthetic DukeMTMC-VideoReID written in parallel, for the benchmarks that feed the real
loader: frames at the size asked for, so that decoding and resizing cost what they cost.

DukeMTMC-VideoReID keeps each identity in its own folders (no index file lists every frame),
so disjoint identity ranges are written by separate processes with
:func:`vkd_torchreid.synthetic.write_synthetic` and their identity folders moved into one
dataset folder.
"""
from __future__ import annotations

import concurrent.futures
import os
import shutil
from typing import Dict, List, Tuple

from vkd_torchreid.synthetic import DATASET_DIRS, MARKER, write_synthetic

DATASET = "vkd_duke"
SPLITS = ("train", "query", "gallery")
#: Training identities per part (each part also writes one test identity).
PART_IDS = 8


def _write_part(job: Tuple[str, int, int, int, int, int, int, int]) -> Dict[str, int]:
    root, first_pid, train_ids, cams, tracklets, frames, height, width = job
    return write_synthetic(DATASET, root, ids=train_ids + 1, cams=cams, tracklets=tracklets,
                           frames=frames, seed=0, height=height, width=width,
                           first_pid=first_pid, train_ids=train_ids)


def write_world(root: str, train_ids: int, height: int, width: int, frames: int = 8,
                cams: int = 2, tracklets: int = 1, processes: int = 0) -> Dict[str, int]:
    """Writes ``root/DukeMTMC-VideoReID`` with ``train_ids`` training identities.

    Args:
        root: the data root (``data.root``); its Duke folder is replaced if this module or
            ``write_synthetic`` wrote it (FileExistsError otherwise).
        train_ids: training identities; one test identity per :data:`PART_IDS` of them.
        height, width: frame size.
        frames, cams, tracklets: frames per tracklet, cameras, tracklets per camera.
        processes: worker processes (0: every core).

    Returns:
        ``train_ids``, ``test_ids``, ``images`` (frames written).
    """
    parts: List[Tuple[str, int, int, int, int, int, int, int]] = []
    pid = 1
    for i, start in enumerate(range(0, train_ids, PART_IDS)):
        n = min(PART_IDS, train_ids - start)
        parts.append((os.path.join(root, f".part{i}"), pid, n, cams, tracklets, frames, height,
                      width))
        pid += n + 1
    base = os.path.join(root, DATASET_DIRS[DATASET])
    if os.path.isdir(base):
        if os.listdir(base) and not os.path.isfile(os.path.join(base, MARKER)):
            raise FileExistsError(f"{base} exists and was not written by write_synthetic; "
                                  "remove it or choose another root")
        shutil.rmtree(base)
    workers = min(processes or os.cpu_count() or 1, len(parts))
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        counts = list(pool.map(_write_part, parts))
    for split in SPLITS:
        os.makedirs(os.path.join(base, split))
    for part in parts:
        part_base = os.path.join(part[0], DATASET_DIRS[DATASET])
        for split in SPLITS:
            for name in os.listdir(os.path.join(part_base, split)):
                os.replace(os.path.join(part_base, split, name), os.path.join(base, split, name))
        shutil.rmtree(part[0])
    with open(os.path.join(base, MARKER), "w", encoding="utf-8") as fh:
        fh.write("written by vkd_torchreid.apps.benchmark.world.write_world\n")
    return {"train_ids": train_ids, "test_ids": len(parts),
            "images": sum(c["images"] for c in counts)}
