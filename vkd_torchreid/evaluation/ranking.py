"""Distance matrices, CMC and mAP (torchreid's and MARS' AP rules) and ATRW's plain protocol.

torchreid arg-sorts every gallery row and then walks the rows in Python. Here no row is
sorted: everything works on the few gallery items sharing the query's identity (true matches
and junk). Each match's position among the valid items is the number of row items closer
than it (one vectorised comparison of the row against the query's match distances) minus
the junk items closer than it; the CMC follows from the position of the first match.

Ties: equal distances are ordered by gallery column (what ``np.argsort(kind="stable")``
does). torchreid's ``np.argsort`` is not stable, so on tied distances the two may differ;
without ties they agree to float rounding. Distances are compared in the matrix's dtype.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor]
METRICS = ("cosine", "euclidean")
AP_MODES = ("standard", "mars")


class NoValidQueryError(AssertionError, ValueError):
    """No query has a true match in the gallery (an AssertionError as in torchreid)."""


def compute_distance_matrix(qf: ArrayLike, gf: ArrayLike, metric: str = "cosine") -> np.ndarray:
    """``[Q, G]`` float32 distances between query and gallery features, on their device.

    Args:
        qf, gf: ``[Q, D]`` and ``[G, D]`` features (torch tensors or numpy arrays).
        metric: ``"cosine"`` (1 - cosine similarity of L2-normalised features) or
            ``"euclidean"`` (squared euclidean distance, as torchreid computes it).

    Raises:
        ValueError: unknown ``metric``.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown distance metric {metric!r}; choose one of {METRICS}")
    q = torch.as_tensor(qf).float()
    g = torch.as_tensor(gf).float().to(q.device)
    with torch.no_grad():
        if metric == "cosine":
            dist = 1.0 - F.normalize(q, dim=1) @ F.normalize(g, dim=1).t()
        else:
            dist = (q.pow(2).sum(1, keepdim=True) + g.pow(2).sum(1)[None]).addmm_(
                q, g.t(), beta=1.0, alpha=-2.0)
    return dist.cpu().numpy().astype(np.float32, copy=False)


def _identity_groups(q_pids: np.ndarray, g_pids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Gallery columns sharing each query's identity: ``[Q, M]`` indices and validity mask."""
    order = np.argsort(g_pids, kind="stable")
    uniq, starts, counts = np.unique(g_pids[order], return_index=True, return_counts=True)
    if len(uniq) == 0:
        return np.zeros((len(q_pids), 0), np.int64), np.zeros((len(q_pids), 0), bool)
    where = np.minimum(np.searchsorted(uniq, q_pids), len(uniq) - 1)
    n = np.where(uniq[where] == q_pids, counts[where], 0)
    slot = np.arange(int(n.max(initial=0)))[None]
    in_group = slot < n[:, None]
    cols = order[np.where(in_group, starts[where][:, None] + slot, 0)]
    return np.where(in_group, cols, 0), in_group


def _threads() -> int:
    """Threads for ranking: torch's intra-op setting (``OMP_NUM_THREADS``) bounds it."""
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def _count_before(distmat: np.ndarray, rows: np.ndarray, pos_v: np.ndarray, pos_c: np.ndarray,
                  npos: np.ndarray, before: np.ndarray) -> None:
    """For each row in ``rows``: how many gallery items precede each true match, i.e. are
    closer, or equally close at a smaller column (written into ``before``)."""
    for i in rows:
        row, v = distmat[i], pos_v[i, :npos[i], None]
        less = np.count_nonzero(row < v, axis=1)
        upto = np.count_nonzero(row <= v, axis=1)
        for j in np.flatnonzero(upto - less > 1):  # equal distances: by gallery column
            less[j] += np.count_nonzero(row[:pos_c[i, j]] == v[j, 0])
        before[i, :len(less)] = less


def _match_ranks(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                 junk: Callable[[np.ndarray, np.ndarray], np.ndarray]
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """0-based positions among the valid gallery items of each query's true matches.

    Args:
        junk: ``(query rows [Q, 1], gallery columns [Q, M]) -> [Q, M]`` bool, which of the
            items with the query's identity to discard; items of other identities are valid.

    Returns:
        ``([Q, M] int64 ascending positions, padded with -1; [Q] number of true matches)``.
    """
    cols, in_group = _identity_groups(q_pids, g_pids)
    num_q, width = cols.shape
    is_junk = in_group & junk(np.arange(num_q)[:, None], cols)
    is_pos = in_group & ~is_junk
    npos = is_pos.sum(1)
    ranks = np.full((num_q, width), -1, dtype=np.int64)
    if width == 0:
        return ranks, npos
    vals = np.take_along_axis(distmat, cols, 1)
    order = np.lexsort((cols, vals, ~is_pos))  # true matches first, by (distance, column)
    pos_v, pos_c = np.take_along_axis(vals, order, 1), np.take_along_axis(cols, order, 1)
    # items of the whole row strictly before each match: counted by comparison, no sorting
    before = np.zeros((num_q, width), dtype=np.int64)
    rows = np.flatnonzero(npos)
    parts = max(1, min(_threads(), len(rows) // 64))
    if parts == 1:
        _count_before(distmat, rows, pos_v, pos_c, npos, before)
    else:  # numpy releases the GIL in comparisons and counts: rows in parallel
        with ThreadPoolExecutor(parts) as pool:
            list(pool.map(lambda r: _count_before(distmat, r, pos_v, pos_c, npos, before),
                          np.array_split(rows, parts)))
    # minus the junk items before each match
    jv, jc = vals[:, None, :], cols[:, None, :]
    pv, pc = pos_v[:, :, None], pos_c[:, :, None]
    junk_before = (is_junk[:, None, :] & ((jv < pv) | ((jv == pv) & (jc < pc)))).sum(2)
    valid = np.arange(width)[None] < npos[:, None]
    ranks[valid] = (before - junk_before)[valid]
    return ranks, npos


def _average_precision(ranks: np.ndarray, npos: np.ndarray, mode: str) -> np.ndarray:
    """Per-query AP from the sorted match positions (rows with at least one match).

    ``standard`` (torchreid): mean over matches j of precision ``(j+1)/(r_j+1)``.
    ``mars`` (MARS' official ``compute_AP``): trapezoid rule, each match adds
    ``(precision before it + precision at it) / 2 / n``, where the precision before the
    first item of the list is 1.
    """
    j = np.arange(ranks.shape[1], dtype=np.float64)[None]
    valid = j < npos[:, None]
    r = np.where(valid, ranks, 0).astype(np.float64)
    precision = (j + 1.0) / (r + 1.0)
    if mode == "mars":
        before = np.divide(j, r, out=np.ones_like(r), where=r > 0)
        precision = (before + precision) / 2.0
    return np.where(valid, precision, 0.0).sum(1) / npos


def _as_float_array(x: ArrayLike) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return arr if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float64)


def _rank_stats(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
                g_camids: ArrayLike) -> Tuple[np.ndarray, np.ndarray, int]:
    """(sorted match positions, match counts) of the valid queries, and the gallery size."""
    distmat = _as_float_array(distmat)
    qp, gp = np.asarray(q_pids).reshape(-1), np.asarray(g_pids).reshape(-1)
    qc, gc = np.asarray(q_camids).reshape(-1), np.asarray(g_camids).reshape(-1)
    if distmat.shape != (len(qp), len(gp)):
        raise ValueError(f"distmat of shape {distmat.shape} for {len(qp)} queries and "
                         f"{len(gp)} gallery items")
    ranks, npos = _match_ranks(distmat, qp, gp, lambda q, g: gc[g] == qc[q])
    keep = npos > 0
    if not keep.any():
        raise NoValidQueryError("Error: all query identities do not appear in gallery")
    if not keep.all():
        logger.warning("%d of %d queries have no true match in the gallery and were skipped",
                       int((~keep).sum()), len(keep))
    return ranks[keep], npos[keep], len(gp)


def _cmc(first: np.ndarray, max_rank: int) -> np.ndarray:
    hist = np.bincount(np.minimum(first, max_rank), minlength=max_rank + 1)[:max_rank]
    return (np.cumsum(hist) / len(first)).astype(np.float32)


def evaluate_rank(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike,
                  q_camids: ArrayLike, g_camids: ArrayLike, max_rank: int = 50,
                  use_metric_cuhk03: bool = False, use_cython: bool = True,
                  ap_mode: str = "standard") -> Tuple[np.ndarray, float]:
    """Drop-in for torchreid's ``evaluate_rank`` (Market-1501 rule), without sorting rows.

    Gallery items with the query's identity and camera are junk; queries without any true
    match are skipped. ``use_cython`` is ignored; ``use_metric_cuhk03=True`` falls back to
    torchreid's own (slow, Python) implementation via :mod:`vkd_torchreid.compat`.

    Args:
        ap_mode: ``"standard"`` (torchreid's AP) or ``"mars"`` (MARS' trapezoid AP).

    Returns:
        (CMC of length ``min(max_rank, num_gallery)`` as float32, mAP).

    Raises:
        NoValidQueryError: no query has a true match (an ``AssertionError``, like torchreid).
        ValueError: unknown ``ap_mode`` or shapes that do not fit.
    """
    del use_cython
    if ap_mode not in AP_MODES:
        raise ValueError(f"unknown ap_mode {ap_mode!r}; choose one of {AP_MODES}")
    if use_metric_cuhk03:
        if ap_mode != "standard":
            raise ValueError("use_metric_cuhk03 supports only ap_mode='standard'")
        from vkd_torchreid.compat import torchreid_evaluate_rank

        cmc, m_ap = torchreid_evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids,
                                            max_rank, True, False)
        return np.asarray(cmc, dtype=np.float32), float(m_ap)
    ranks, npos, num_g = _rank_stats(distmat, q_pids, g_pids, q_camids, g_camids)
    cmc = _cmc(ranks[:, 0], min(max_rank, num_g))
    return cmc, float(_average_precision(ranks, npos, ap_mode).mean())


def rank_all(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
             g_camids: ArrayLike, ranks: Sequence[int] = (1, 5, 10, 20)) -> Dict[str, float]:
    """``rank{r}`` for each r, ``mAP`` (torchreid's AP) and ``mAP_mars`` (MARS' trapezoid
    AP), all in [0, 1], from one ranking pass (Market-1501 junk rule)."""
    pos, npos, num_g = _rank_stats(distmat, q_pids, g_pids, q_camids, g_camids)
    cmc = _cmc(pos[:, 0], max(max(ranks, default=1), 1))
    out = {f"rank{r}": float(cmc[r - 1]) for r in ranks}
    out["mAP"] = float(_average_precision(pos, npos, "standard").mean())
    out["mAP_mars"] = float(_average_precision(pos, npos, "mars").mean())
    return out


def atrw_plain_protocol(features: ArrayLike, pids: ArrayLike, frame_group: ArrayLike,
                        frame: ArrayLike, query_type: ArrayLike, max_frame_gap: int = 3,
                        ranks: Sequence[int] = (1, 5, 10, 20)) -> Dict[str, Dict[str, float]]:
    """ATRW plain re-ID protocol: every test image queries all the other test images.

    Cosine distance of L2-normalised features. For a query, junk is itself and every image
    of the same tiger in the same ``frame_group`` at most ``max_frame_gap`` frames away;
    images with pid -1 are junk and never queries. ``"single"`` averages over queries whose
    ``query_type`` is ``"sing"``, ``"cross"`` over ``"multi"``; a set without any valid
    query is left out (with a warning).

    Returns:
        ``{"single": {"rank1", "rank5", ..., "mAP", "mAP_mars"}, "cross": {...}}`` with values
        in [0, 1] (the official figures are mAP, top-1 and top-5).
    """
    pid = np.asarray(pids).reshape(-1)
    group = np.asarray(frame_group).reshape(-1)
    fr = np.asarray(frame).reshape(-1).astype(np.int64)
    qtype = np.asarray(query_type).reshape(-1).astype(str)
    distmat = compute_distance_matrix(features, features, metric="cosine")
    gal = np.flatnonzero(pid != -1)

    def junk(q: np.ndarray, g: np.ndarray) -> np.ndarray:
        g = gal[g]
        near = (group[g] == group[q]) & (np.abs(fr[g] - fr[q]) <= max_frame_gap)
        return (g == q) | near

    pos, npos = _match_ranks(distmat[:, gal], pid, pid[gal], junk)
    out: Dict[str, Dict[str, float]] = {}
    for name, kind in (("single", "sing"), ("cross", "multi")):
        keep = (qtype == kind) & (pid != -1) & (npos > 0)
        if not keep.any():
            logger.warning("ATRW %s: no query with a true match; left out", name)
            continue
        cmc = _cmc(pos[keep, 0], max(max(ranks, default=1), 1))
        out[name] = {f"rank{r}": float(cmc[r - 1]) for r in ranks}
        out[name]["mAP"] = float(_average_precision(pos[keep], npos[keep], "standard").mean())
        out[name]["mAP_mars"] = float(_average_precision(pos[keep], npos[keep], "mars").mean())
    return out
