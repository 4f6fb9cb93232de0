"""What every analysis of a run shares: the config, the dataset, the networks and their
per-frame features.

An :class:`AnalysisSession` is built once from ``--config-file``, one ``--weights`` per network
(ours, torchreid's or a reference folder; each network's architecture comes from its
checkpoint) and KEY VALUE overrides. Each network has a :class:`FrameBank`: every frame it
embeds is extracted once, with the evaluation's resize, normalisation, precision and model,
and kept (in memory, and once a tool has run in ``<output>/features/<label>.pt``, so that the
next analysis of the same output folder reuses it). A tracklet's embedding with any choice of frames is the mean of
its frames' features, as in the evaluation; the embedding of a whole tracklet (``all``) comes
from the evaluation's own extraction, streamed, so long tracklets are never held frame by
frame.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from vkd_torchreid import evaluation
from vkd_torchreid.apps.analysis.compare import numbered
from vkd_torchreid.apps.analysis.frame_bank import FrameBank
from vkd_torchreid.apps.common import config_of
from vkd_torchreid.data.base import MODES, evenly_indices, item_frames
from vkd_torchreid.data.manager import VKDDataManager
from vkd_torchreid.engine.embedder import Embedder
from vkd_torchreid.models import VKDNet, open_network
from vkd_torchreid.utils.device import place, resolve_device

logger = logging.getLogger(__name__)

#: Frames per gallery tracklet: a count (evenly sampled) or ``"all"``.
Frames = Any
FEATURES_DIR = "features"


def default_label(weights: str) -> str:
    """A network's name from its checkpoint path: the run folder of ``<run>/model/<file>``,
    else the file or folder name."""
    path = os.path.abspath(weights)
    parent = os.path.dirname(path)
    if os.path.isfile(path) and os.path.basename(parent) == "model":
        return os.path.basename(os.path.dirname(parent))
    return os.path.basename(path)


def _labels(weights: Sequence[str], labels: Sequence[str]) -> List[str]:
    if labels and len(labels) != len(weights):
        raise ValueError(f"--label given {len(labels)} times for {len(weights)} --weights: "
                         "give one label per network, in the same order, or none")
    return numbered(list(labels) or [default_label(w) for w in weights])


@dataclasses.dataclass
class Network:
    """A network under analysis."""

    label: str
    weights: str
    model: VKDNet


class AnalysisSession:
    """Config, dataset and networks of an analysis (see the module docstring).

    Args:
        cfg: a validated config (``data``, ``model``, ``video``, ``test`` sections).
        weights: one checkpoint per network.
        labels: their names (default: :func:`default_label`).
        output: the analysis folder (features are cached under ``output/features``; '' for
            memory only).
        dataset: the dataset to analyse (default: the first target).
        device: ``auto``, ``cpu``, ``cuda``...
        trust: allow pickled checkpoints.
        datamanager: reuse one (the demo's); default: built from ``cfg``.

    Raises:
        FileNotFoundError: missing weights or dataset files (named).
        ValueError: weights that do not fit (another architecture than ``model.name`` for
            weights that do not declare theirs), a bad label count or an unknown dataset.
    """

    def __init__(self, cfg: Any, weights: Sequence[str], labels: Sequence[str] = (),
                 output: str = "", dataset: str = "", device: str = "auto",
                 trust: bool = False, datamanager: Optional[VKDDataManager] = None) -> None:
        if not weights:
            raise ValueError("give at least one network (--weights)")
        self.cfg = cfg
        self.output = output
        self.device = resolve_device(device, bool(cfg.use_gpu))
        self.embedder = Embedder.from_config(cfg, self.device)
        self.options = self.embedder.options
        names = _labels(weights, labels)
        trust = trust or bool(cfg.model.trust_checkpoint)
        self.networks = [Network(n, w, self._network(w, trust)) for n, w in zip(names, weights)]
        self.dm = datamanager or VKDDataManager.from_config(cfg)
        self.dataset = dataset or self.dm.targets[0]
        if self.dataset not in self.dm.test_dataset:
            raise ValueError(f"--dataset {self.dataset!r} is not among the config's targets "
                             f"{list(self.dm.targets)} (set data.targets)")
        self.banks = [self._bank(net) for net in self.networks]
        #: Frame counts whose evenly sampled frames a whole-tracklet pass keeps (the
        #: evaluation's by default; the gallery curve adds its own).
        self.keep_counts = {self.embedder.seq_len}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AnalysisSession:
        cfg = config_of(args)
        return cls(cfg, args.weights, args.label, args.output, args.dataset, args.device,
                   args.trust_checkpoint)

    def _network(self, weights: str, trust: bool) -> VKDNet:
        m = self.cfg.model
        model = open_network(weights, default_arch=m.name, last_stride=m.last_stride,
                             trust=trust)
        logger.info("network %s from %s", model.arch, weights)
        return place(model.eval(), self.device, self.options.channels_last)

    def _bank(self, net: Network) -> FrameBank:
        st = os.stat(net.weights)
        a = self.dm.augment
        o = self.options
        key = hashlib.sha1(json.dumps({
            "weights": os.path.abspath(net.weights), "size": st.st_size,
            "mtime": st.st_mtime_ns, "arch": net.model.arch, "size_hw": [a.height, a.width],
            "mean": list(a.norm_mean), "std": list(a.norm_std), "amp": o.amp,
            "last_stride": self.cfg.model.last_stride}, sort_keys=True).encode()).hexdigest()
        cache = (os.path.join(self.output, FEATURES_DIR, f"{net.label}.pt")
                 if self.output else "")
        return FrameBank(net.model, self.embedder, cache, key)

    # ------------------------------------------------------------------ items
    @property
    def protocol(self) -> Any:
        return self.dm.protocols[self.dataset]

    def items(self, kind: str) -> List[tuple]:
        """The test items of a split: ``query``, ``gallery``, ``query_img``, ``gallery_img``."""
        return list(self.dm.test_dataset[self.dataset][kind] or [])

    def gallery_items(self, g_kind: str) -> List[tuple]:
        """The gallery of a protocol in ranking order (MARS' query tracklets first when the
        dataset puts them back into the gallery), as the Evaluator ranks it."""
        return self.dm.gallery_items(self.dataset, g_kind)

    def require_mode(self, mode: str, tool: str) -> None:
        """ValueError unless the dataset has protocol ``mode`` (``I2V``...)."""
        if mode not in self.protocol.modes:
            raise ValueError(f"{tool} needs the {mode} protocol; {self.dataset} has "
                             f"{list(self.protocol.modes)} (choose another --dataset)")

    # ------------------------------------------------------------------ features
    def embed(self, net: int, items: Sequence[tuple], frames: Frames = None) -> torch.Tensor:
        """``[T, D]`` embeddings of test items with network ``net``: tracklets with
        ``frames`` per tracklet (a count, evenly sampled; ``'all'``; None: the evaluation's
        setting), image items with their one frame. Normalised when ``test.normalize_feature``
        is on, as in the evaluation."""
        if frames is None:
            frames = "all" if self.embedder.sample_method == "all" else self.embedder.seq_len
        bank = self.banks[net]
        if not items:
            return bank.emb[:0]
        if frames == "all":
            emb = bank.whole_tracklets([item_frames(it) for it in items], self._keep)
        else:
            k = int(frames)
            emb = self._mean(bank, items, lambda n: evenly_indices(n, k))
        return self.embedder.normalized(emb)

    def _keep(self, n: int) -> List[int]:
        """The first frame and the evenly sampled frames of every count in ``keep_counts``."""
        return sorted({0, *(int(i) for k in self.keep_counts for i in evenly_indices(n, k))})

    def embed_picked(self, net: int, items: Sequence[tuple],
                     pick: Callable[[int], Sequence[int]]) -> torch.Tensor:
        """Like :meth:`embed` with the frames ``pick(n)`` of each tracklet of ``n`` frames
        (random draws, for instance); image items keep their frame."""
        return self.embedder.normalized(self._mean(self.banks[net], items, pick))

    @staticmethod
    def _mean(bank: FrameBank, items: Sequence[tuple],
              pick: Callable[[int], Sequence[int]]) -> torch.Tensor:
        """Mean features of the frames ``pick`` chooses per tracklet (an image item: its
        frame), as :class:`~vkd_torchreid.data.frames.TestFrames` pools them."""
        if not items:
            return bank.emb[:0]
        chosen = [[it[0]] if isinstance(it[0], str)
                  else [it[0][i] for i in pick(len(it[0]))] for it in items]
        return Embedder.pool(bank.frames([f for c in chosen for f in c]),
                             [len(c) for c in chosen])

    def first_frames(self, net: int, items: Sequence[tuple]) -> torch.Tensor:
        """``[T, D]`` features of the first frame of each item (the I2V queries of MARS and
        Duke), normalised as the evaluation does."""
        return self.embedder.normalized(self.banks[net].frames([item_frames(it)[0] for it in items]))

    def query_embeddings(self, net: int, mode: str) -> torch.Tensor:
        """The queries of protocol ``mode`` as the Evaluator embeds them."""
        q_kind = MODES[mode][0]
        return (self.first_frames(net, self.items(q_kind)) if q_kind == "query_img"
                else self.embed(net, self.items(q_kind)))

    def distances(self, q: torch.Tensor, g: torch.Tensor) -> np.ndarray:
        """``[Q, G]`` distances with ``test.dist_metric``."""
        return evaluation.compute_distance_matrix(q, g, metric=self.options.dist_metric)

    def ids(self, items: Sequence[tuple]) -> tuple:
        """(pids, camids) int64 arrays of items."""
        return (np.asarray([int(it[1]) for it in items], dtype=np.int64),
                np.asarray([int(it[2]) for it in items], dtype=np.int64))

    def save(self) -> None:
        """Keeps every network's new features in ``<output>/features`` for the next analysis
        (called once a tool has run)."""
        for bank in self.banks:
            bank.save()

    def extracted(self) -> Dict[str, int]:
        """Frames each network extracted in this process (the rest came from the cache)."""
        return {net.label: bank.extracted for net, bank in zip(self.networks, self.banks)}


__all__ = ["AnalysisSession", "FrameBank", "Frames", "Network", "default_label"]
