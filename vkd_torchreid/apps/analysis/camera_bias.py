"""``vkd-reid camera-bias``: how much camera information the embeddings carry.

    vkd-reid camera-bias --config-file vkd_mars_r50 --weights teacher.pth.tar \\
        --weights student.pth.tar --output analysis/ [--k 10] [--protocol I2V]

Two measures, network by network:

- **Camera probe.** A linear camera classifier (multinomial logistic regression, L2-penalised,
  on standardised embeddings) is fitted on the frozen embeddings of the dataset's training
  tracklets and tested on its query and gallery tracklets (embedded as the evaluation does).
  Its accuracy stands next to the majority rate (the share of the test set's most frequent
  camera: what a classifier that ignores the embedding gets). Higher accuracy: more camera
  information is linearly readable from the embedding.
- **Same-camera neighbours.** For each query of a protocol, among the gallery items of other
  identities (junk, pid -1, left out), the share of its ``k`` nearest that come from the
  query's own camera, next to the chance rate (the share of those other-identity gallery items
  that are from the query's camera). A share above chance: the network ranks strangers seen
  by the same camera closer, which is the bias that hurts retrieval across cameras.

Datasets without camera ids (ATRW) are refused. Writes ``camera_bias.json`` (every number)
and ``camera_bias.png``.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from vkd_torchreid.apps.analysis.session import AnalysisSession
from vkd_torchreid.apps.analysis.tool import tool_main, write_result
from vkd_torchreid.data.base import MODES
from vkd_torchreid.utils.plots import save_figure, subplots

DEFAULT_K = 10
DEFAULT_L2 = 1e-3


def probe_accuracy(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor,
                   test_y: np.ndarray, l2: float = DEFAULT_L2) -> float:
    """Accuracy on ``test`` of a multinomial logistic regression fitted on ``train``
    (standardised with the training statistics; full-batch L-BFGS in float64; penalty
    ``l2 * ||W||^2``). Test labels absent from training count as errors."""
    classes = np.unique(train_y)
    if len(classes) < 2:
        raise ValueError(f"the camera probe needs training items from 2 cameras or more, "
                         f"got {classes.tolist()}")
    index = {int(c): i for i, c in enumerate(classes)}
    x = train_x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    y = torch.as_tensor([index[int(c)] for c in train_y])
    torch.manual_seed(0)
    linear = torch.nn.Linear(x.shape[1], len(classes)).double()
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1, max_iter=500, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x), y) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = linear((test_x.double() - mean) / std).argmax(1).numpy()
    return float(np.mean(classes[pred] == np.asarray(test_y)))


def same_camera_share(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                      q_camids: np.ndarray, g_camids: np.ndarray, k: int) -> Dict[str, float]:
    """Mean over queries of the share of the ``k`` nearest other-identity gallery items
    (pid -1 left out) from the query's camera, and the chance rate (the share of all of them
    from the query's camera). Queries without such items are skipped (``queries`` counts the
    rest)."""
    shares, chances = [], []
    for i in range(distmat.shape[0]):
        others = np.flatnonzero((g_pids != q_pids[i]) & (g_pids != -1))
        if others.size == 0:
            continue
        same = g_camids[others] == q_camids[i]
        order = np.argsort(distmat[i, others], kind="stable")[:k]
        shares.append(float(same[order].mean()))
        chances.append(float(same.mean()))
    if not shares:
        raise ValueError("no query has gallery items of other identities: cannot measure "
                         "same-camera neighbours")
    return {"share": float(np.mean(shares)), "chance": float(np.mean(chances)),
            "queries": len(shares)}


def camera_bias(session: AnalysisSession, k: int = DEFAULT_K, protocol: str = "I2V",
                l2: float = DEFAULT_L2) -> Dict[str, Any]:
    """Every number of both measures (see the module docstring).

    Raises:
        ValueError: a dataset without camera ids, a protocol it does not have, no query, or
            training items from one camera only.
    """
    name = session.dataset
    if not session.protocol.camera_ids:
        raise ValueError(f"{name} has no camera ids (its camid are derived views), so "
                         "camera-bias cannot measure camera information; use a dataset "
                         "with cameras (MARS, Duke, VeRi-776)")
    if k < 1:
        raise ValueError(f"--k {k}: expected a positive number of neighbours")
    session.require_mode(protocol, "camera-bias")
    train = list(session.dm.splits[name].train)
    test = session.items("query") + session.items("gallery")
    q_kind, g_kind = MODES[protocol]
    queries = session.items(q_kind)
    if not queries:
        raise ValueError(f"{name} has no {q_kind} items: nothing to rank")
    gallery = session.gallery_items(g_kind)
    _, train_cams = session.ids(train)
    _, test_cams = session.ids(test)
    qp, qc = session.ids(queries)
    gp, gc = session.ids(gallery)
    cams, counts = np.unique(test_cams, return_counts=True)
    networks = []
    for i, net in enumerate(session.networks):
        acc = probe_accuracy(session.embed(i, train), train_cams, session.embed(i, test),
                             test_cams, l2)
        g = session.embed(i, gallery)
        near = same_camera_share(session.distances(session.query_embeddings(i, protocol), g),
                                 qp, gp, qc, gc, k)
        networks.append({"label": net.label, "weights": os.path.abspath(net.weights),
                         "arch": net.model.arch, "probe_accuracy": acc,
                         "same_camera_share": near["share"], "chance_share": near["chance"],
                         "excess_over_chance": near["share"] - near["chance"]})
    return {"dataset": name, "protocol": protocol, "k": int(k), "l2": float(l2),
            "train_items": len(train), "test_items": len(test),
            "cameras": int(len(np.unique(np.concatenate([train_cams, test_cams])))),
            "majority_rate": float(counts.max() / counts.sum()),
            "test_cameras_unseen_in_training": int(np.isin(test_cams, train_cams,
                                                           invert=True).sum()),
            "queries": near["queries"], "networks": networks}


def plot(result: Dict[str, Any], path: str) -> str:
    """Probe accuracy against the majority rate; same-camera share against chance."""
    labels = [n["label"] for n in result["networks"]]
    fig, (a, b) = subplots(1, 2, figsize=(9, 3.6))
    colours = [f"C{i}" for i in range(len(labels))]
    a.bar(labels, [100 * n["probe_accuracy"] for n in result["networks"]], color=colours)
    a.axhline(100 * result["majority_rate"], color="k", ls="--", label="majority rate")
    a.set_ylabel("camera accuracy (%)")
    a.set_title("linear camera probe (test set)", fontsize=10)
    a.set_ylim(0, 100)
    a.legend(fontsize=8)
    b.bar(labels, [100 * n["same_camera_share"] for n in result["networks"]], color=colours)
    chance = float(np.mean([n["chance_share"] for n in result["networks"]]))
    b.axhline(100 * chance, color="k", ls="--", label="chance")
    b.set_ylabel("same camera (%)")
    b.set_title(f"{result['protocol']}: top-{result['k']} other-identity neighbours",
                fontsize=10)
    b.set_ylim(0, 100)
    b.legend(fontsize=8)
    fig.suptitle(f"{result['dataset']}: camera information in the embeddings", fontsize=10)
    return save_figure(fig, path)


def write_outputs(result: Dict[str, Any], out: str) -> Dict[str, str]:
    return write_result(result, out, "camera_bias", plot)


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, default=DEFAULT_K, help="neighbours per query")
    p.add_argument("--protocol", default="I2V", choices=sorted(MODES),
                   help="the queries and gallery of the neighbour measure")
    p.add_argument("--l2", type=float, default=DEFAULT_L2, help="the probe's weight penalty")


def _run(session: AnalysisSession, args: argparse.Namespace) -> Dict[str, str]:
    result = camera_bias(session, args.k, args.protocol, args.l2)
    print(f"majority rate {100 * result['majority_rate']:.1f}%")
    for n in result["networks"]:
        print(f"{n['label']}: camera probe {100 * n['probe_accuracy']:.1f}%  same-camera "
              f"top-{result['k']} {100 * n['same_camera_share']:.1f}% (chance "
              f"{100 * n['chance_share']:.1f}%)")
    return write_outputs(result, args.output)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return tool_main("vkd-reid camera-bias", __doc__ or "", argv, _add_args, _run)


__all__ = ["camera_bias", "main", "plot", "probe_accuracy", "same_camera_share",
           "write_outputs"]
