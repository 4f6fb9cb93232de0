"""The test path: extraction, the protocols, ranking, re-ranking, ranked lists, results.json.

One :class:`Evaluator` serves both engines' ``test``, ``--eval-only``, the demo's validation
and the tools. For each target it extracts the features of every split once (per-frame
features pooled per item; an item's first frame gives the image queries of MARS and Duke
without decoding them again) and derives every protocol of the dataset from them.

``results.json`` is written only here (:meth:`Evaluator.write_results`, through
:func:`results_record`); its layout is documented once, in ``docs/evaluation.md``.

Under torchrun each rank extracts a contiguous share of every split with rank 0's weights and
buffers; rank 0 gathers the shares in order, ranks and writes, and every rank gets its metrics
(so callbacks decide alike). The result equals a single process's evaluation.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from vkd_torchreid import evaluation
from vkd_torchreid.compat import re_ranking
from vkd_torchreid.data.base import MODES, first_frames, item_frames
from vkd_torchreid.data.io import read_image
from vkd_torchreid.engine.embedder import Embedder, EvalOptions
from vkd_torchreid.engine.extract import Features, concat
from vkd_torchreid.utils import distributed
from vkd_torchreid.utils.jsonio import write_json

logger = logging.getLogger(__name__)

__all__ = ["RESULTS_FILE", "DatasetResults", "EvalOptions", "Evaluator", "results_record"]

RESULTS_FILE = "results.json"
#: Per dataset and protocol: protocol -> metric -> value in [0, 1].
DatasetResults = Dict[str, Dict[str, float]]


def results_record(per_dataset: Dict[str, DatasetResults], stage: str, generation: int = 0,
                   epoch: int = 0, world_size: int = 1) -> Dict[str, Any]:
    """The ``results.json`` dict (see the module docstring)."""
    return {"stage": stage, "generation": int(generation), "epoch": int(epoch),
            "world_size": int(world_size), **per_dataset}


class Evaluator:
    """Evaluates a model on the targets of a data manager with their protocols.

    Args:
        datamanager: a :class:`vkd_torchreid.data.manager.VKDDataManager` (``targets``,
            ``test_loader``, ``test_dataset``, ``protocols``, ``test_meta``).
        embedder: how items are embedded (:class:`~vkd_torchreid.engine.embedder.Embedder`).
    """

    def __init__(self, datamanager: Any, embedder: Embedder) -> None:
        self.datamanager = datamanager
        self.embedder = embedder
        self.options = embedder.options
        self.device = embedder.device

    @classmethod
    def from_config(cls, cfg: Any, datamanager: Any,
                    device: Optional[torch.device] = None) -> Evaluator:
        return cls(datamanager, Embedder.from_config(cfg, device))

    # ------------------------------------------------------------------ features
    def _extract(self, model: nn.Module, loader: Any, desc: str) -> Features:
        return self.embedder.extract(model, loader, desc)

    def _split(self, model: nn.Module, name: str, kind: str) -> Features:
        """Features of one split (under torchrun: this rank's share extracted, all shares in
        order on rank 0; the share itself on the other ranks)."""
        desc = f"{name} {kind}"
        ctx = distributed.context()
        if not ctx.enabled:
            return self._extract(model, self.datamanager.test_loader[name][kind], desc)
        items = list(self.datamanager.test_dataset[name][kind])
        lo, hi = (len(items) * r // ctx.world_size for r in (ctx.rank, ctx.rank + 1))
        loader = self.datamanager.test_loader_of(items[lo:hi],
                                                 tracklets=not kind.endswith("_img"))
        part = self._extract(model, loader, desc) if loader is not None else None
        parts = distributed.gather_objects(part)
        if parts is None:
            return part if part is not None else _empty()
        out: Optional[Features] = None
        for p in parts:
            if p is not None:
                out = concat(out, p)
        return out if out is not None else _empty()

    def features(self, model: nn.Module, name: str) -> Dict[str, Features]:
        """Features of every split the protocol of ``name`` needs, each extracted once."""
        loaders = self.datamanager.test_loader[name]
        items = self.datamanager.test_dataset[name]
        feats: Dict[str, Features] = {}
        for kind in ("query", "gallery", "gallery_img"):
            if loaders.get(kind) is not None:
                feats[kind] = self._split(model, name, kind)
        if loaders.get("query_img") is not None:
            # MARS/Duke image queries are the first frames of the query tracklets: reuse them.
            if "query" in feats and list(items["query_img"]) == first_frames(items["query"]):
                q = feats["query"]
                feats["query_img"] = Features(q.first, q.first, q.pids, q.camids)
            elif list(items["query_img"]) == list(items.get("gallery_img") or []):
                feats["query_img"] = feats["gallery_img"]
            else:
                feats["query_img"] = self._split(model, name, "query_img")
        return {k: self.embedder.normalized_features(f) for k, f in feats.items()}

    # ------------------------------------------------------------------ protocols
    @torch.inference_mode()
    def evaluate(self, model: nn.Module, save_dir: str = "") -> Dict[str, DatasetResults]:
        """Metrics of every target with its protocol (model in eval mode, restored after).

        ``save_dir`` receives the ranked-list pictures when ``test.visrank`` is on.
        """
        was_training = model.training
        model.eval()
        ctx = distributed.context()
        if ctx.enabled:  # rank 0's BatchNorm statistics (weights are equal under DDP)
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, 0)
        try:
            out = {name: self.evaluate_dataset(model, name, save_dir)
                   for name in self.datamanager.targets}
        finally:
            model.train(was_training)
        if ctx.enabled:
            out = distributed.broadcast_object(out)
        for name, per_protocol in out.items():
            for protocol, metrics in per_protocol.items():
                logger.info("%s %-10s %s", name, protocol, "  ".join(
                    f"{k} {v:.1%}" for k, v in metrics.items()))
        return out

    def evaluate_dataset(self, model: nn.Module, name: str,
                         save_dir: str = "") -> DatasetResults:
        """Metrics of every protocol of dataset ``name``."""
        o = self.options
        protocol = self.datamanager.protocols[name]
        feats = self.features(model, name)
        if not distributed.context().is_main:
            return {}  # rank 0 ranks; evaluate() shares its metrics
        if protocol.junk == "atrw":
            meta = self.datamanager.test_meta(name)
            g = feats["gallery_img"]
            out = evaluation.atrw_plain_protocol(g.emb.numpy(), g.pids, meta["frame_group"],
                                                 meta["frame"], meta["query_type"],
                                                 ranks=o.ranks)
            return {f"I2I_{k}": v for k, v in out.items()}
        results: DatasetResults = {}
        for mode in protocol.modes:
            q_kind, g_kind = MODES[mode]
            q, g = feats[q_kind], feats[g_kind]
            if protocol.query_in_gallery:
                g = concat(feats["query" if g_kind == "gallery" else "query_img"], g)
            distmat = evaluation.compute_distance_matrix(q.emb, g.emb, metric=o.dist_metric)
            if o.rerank:
                qq = evaluation.compute_distance_matrix(q.emb, q.emb, metric=o.dist_metric)
                gg = evaluation.compute_distance_matrix(g.emb, g.emb, metric=o.dist_metric)
                distmat = re_ranking(distmat, qq, gg)
            results[mode] = evaluation.rank_all(distmat, q.pids, g.pids, q.camids, g.camids,
                                                ranks=o.ranks)
            if o.visrank and save_dir:
                self.visrank(name, mode, distmat, q, g,
                             os.path.join(save_dir, f"visrank_{name}_{mode}"))
        return results

    def visrank(self, name: str, mode: str, distmat: np.ndarray, q: Features, g: Features,
                folder: str) -> int:
        """One ranked-list picture per query (top ``test.visrank_topk``, junk left out) in
        ``folder``; returns how many were written."""
        q_kind, g_kind = MODES[mode]
        queries = list(self.datamanager.test_dataset[name][q_kind])
        gallery = self.datamanager.gallery_items(name, g_kind)
        for i, query in enumerate(queries):
            junk = (g.pids == q.pids[i]) & (g.camids == q.camids[i])
            cols = evaluation.top_k(distmat, i, self.options.visrank_topk, exclude=junk)
            ranked = [evaluation.RankedItem(read_image(item_frames(gallery[c])[0]),
                                            float(distmat[i, c]), bool(g.pids[c] == q.pids[i]),
                                            str(int(g.pids[c]))) for c in cols]
            evaluation.save_ranked_list(
                os.path.join(folder, f"{i:05d}_pid{int(q.pids[i])}.png"),
                read_image(item_frames(query)[0]), ranked)
        logger.info("ranked lists of %d %s %s queries in %s", len(queries), name, mode, folder)
        return len(queries)

    def write_results(self, per_dataset: Dict[str, DatasetResults], save_dir: str,
                      stage: str, generation: int = 0, epoch: int = 0,
                      world_size: int = 1) -> Dict[str, Any]:
        """Writes ``<save_dir>/results.json`` (atomically; rank 0 alone under torchrun);
        returns its content."""
        record = results_record(per_dataset, stage, generation, epoch, world_size)
        if distributed.context().is_main:
            write_json(record, os.path.join(save_dir, RESULTS_FILE))
        return record


def _empty() -> Features:
    return Features(torch.zeros(0, 0), torch.zeros(0, 0), np.zeros(0, np.int64),
                    np.zeros(0, np.int64))

