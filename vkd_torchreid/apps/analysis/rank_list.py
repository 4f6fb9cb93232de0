"""``vkd-reid rank-list``: the same queries' ranked lists, one row per network.

    vkd-reid rank-list --config-file vkd_mars_r50 --weights teacher.pth.tar \\
        --weights student.pth.tar --output analysis/ [--queries 6 | --query-index 3 17] [--k 10]

For each query (``--queries N`` drawn with ``--seed``, or the indices ``--query-index``) of a
protocol (``--protocol``, default I2V), the query frame and its top-k gallery items (a
tracklet's first frame), green when of the query's identity and red otherwise, one row per
network, so that teacher and student failures can be compared on the same queries. Gallery
items of the query's identity and camera are junk and left out, as in the evaluation.

Writes ``rank_list.png`` (one block of rows per query) and ``rank_list.json`` (every item,
distance and verdict).
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from vkd_torchreid import evaluation
from vkd_torchreid.apps.analysis.session import AnalysisSession
from vkd_torchreid.apps.analysis.tool import tool_main
from vkd_torchreid.data.base import MODES, item_frames
from vkd_torchreid.data.io import read_image
from vkd_torchreid.utils.jsonio import write_json

DEFAULT_QUERIES = 6


def choose_queries(num_queries: int, count: int, indices: Sequence[int], seed: int) -> List[int]:
    """Query rows: ``indices`` when given (each checked), else ``count`` drawn with ``seed``."""
    if num_queries == 0:
        raise ValueError("the dataset has no query: nothing to rank")
    if indices:
        bad = [i for i in indices if not 0 <= i < num_queries]
        if bad:
            raise ValueError(f"--query-index {bad}: expected indices in 0..{num_queries - 1}")
        return list(indices)
    if count < 1:
        raise ValueError(f"--queries {count}: expected a positive number of queries")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(num_queries, min(count, num_queries),
                                             replace=False))


def rank_lists(session: AnalysisSession, rows: Sequence[int], k: int,
               protocol: str = "I2V") -> Dict[str, Any]:
    """Every query's top-k per network (see the module docstring)."""
    session.require_mode(protocol, "rank-list")
    if k < 1:
        raise ValueError(f"--k {k}: expected a positive number of gallery items")
    q_kind, g_kind = MODES[protocol]
    queries = session.items(q_kind)
    gallery = session.gallery_items(g_kind)
    qp, qc = session.ids(queries)
    gp, gc = session.ids(gallery)
    out = [{"index": int(r), "pid": int(qp[r]), "camid": int(qc[r]),
            "path": item_frames(queries[r])[0], "networks": []} for r in rows]
    for i, net in enumerate(session.networks):
        q = session.query_embeddings(i, protocol)[list(rows)]
        dist = session.distances(q, session.embed(i, gallery))
        for j, r in enumerate(rows):
            junk = (gp == qp[r]) & (gc == qc[r])
            cols = evaluation.top_k(dist, j, k, exclude=junk)
            out[j]["networks"].append({"label": net.label, "ranked": [
                {"gallery_index": c, "path": item_frames(gallery[c])[0], "pid": int(gp[c]),
                 "camid": int(gc[c]), "distance": float(dist[j, c]),
                 "correct": bool(gp[c] == qp[r])} for c in cols]})
    return {"dataset": session.dataset, "protocol": protocol, "k": int(k),
            "metric": session.options.dist_metric,
            "networks": [{"label": n.label, "weights": os.path.abspath(n.weights),
                          "arch": n.model.arch} for n in session.networks],
            "queries": out}


def render(result: Dict[str, Any], height: int = 128, width: int = 64) -> np.ndarray:
    """One picture: per query a block of rows (one per network), blocks stacked."""
    cache: Dict[str, np.ndarray] = {}

    def image(path: str) -> np.ndarray:
        if path not in cache:
            cache[path] = read_image(path)
        return cache[path]

    blocks = []
    for q in result["queries"]:
        for net in q["networks"]:
            items = [evaluation.RankedItem(image(it["path"]), it["distance"], it["correct"],
                                           str(it["pid"])) for it in net["ranked"]]
            blocks.append(evaluation.render_ranked_list(
                image(q["path"]), items, height, width,
                query_label=f"{net['label']} q{q['index']}"))
        blocks.append(None)  # a gap between queries
    widths = [b.shape[1] for b in blocks if b is not None]
    gap = 10
    total_h = sum(b.shape[0] if b is not None else gap for b in blocks[:-1])
    canvas = Image.new("RGB", (max(widths), total_h), (255, 255, 255))
    y = 0
    for b in blocks[:-1]:
        if b is None:
            ImageDraw.Draw(canvas).line([(0, y + gap // 2), (max(widths), y + gap // 2)],
                                        fill=(180, 180, 180))
            y += gap
            continue
        canvas.paste(Image.fromarray(b), (0, y))
        y += b.shape[0]
    return np.asarray(canvas)


def write_outputs(result: Dict[str, Any], out: str, height: int, width: int) -> Dict[str, str]:
    paths = {"json": os.path.join(out, "rank_list.json"),
             "png": os.path.join(out, "rank_list.png")}
    os.makedirs(out, exist_ok=True)
    write_json(result, paths["json"])
    Image.fromarray(render(result, height, width)).save(paths["png"])
    return paths


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queries", type=int, default=DEFAULT_QUERIES, help="random queries")
    p.add_argument("--query-index", type=int, nargs="+", default=[],
                   help="these query rows instead (0-based, in the protocol's query order)")
    p.add_argument("--seed", type=int, default=0, help="of the query draw")
    p.add_argument("--k", type=int, default=0, help="gallery items per row (default: "
                                                     "test.visrank_topk)")
    p.add_argument("--protocol", default="I2V", choices=sorted(MODES))


def _run(session: AnalysisSession, args: argparse.Namespace) -> Dict[str, str]:
    session.require_mode(args.protocol, "rank-list")
    queries = session.items(MODES[args.protocol][0])
    rows = choose_queries(len(queries), args.queries, args.query_index, args.seed)
    result = rank_lists(session, rows, args.k or session.options.visrank_topk, args.protocol)
    for q in result["queries"]:
        print(f"query {q['index']} (pid {q['pid']}): " + "  ".join(
            f"{n['label']} top-1 {'right' if n['ranked'] and n['ranked'][0]['correct'] else 'wrong'}"
            for n in q["networks"]))
    a = session.dm.augment
    scale = 128 / max(a.height, 1)
    return write_outputs(result, args.output, 128, max(16, int(round(a.width * scale))))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return tool_main("vkd-reid rank-list", __doc__ or "", argv, _add_args, _run)


__all__ = ["choose_queries", "main", "rank_lists", "render", "write_outputs"]
