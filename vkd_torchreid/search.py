"""Search a gallery of embeddings: exact (torch) or approximate (faiss) cosine search.

    index = GalleryIndex.build(gallery_emb, pids, camids)           # exact, in torch
    index = GalleryIndex.build(gallery_emb, backend="faiss-ivf")    # pip install vkd_torchreid[search]
    scores, indices = index.search(query_emb, k=10)                 # [q, k] each, best first
    index.save("gallery_index"); index = GalleryIndex.load("gallery_index")

Scores are cosine similarities (embeddings are L2-normalised once, at build time). Exact
search multiplies in chunks of queries, at most 2^28 similarities (1 GB) at a time.
``faiss-flat`` is faiss's exact inner-product index; ``faiss-ivf`` an inverted-file index
(``nlist`` clusters trained on the gallery, ``nprobe`` of them visited per query), faster on
large galleries at some recall. An index is saved without pickle: ``index.json`` (what it
is), ``gallery.npz`` (embeddings as float16 or float32, ids, cameras, names) and, for faiss,
``faiss.index`` (``faiss.write_index``); the folder is written next to its destination and
renamed into place.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

BACKENDS = ("exact", "faiss-flat", "faiss-ivf")
FORMAT_VERSION = 1
META_FILE, ARRAYS_FILE, FAISS_FILE = "index.json", "gallery.npz", "faiss.index"
EXACT_CHUNK = 1024  # queries per matrix product of the exact search, at most
EXACT_BLOCK = 1 << 28  # similarities per product (1 GB of float32), whatever the gallery


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("the faiss backends need faiss-cpu: pip install "
                          "'vkd_torchreid[search]' (or use backend='exact')") from exc
    return faiss


def _normalized(x: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).detach().float().cpu()
    if t.dim() != 2:
        raise ValueError(f"{what}: expected a [n, d] matrix, got shape {tuple(t.shape)}")
    return F.normalize(t, dim=1)


class GalleryIndex:
    """A gallery of L2-normalised embeddings, searchable by cosine similarity.

    Build it with :meth:`build` or :meth:`load`; ``pids``, ``camids`` and ``names`` (e.g. the
    tracklet folders; all optional) travel with it so that results can be labelled.
    """

    def __init__(self, embeddings: torch.Tensor, pids: np.ndarray, camids: np.ndarray,
                 backend: str, faiss_index: Any = None, nlist: int = 0,
                 nprobe: int = 0, names: Optional[Sequence[str]] = None) -> None:
        self.embeddings = embeddings
        self.pids, self.camids = pids, camids
        self.names = list(names) if names is not None else [""] * len(pids)
        self.backend = backend
        self.faiss_index = faiss_index
        self.nlist, self.nprobe = nlist, nprobe

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @classmethod
    def build(cls, embeddings: Any, pids: Optional[Sequence[int]] = None,
              camids: Optional[Sequence[int]] = None, backend: str = "exact",
              nlist: int = 0, nprobe: int = 16,
              names: Optional[Sequence[str]] = None) -> GalleryIndex:
        """An index of ``embeddings`` ``[n, d]`` (tensor or array; normalised here).

        Args:
            backend: one of :data:`BACKENDS`.
            nlist: ``faiss-ivf`` clusters (0: ``4 sqrt(n)``, at most ``n / 39`` as faiss wants
                39 training points per cluster).
            nprobe: ``faiss-ivf`` clusters visited per query.

        Raises:
            ValueError: an empty gallery, a bad shape, a bad backend or labels of another
                length.
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
        emb = _normalized(embeddings, "gallery embeddings")
        n = emb.shape[0]
        if n == 0:
            raise ValueError("the gallery is empty: nothing to search")
        labels = []
        for name, values in (("pids", pids), ("camids", camids)):
            arr = np.full(n, -1, np.int64) if values is None else np.asarray(values, np.int64)
            if arr.shape != (n,):
                raise ValueError(f"{name}: expected {n} values (one per gallery embedding), "
                                 f"got shape {arr.shape}")
            labels.append(arr)
        if names is not None and len(names) != n:
            raise ValueError(f"names: expected {n} values (one per gallery embedding), "
                             f"got {len(names)}")
        index, lists = None, 0
        if backend != "exact":
            faiss = _faiss()
            data = np.ascontiguousarray(emb.numpy(), dtype=np.float32)
            if backend == "faiss-flat":
                index = faiss.IndexFlatIP(emb.shape[1])
            else:
                lists = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(emb.shape[1]), emb.shape[1], lists,
                                           faiss.METRIC_INNER_PRODUCT)
                # faiss wants 30-256 training points per cluster; more only costs time
                train = data if n <= 64 * lists else data[np.random.default_rng(0).choice(
                    n, 64 * lists, replace=False)]
                index.train(train)
                index.nprobe = min(nprobe, lists)
            index.add(data)
        return cls(emb, labels[0], labels[1], backend, index, lists,
                   min(nprobe, lists) if lists else 0, names)

    def search(self, queries: Any, k: int = 10) -> Tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most similar gallery items of each query: cosine ``scores [q, k]`` and
        gallery ``indices [q, k]`` (int64), best first (``k`` is capped at the gallery size;
        an IVF search may return fewer than ``k`` hits, padded with score -inf, index -1)."""
        q = _normalized(queries, "queries")
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[1]} but the gallery "
                             f"embeddings have {self.dim}")
        if k < 1:
            raise ValueError(f"k={k}: expected at least 1")
        k = min(k, len(self))
        if self.faiss_index is not None:
            scores, idx = self.faiss_index.search(np.ascontiguousarray(q.numpy()), k)
            scores = torch.from_numpy(scores)
            idx = torch.from_numpy(idx).long()
            return scores.masked_fill(idx < 0, float("-inf")), idx
        out_s, out_i = [], []
        chunk = max(1, min(EXACT_CHUNK, EXACT_BLOCK // len(self)))
        for start in range(0, q.shape[0], chunk):
            sims = q[start:start + chunk] @ self.embeddings.T
            s, i = sims.topk(k, dim=1)
            out_s.append(s)
            out_i.append(i)
        if not out_s:
            return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)
        return torch.cat(out_s), torch.cat(out_i)

    def save(self, folder: str, float16: bool = False) -> str:
        """Writes the index into ``folder`` (replaced as a whole; no pickle anywhere)."""
        parent = os.path.dirname(os.path.abspath(folder))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".gallery-index-", dir=parent)
        try:
            emb = self.embeddings.numpy().astype(np.float16 if float16 else np.float32)
            np.savez(os.path.join(tmp, ARRAYS_FILE), embeddings=emb, pids=self.pids,
                     camids=self.camids, names=np.array(self.names, dtype=np.str_))
            if self.faiss_index is not None:
                _faiss().write_index(self.faiss_index, os.path.join(tmp, FAISS_FILE))
            with open(os.path.join(tmp, META_FILE), "w", encoding="utf-8") as fh:
                json.dump({"format": FORMAT_VERSION, "backend": self.backend, "count": len(self),
                           "dim": self.dim, "nlist": self.nlist, "nprobe": self.nprobe,
                           "dtype": str(emb.dtype)}, fh, indent=1)
            if os.path.isdir(folder):
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    @classmethod
    def load(cls, folder: str) -> GalleryIndex:
        """An index written by :meth:`save`.

        Raises:
            FileNotFoundError: no index there. ValueError: a file that does not match its
            description.
        """
        meta_path = os.path.join(folder, META_FILE)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"no gallery index in {folder} (expected {META_FILE})")
        with open(meta_path, encoding="utf-8") as fh:
            meta = json.load(fh)
        if meta.get("format") != FORMAT_VERSION or meta.get("backend") not in BACKENDS:
            raise ValueError(f"{meta_path}: format {meta.get('format')!r} / backend "
                             f"{meta.get('backend')!r} is not one this version reads")
        with np.load(os.path.join(folder, ARRAYS_FILE), allow_pickle=False) as arrays:
            emb = torch.from_numpy(arrays["embeddings"].astype(np.float32))
            pids, camids = arrays["pids"], arrays["camids"]
            names = arrays["names"].tolist() if "names" in arrays else None
        if tuple(emb.shape) != (meta["count"], meta["dim"]):
            raise ValueError(f"{folder}: {ARRAYS_FILE} holds {tuple(emb.shape)} embeddings, "
                             f"{META_FILE} says ({meta['count']}, {meta['dim']})")
        index = None
        if meta["backend"] != "exact":
            index = _faiss().read_index(os.path.join(folder, FAISS_FILE))
            if index.ntotal != meta["count"]:
                raise ValueError(f"{folder}: {FAISS_FILE} holds {index.ntotal} vectors, "
                                 f"{META_FILE} says {meta['count']}")
            if meta["nprobe"]:
                index.nprobe = meta["nprobe"]
        return cls(emb, pids, camids, meta["backend"], index, meta["nlist"], meta["nprobe"],
                   names)
