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
from vkd_torchreid.apps.common import (
    add_config_arguments,
    command_parser,
    config_of,
    guarded,
    parse,
)
from vkd_torchreid.data.base import MODES, evenly_indices, item_frames
from vkd_torchreid.data.manager import VKDDataManager
from vkd_torchreid.engine.evaluator import EvalOptions
from vkd_torchreid.engine.extract import extract, iter_frame_features
from vkd_torchreid.models import VKDNet, network_from_weights
from vkd_torchreid.utils import checkpoint as ckpt_io
from vkd_torchreid.utils.device import resolve_device
from vkd_torchreid.utils.jsonio import write_json

logger = logging.getLogger(__name__)

#: Frames per gallery tracklet: a count (evenly sampled) or ``"all"``.
Frames = Any
FEATURES_DIR = "features"


def add_session_args(parser: argparse.ArgumentParser) -> None:
    """The arguments every analysis takes (``--config-file``, ``--weights``..., overrides)."""
    parser.add_argument("--weights", action="append", required=True,
                        help="a network's checkpoint (ours, torchreid's or a reference "
                             "folder); once per network, e.g. the teacher then the student")
    parser.add_argument("--label", action="append", default=[],
                        help="a network's name in the pictures (once per --weights, in order; "
                             "default: its run folder's name)")
    parser.add_argument("--output", required=True, help="the folder for the PNG and the JSON")
    parser.add_argument("--dataset", default="",
                        help="the dataset to analyse (default: the first of data.targets, "
                             "else of data.sources)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow pickled objects in the checkpoints (trusted files only)")
    add_config_arguments(parser)


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


class FrameBank:
    """The per-frame embeddings of one network (see the module docstring).

    Args:
        model: in eval mode, on ``device``.
        datamanager: gives the test loaders (transform, batch size, workers).
        options: the evaluation's extraction settings (precision, channels-last, chunk).
        cache_file: where the features are kept between analyses ('' for memory only).
        key: what the features depend on; a cache file with another key is ignored.
    """

    def __init__(self, model: VKDNet, datamanager: VKDDataManager, options: EvalOptions,
                 device: torch.device, cache_file: str = "", key: str = "") -> None:
        self.model = model
        self.dm = datamanager
        self.options = options
        self.device = device
        self.cache_file = cache_file
        self.key = key
        self.rows: Dict[str, int] = {}  # frame path -> row of the buffer
        self._buf = torch.zeros(0, model.feature_dim)  # rows beyond len(rows) are spare
        self.whole: Dict[tuple, torch.Tensor] = {}  # tracklet frames -> mean of all frames
        self.extracted = 0  # frames this process extracted (not read from the cache)
        self.dirty = False  # holds features the cache file does not
        if cache_file and os.path.isfile(cache_file):
            self._load()

    def _load(self) -> None:
        try:
            state = torch.load(self.cache_file, map_location="cpu", weights_only=True)
        except Exception as exc:  # a broken cache is recomputed, never trusted
            logger.warning("ignoring the feature cache %s: %s", self.cache_file, exc)
            return
        if state.get("key") != self.key:
            logger.info("feature cache %s is for other weights or settings: recomputed",
                        self.cache_file)
            return
        self.rows = {p: i for i, p in enumerate(state["paths"])}
        self._buf = state["emb"]
        self.whole = {tuple(k): v for k, v in zip(state["whole_keys"], state["whole"])}
        logger.info("feature cache %s: %d frames, %d whole tracklets", self.cache_file,
                    len(self.rows), len(self.whole))

    @property
    def emb(self) -> torch.Tensor:
        """``[frames, D]``: the features of every frame seen, in row order."""
        return self._buf[:len(self.rows)]

    def _append(self, paths: Sequence[str], emb: torch.Tensor) -> None:
        """New rows for frames not seen yet; the buffer doubles when full, so adding frames
        in many small calls (random draws) costs no copy of the whole bank each time."""
        start, end = len(self.rows), len(self.rows) + len(paths)
        if end > self._buf.shape[0]:
            grown = torch.empty(max(end, 2 * self._buf.shape[0]), self._buf.shape[1],
                                dtype=emb.dtype)
            grown[:start] = self._buf[:start]
            self._buf = grown
        self._buf[start:end] = emb
        self.rows.update((p, start + i) for i, p in enumerate(paths))

    def save(self) -> None:
        """Writes the features to the cache file (atomically), if it lacks any."""
        if not self.cache_file or not self.dirty:
            return
        keys = list(self.whole)
        # a clone: torch.save of a view would write the buffer's spare rows too
        ckpt_io.atomic_save({"key": self.key, "paths": list(self.rows), "emb": self.emb.clone(),
                             "whole_keys": [list(k) for k in keys],
                             "whole": torch.stack([self.whole[k] for k in keys]) if keys
                             else torch.zeros(0, self.emb.shape[1])}, self.cache_file)

    def frames(self, paths: Sequence[str]) -> torch.Tensor:
        """``[n, D]`` features of the frames ``paths`` (extracting those not seen yet)."""
        missing = list(dict.fromkeys(p for p in paths if p not in self.rows))
        if missing:
            o = self.options
            loader = self.dm.test_loader_of([(p, -1, -1) for p in missing], tracklets=False)
            self.model.eval()
            emb = extract(self.model, loader, self.device, o.amp, o.channels_last, o.chunk,
                          o.progress, "analysis").emb
            self._append(missing, emb)
            self.extracted += len(missing)
            self.dirty = True
        return self.emb[[self.rows[p] for p in paths]]

    def whole_tracklets(self, tracklets: Sequence[Sequence[str]],
                        keep: Optional[Callable[[int], Sequence[int]]] = None) -> torch.Tensor:
        """``[T, D]``: the mean over all frames of each tracklet (the evaluation's
        ``video.sample_method all``, streamed tracklet by tracklet). The features of the frames
        ``keep(n)`` of a tracklet of ``n`` frames are kept as well, so that later choices of
        frames need no second pass."""
        keys = [tuple(t) for t in tracklets]
        missing = list(dict.fromkeys(k for k in keys if k not in self.whole))
        if missing:
            o = self.options
            loader = self.dm.test_loader_of([(k, -1, -1) for k in missing], tracklets=True,
                                            sample_method="all")
            self.model.eval()
            kept: Dict[str, torch.Tensor] = {}
            for key, (_, feats) in zip(missing, iter_frame_features(
                    self.model, loader, self.device, o.amp, o.channels_last, o.chunk,
                    o.progress, "analysis")):  # one tracklet per batch
                self.whole[key] = feats.mean(1)[0].cpu()  # as extract() pools it
                for i in sorted(set(int(i) for i in keep(len(key)))) if keep else ():
                    if key[i] not in self.rows and key[i] not in kept:
                        kept[key[i]] = feats[0, i].cpu()
            self.extracted += sum(len(k) for k in missing)
            self.dirty = True
            if kept:
                self._append(list(kept), torch.stack(list(kept.values())))
        return torch.stack([self.whole[k] for k in keys]) if keys else self.emb[:0]


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
        self.options = EvalOptions.from_config(cfg)
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
        self.keep_counts = {self.dm.sampling.test_seq_len}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AnalysisSession:
        cfg = config_of(args)
        return cls(cfg, args.weights, args.label, args.output, args.dataset, args.device,
                   args.trust_checkpoint)

    def _network(self, weights: str, trust: bool) -> VKDNet:
        m = self.cfg.model
        model = network_from_weights(weights, m.name, m.last_stride, trust).to(self.device)
        if self.options.channels_last:
            model = model.to(memory_format=torch.channels_last)
        logger.info("network %s from %s", model.arch, weights)
        return model.eval()

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
        return FrameBank(net.model, self.dm, o, self.device, cache, key)

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
        items = self.items(g_kind)
        if self.protocol.query_in_gallery:
            items = self.items("query" if g_kind == "gallery" else "query_img") + items
        return items

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
            frames = ("all" if self.cfg.video.sample_method == "all"
                      else self.dm.sampling.test_seq_len)
        bank = self.banks[net]
        if not items:
            return bank.emb[:0]
        if frames == "all":
            emb = bank.whole_tracklets([item_frames(it) for it in items], self._keep)
        else:
            k = int(frames)
            emb = self._mean(bank, items, lambda n: evenly_indices(n, k))
        return self._normalized(emb)

    def _keep(self, n: int) -> List[int]:
        """The first frame and the evenly sampled frames of every count in ``keep_counts``."""
        return sorted({0, *(int(i) for k in self.keep_counts for i in evenly_indices(n, k))})

    def embed_picked(self, net: int, items: Sequence[tuple],
                     pick: Callable[[int], Sequence[int]]) -> torch.Tensor:
        """Like :meth:`embed` with the frames ``pick(n)`` of each tracklet of ``n`` frames
        (random draws, for instance); image items keep their frame."""
        return self._normalized(self._mean(self.banks[net], items, pick))

    def _normalized(self, emb: torch.Tensor) -> torch.Tensor:
        if self.options.normalize_feature:
            emb = torch.nn.functional.normalize(emb, dim=1)
        return emb

    @staticmethod
    def _mean(bank: FrameBank, items: Sequence[tuple],
              pick: Callable[[int], Sequence[int]]) -> torch.Tensor:
        """Mean features of the frames ``pick`` chooses per tracklet (an image item: its
        frame), as :class:`~vkd_torchreid.data.frames.TestFrames` pools them."""
        if not items:
            return bank.emb[:0]
        chosen = [[it[0]] if isinstance(it[0], str)
                  else [it[0][i] for i in pick(len(it[0]))] for it in items]
        flat = bank.frames([f for c in chosen for f in c])
        counts = torch.tensor([len(c) for c in chosen])
        owner = torch.repeat_interleave(torch.arange(len(chosen)), counts)
        out = torch.zeros(len(chosen), flat.shape[1]).index_add_(0, owner, flat)
        return out / counts[:, None].to(out.dtype)

    def first_frames(self, net: int, items: Sequence[tuple]) -> torch.Tensor:
        """``[T, D]`` features of the first frame of each item (the I2V queries of MARS and
        Duke), normalised as the evaluation does."""
        return self._normalized(self.banks[net].frames([item_frames(it)[0] for it in items]))

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


def tool_main(prog: str, doc: str, argv: Optional[Sequence[str]],
              add_args: Callable[[argparse.ArgumentParser], None],
              run: Callable[[AnalysisSession, argparse.Namespace], Dict[str, str]]) -> int:
    """The ``main`` of an analysis subcommand: the shared arguments plus ``add_args``, a
    session, ``run`` (returns the files it wrote); bad input is one ``error:`` line, exit 2."""
    parser = command_parser(prog, doc)
    add_session_args(parser)
    add_args(parser)

    def main() -> int:
        args = parse(parser, argv)
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(message)s")
        session = AnalysisSession.from_args(args)
        paths = run(session, args)
        session.save()
        print("wrote " + ", ".join(paths.values()))
        return 0

    return guarded(main)


def write_result(result: Dict[str, Any], out: str, name: str,
                 plot: Callable[[Dict[str, Any], str], str]) -> Dict[str, str]:
    """Writes ``<out>/<name>.json`` (every number) and ``<out>/<name>.png`` (``plot``)."""
    paths = {"json": os.path.join(out, f"{name}.json"), "png": os.path.join(out, f"{name}.png")}
    write_json(result, paths["json"])
    plot(result, paths["png"])
    return paths


__all__ = ["AnalysisSession", "FrameBank", "Network", "add_session_args", "default_label",
           "tool_main", "write_result"]
