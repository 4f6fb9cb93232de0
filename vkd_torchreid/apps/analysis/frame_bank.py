"""The per-frame features of one network under analysis, each frame extracted once (see
:mod:`vkd_torchreid.apps.analysis.session`)."""
from __future__ import annotations

import logging
import os
from typing import Callable, Dict, Optional, Sequence

import torch

from vkd_torchreid.engine.embedder import Embedder
from vkd_torchreid.models import VKDNet
from vkd_torchreid.utils import checkpoint as ckpt_io

logger = logging.getLogger(__name__)


class FrameBank:
    """The per-frame embeddings of one network (see the module docstring).

    Args:
        model: in eval mode, on the embedder's device.
        embedder: the evaluation's way to embed items (loaders, precision, chunk).
        cache_file: where the features are kept between analyses ('' for memory only).
        key: what the features depend on; a cache file with another key is ignored.
    """

    def __init__(self, model: VKDNet, embedder: Embedder, cache_file: str = "",
                 key: str = "") -> None:
        self.model = model
        self.embedder = embedder
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
            self.model.eval()
            emb = self.embedder.items(self.model, [(p, -1, -1) for p in missing],
                                      tracklets=False, desc="analysis")
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
            loader = self.embedder.loader([(k, -1, -1) for k in missing], tracklets=True,
                                          sample_method="all")
            self.model.eval()
            kept: Dict[str, torch.Tensor] = {}
            for key, (_, feats) in zip(missing, self.embedder.iter_frames(
                    self.model, loader, "analysis")):  # one tracklet per batch
                self.whole[key] = feats.mean(1)[0].cpu()  # as extract() pools it
                for i in sorted(set(int(i) for i in keep(len(key)))) if keep else ():
                    if key[i] not in self.rows and key[i] not in kept:
                        kept[key[i]] = feats[0, i].cpu()
            self.extracted += sum(len(k) for k in missing)
            self.dirty = True
            if kept:
                self._append(list(kept), torch.stack(list(kept.values())))
        return torch.stack([self.whole[k] for k in keys]) if keys else self.emb[:0]
