"""Search a gallery of embeddings: exact (torch) or approximate (faiss) cosine search.

    index = GalleryIndex.build(gallery_emb, pids, camids)           # exact, in torch
    index = GalleryIndex.build(gallery_emb, backend="faiss-ivf")    # pip install vkd_torchreid[search]
    scores, indices = index.search(query_emb, k=10)                 # [q, k] each, best first
    index.save("gallery_index"); index = GalleryIndex.load("gallery_index")

Scores are cosine similarities (embeddings are L2-normalised once, at build time). Exact
search multiplies in chunks of queries, at most 2^28 similarities (1 GB) at a time.
``faiss-flat`` is faiss's exact inner-product index; ``faiss-ivf`` an inverted-file index
(``nlist`` clusters trained on the gallery, ``nprobe`` of them visited per query), faster on
large galleries at some recall. An index may carry the identity of the network that embedded
its gallery (``network``: a hash of its weights, its architecture, its input settings), which
:meth:`GalleryIndex.check_network` compares with the network about to embed the queries.
An index is saved without pickle: ``index.json`` (what it is, and that identity), ``gallery.npz`` (embeddings as float16 or float32, ids, cameras, names) and, for faiss,
``faiss.index`` (``faiss.write_index``); the folder is written next to its destination and
renamed into place.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import zipfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from vkd_torchreid.utils.jsonio import read_json
from vkd_torchreid.utils.logs import one_line

BACKENDS = ("exact", "faiss-flat", "faiss-ivf")
FORMAT_VERSION = 1
META_FILE, ARRAYS_FILE, FAISS_FILE = "index.json", "gallery.npz", "faiss.index"
EXACT_CHUNK = 1024  # queries per matrix product of the exact search, at most
EXACT_BLOCK = 1 << 28  # similarities per product (1 GB of float32), whatever the gallery
_META_KEYS = {"count": int, "dim": int, "nlist": int, "nprobe": int}


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
    tracklet folders; all optional) travel with it so that results can be labelled, and so
    does ``network`` (optional): a JSON-able dict identifying the network and the input
    settings that made the embeddings (see :meth:`check_network`).
    """

    def __init__(self, embeddings: torch.Tensor, pids: np.ndarray, camids: np.ndarray,
                 backend: str, faiss_index: Any = None, nlist: int = 0,
                 nprobe: int = 0, names: Optional[Sequence[str]] = None,
                 network: Optional[Dict[str, Any]] = None) -> None:
        self.embeddings = embeddings
        self.pids, self.camids = pids, camids
        self.names = list(names) if names is not None else [""] * len(pids)
        self.backend = backend
        self.faiss_index = faiss_index
        self.nlist, self.nprobe = nlist, nprobe
        # as it reads back from index.json (tuples become lists), so that it compares equal
        self.network = json.loads(json.dumps(network)) if network is not None else None

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @classmethod
    def build(cls, embeddings: Any, pids: Optional[Sequence[int]] = None,
              camids: Optional[Sequence[int]] = None, backend: str = "exact",
              nlist: int = 0, nprobe: int = 16,
              names: Optional[Sequence[str]] = None,
              network: Optional[Dict[str, Any]] = None) -> GalleryIndex:
        """An index of ``embeddings`` ``[n, d]`` (tensor or array; normalised here).

        Args:
            backend: one of :data:`BACKENDS`.
            nlist: ``faiss-ivf`` clusters (0: ``4 sqrt(n)``, at most ``n / 39`` as faiss wants
                39 training points per cluster).
            nprobe: ``faiss-ivf`` clusters visited per query.
            network: the identity of the network that embedded the gallery (saved with the
                index; see :meth:`check_network`).

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
                   min(nprobe, lists) if lists else 0, names, network)

    def network_differences(self, network: Dict[str, Any]) -> List[str]:
        """``'KEY index-value vs given-value'`` for every entry of ``network`` the index
        records otherwise (long hashes shortened); empty when they agree."""
        network = json.loads(json.dumps(network))
        recorded = self.network or {}

        def show(value: Any) -> str:
            return f"{value[:12]}..." if isinstance(value, str) and len(value) > 16 else repr(value)

        return [f"{key} {show(recorded.get(key))} vs {show(value)}"
                for key, value in network.items() if recorded.get(key) != value]

    def check_network(self, network: Dict[str, Any], where: str = "the index") -> None:
        """Refuses queries embedded by another network than the gallery's.

        Args:
            network: the identity of the network about to embed the queries, in the form the
                index was built with.
            where: how to name the index in the message (its folder).

        Raises:
            ValueError: the index records no network (one line), or another one: the message
                lists every difference (weights hash, architecture, input settings).
        """
        if self.network is None:
            raise ValueError(f"{where} does not record the network that embedded its gallery, "
                             "so queries cannot be checked against it: build it again")
        diffs = self.network_differences(network)
        if diffs:
            raise ValueError(f"{where} was embedded by another network or with other input "
                             f"settings ({'; '.join(diffs)}; index vs now): its matches "
                             "would be meaningless")

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
            meta = {"format": FORMAT_VERSION, "backend": self.backend, "count": len(self),
                    "dim": self.dim, "nlist": self.nlist, "nprobe": self.nprobe,
                    "dtype": str(emb.dtype)}
            if self.network is not None:
                meta["network"] = self.network
            with open(os.path.join(tmp, META_FILE), "w", encoding="utf-8") as fh:
                json.dump(meta, fh, indent=1)
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
            FileNotFoundError: no index there. ValueError: a file that cannot be read or does
            not match its description (one line naming it).
        """
        meta_path = os.path.join(folder, META_FILE)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"no gallery index in {folder} (expected {META_FILE})")
        meta = read_json(meta_path)  # a broken file: one line naming it, with line and column
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION \
                or meta.get("backend") not in BACKENDS:
            meta = meta if isinstance(meta, dict) else {}
            raise ValueError(f"{meta_path}: format {meta.get('format')!r} / backend "
                             f"{meta.get('backend')!r} is not one this version reads")
        for key, kind in _META_KEYS.items():
            if isinstance(meta.get(key), bool) or not isinstance(meta.get(key), kind):
                raise ValueError(f"{meta_path}: {key} is {json.dumps(meta.get(key))}, expected "
                                 f"an integer")
        network = meta.get("network")
        if network is not None and not isinstance(network, dict):
            raise ValueError(f"{meta_path}: network is {json.dumps(network)}, expected a mapping")
        arrays_path = os.path.join(folder, ARRAYS_FILE)
        try:
            with np.load(arrays_path, allow_pickle=False) as arrays:
                emb = torch.from_numpy(arrays["embeddings"].astype(np.float32))
                pids, camids = arrays["pids"], arrays["camids"]
                names = arrays["names"].tolist() if "names" in arrays else None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{arrays_path}: not the arrays of a gallery index "
                             f"({type(exc).__name__}: {one_line(exc)})") from None
        if tuple(emb.shape) != (meta["count"], meta["dim"]):
            raise ValueError(f"{folder}: {ARRAYS_FILE} holds {tuple(emb.shape)} embeddings, "
                             f"{META_FILE} says ({meta['count']}, {meta['dim']})")
        if pids.shape != (meta["count"],) or camids.shape != (meta["count"],):
            raise ValueError(f"{arrays_path}: {pids.shape[0] if pids.ndim else 0} pids and "
                             f"{camids.shape[0] if camids.ndim else 0} camids for "
                             f"{meta['count']} embeddings")
        index = None
        if meta["backend"] != "exact":
            faiss_path = os.path.join(folder, FAISS_FILE)
            try:
                index = _faiss().read_index(faiss_path)
            except RuntimeError as exc:  # faiss reports every unreadable file so
                raise ValueError(f"{faiss_path}: not a faiss index "
                                 f"({str(exc).strip().splitlines()[-1]})") from None
            if index.ntotal != meta["count"]:
                raise ValueError(f"{folder}: {FAISS_FILE} holds {index.ntotal} vectors, "
                                 f"{META_FILE} says {meta['count']}")
            if meta["nprobe"]:
                index.nprobe = meta["nprobe"]
        return cls(emb, pids, camids, meta["backend"], index, meta["nlist"], meta["nprobe"],
                   names, network)
