"""``vkd-reid gallery-curve``: image-to-video accuracy as the gallery tracklets grow.

    vkd-reid gallery-curve --config-file vkd_mars_r50 --weights teacher.pth.tar \\
        --weights student.pth.tar --output analysis/ [--frames 1 2 4 8 all] [--draws 10]

The paper's Fig. 3: I2V top-1 and mAP with 1, 2, 4, 8 frames per gallery tracklet and with all
of them, one line per network. The queries are the evaluation's (the first frame of each
query tracklet; VeRi-776: the query images) and the gallery its gallery (MARS: with the query
tracklets put back, as the reference does). A count of frames is sampled as the evaluation's
``evenly`` does (the first frame of each of k equal chunks): the 8-frame point is the
evaluation's I2V with ``video.test_seq_len 8``, the ``all`` point the evaluation with
``video.sample_method all``. With ``--draws R``, each count is instead R random draws of k
frames per tracklet (the same draws for every network), averaged, with their spread.

Writes ``gallery_curve.json`` (``{"networks": [{"label", "weights", "arch", "points":
[{"frames": 8, "rank1", "mAP", "mAP_mars"}, ...]}], ...}``, values in [0, 1], ``frames`` an
integer or ``"all"``) and ``gallery_curve.png``.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from vkd_torchreid import evaluation
from vkd_torchreid.apps.analysis.session import AnalysisSession, Frames
from vkd_torchreid.apps.analysis.tool import tool_main, write_result
from vkd_torchreid.utils.plots import save_figure, subplots

FRAMES: tuple = (1, 2, 4, 8, "all")
METRICS = ("rank1", "mAP", "mAP_mars")


def parse_frames(values: Sequence[str]) -> List[Frames]:
    """``['1', '2', 'all']`` -> ``[1, 2, 'all']``; ValueError names a bad value."""
    out: List[Frames] = []
    for v in values:
        if str(v) == "all":
            out.append("all")
            continue
        try:
            k = int(v)
        except ValueError:
            k = 0
        if k < 1:
            raise ValueError(f"--frames {v!r}: expected a positive number of frames or 'all'")
        out.append(k)
    if not out:
        raise ValueError("--frames: give at least one number of frames")
    return out


def _random_pick(rng: np.random.Generator, k: int) -> Any:
    """k distinct random frames in temporal order (a shorter tracklet: all, then repeats)."""
    def pick(n: int) -> np.ndarray:
        return np.sort(rng.choice(n, size=k, replace=n < k))
    return pick


def gallery_curve(session: AnalysisSession, frames: Sequence[Frames] = FRAMES,
                  draws: int = 0, seed: int = 0) -> Dict[str, Any]:
    """Every number of the curve (see the module docstring).

    Raises:
        ValueError: the dataset has no I2V protocol, or no query.
    """
    session.require_mode("I2V", "gallery-curve")
    q_items = session.items("query_img")
    if not q_items:
        raise ValueError(f"{session.dataset} has no query: nothing to rank")
    g_items = session.gallery_items("gallery")
    qp, qc = session.ids(q_items)
    gp, gc = session.ids(g_items)
    ranks = session.options.ranks
    # a whole-tracklet pass keeps the frames of every count: each frame is extracted once
    session.keep_counts.update(int(k) for k in frames if k != "all")
    order = sorted(range(len(frames)), key=lambda j: frames[j] != "all")  # 'all' first
    networks = []
    for i, net in enumerate(session.networks):
        points: Dict[int, Dict[str, Any]] = {}
        q = None  # after the first gallery pass, which may already hold the query frames
        for j in order:
            k = frames[j]
            if k == "all" or not draws:
                g = session.embed(i, g_items, k)
                q = session.query_embeddings(i, "I2V") if q is None else q
                m = evaluation.rank_all(session.distances(q, g), qp, gp, qc, gc, ranks=ranks)
                points[j] = {"frames": k, **{n: m[n] for n in METRICS}}
                continue
            q = session.query_embeddings(i, "I2V") if q is None else q
            rng = np.random.default_rng([seed, int(k)])  # the same draws for every network
            runs = [evaluation.rank_all(
                session.distances(q, session.embed_picked(i, g_items, _random_pick(rng, k))),
                qp, gp, qc, gc, ranks=ranks) for _ in range(draws)]
            points[j] = {"frames": k, "draws": draws,
                         **{n: float(np.mean([r[n] for r in runs])) for n in METRICS},
                         **{f"{n}_std": float(np.std([r[n] for r in runs])) for n in METRICS}}
        networks.append({"label": net.label, "weights": os.path.abspath(net.weights),
                         "arch": net.model.arch,
                         "points": [points[j] for j in range(len(frames))]})
    return {"dataset": session.dataset, "protocol": "I2V", "queries": len(q_items),
            "gallery": len(g_items), "sampling": "random" if draws else "evenly",
            "draws": int(draws), "networks": networks}


def plot(curve: Dict[str, Any], path: str) -> str:
    """Top-1 and mAP against frames per gallery tracklet, one line per network."""
    fig, axes = subplots(1, 2, figsize=(9, 3.6))
    for ax, metric, name in zip(axes, ("rank1", "mAP"), ("top-1", "mAP")):
        for net in curve["networks"]:
            pts = net["points"]
            ys = [100 * p[metric] for p in pts]
            err = [100 * p.get(f"{metric}_std", 0.0) for p in pts]
            ax.errorbar(range(len(pts)), ys, yerr=err if any(err) else None, marker="o",
                        capsize=3, label=net["label"])
        labels = [str(p["frames"]) for p in curve["networks"][0]["points"]]
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel("frames per gallery tracklet")
        ax.set_ylabel(f"I2V {name} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    sampling = (f"{curve['draws']} random draws" if curve["draws"] else "evenly sampled")
    fig.suptitle(f"{curve['dataset']}: {curve['queries']} queries, {curve['gallery']} gallery "
                 f"tracklets ({sampling})", fontsize=10)
    return save_figure(fig, path)


def write_outputs(curve: Dict[str, Any], out: str) -> Dict[str, str]:
    return write_result(curve, out, "gallery_curve", plot)


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", nargs="+", default=[str(f) for f in FRAMES],
                   help="frames per gallery tracklet: counts and/or 'all' (default 1 2 4 8 all)")
    p.add_argument("--draws", type=int, default=0,
                   help="random draws of k frames per count, averaged (default 0: evenly)")
    p.add_argument("--seed", type=int, default=0, help="of the random draws")


def _run(session: AnalysisSession, args: argparse.Namespace) -> Dict[str, str]:
    if args.draws < 0:
        raise ValueError(f"--draws {args.draws}: expected 0 (evenly) or a positive count")
    curve = gallery_curve(session, parse_frames(args.frames), args.draws, args.seed)
    for net in curve["networks"]:
        print(f"{net['label']}: " + "  ".join(
            f"{p['frames']}: {100 * p['rank1']:.1f}/{100 * p['mAP']:.1f}"
            for p in net["points"]) + "  (frames: I2V top-1/mAP %)")
    return write_outputs(curve, args.output)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return tool_main("vkd-reid gallery-curve", __doc__ or "", argv, _add_args, _run)


__all__ = ["FRAMES", "gallery_curve", "main", "parse_frames", "plot", "write_outputs"]
