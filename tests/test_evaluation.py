"""vkd_torchreid.evaluation: agreement with torchreid, hand-computed values, ATRW protocol."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from vkd_torchreid import evaluation
from vkd_torchreid.compat import torchreid_evaluate_rank
from vkd_torchreid.evaluation import (
    atrw_plain_protocol,
    compute_distance_matrix,
    evaluate_rank,
    rank_all,
)


def random_case(seed: int, num_q: int, num_g: int, ids: int, cams: int, ties: bool = False):
    """Random matrix; some query ids are absent from the gallery, some only in the same cam."""
    rng = np.random.RandomState(seed)
    g_pids = rng.randint(0, ids, num_g)
    g_cams = rng.randint(0, cams, num_g)
    q_pids = rng.randint(0, ids + 5, num_q)  # ids >= `ids` never appear in the gallery
    q_cams = rng.randint(0, cams, num_q)
    if ties:
        distmat = rng.randint(0, 4, (num_q, num_g)).astype(np.float32)
    else:
        distmat = rng.rand(num_q, num_g).astype(np.float32)
    return distmat, q_pids, g_pids, q_cams, g_cams


def reference_loop(distmat, q_pids, g_pids, q_cams, g_cams, max_rank):
    """Straightforward per-query loop: stable order, junk removed; both AP rules.

    The trapezoid AP follows MARS' official ``compute_AP`` step by step.
    """
    cmcs, aps, aps_mars = [], [], []
    for i in range(len(q_pids)):
        order = np.argsort(distmat[i], kind="stable")
        junk = (g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i])
        good = (g_pids[order] == q_pids[i])[~junk]
        if not good.any():
            continue
        n_good = good.sum()
        cmc = np.zeros(max_rank)
        cmc[np.flatnonzero(good)[0]:] = 1
        cmcs.append(cmc)
        hits, ap, ap_mars = 0, 0.0, 0.0
        old_recall, old_precision = 0.0, 1.0
        for pos, is_good in enumerate(good):
            hits += int(is_good)
            precision = hits / (pos + 1)
            recall = hits / n_good
            if is_good:
                ap += precision / n_good
            ap_mars += (recall - old_recall) * (old_precision + precision) / 2
            old_recall, old_precision = recall, precision
            if hits == n_good:
                break
        aps.append(ap)
        aps_mars.append(ap_mars)
    return np.mean(cmcs, 0), float(np.mean(aps)), float(np.mean(aps_mars))


@pytest.mark.parametrize("seed,num_q,num_g,ids,cams", [
    (0, 40, 300, 30, 6), (1, 60, 200, 80, 2), (2, 25, 500, 10, 8), (3, 50, 120, 40, 2),
])
def test_matches_torchreid(seed, num_q, num_g, ids, cams):
    case = random_case(seed, num_q, num_g, ids, cams)
    cmc, m_ap = evaluate_rank(*case, max_rank=20)
    ref_cmc, ref_map = torchreid_evaluate_rank(*case, max_rank=20, use_cython=False)
    assert cmc.dtype == np.float32 and cmc.shape == (20,)
    np.testing.assert_allclose(cmc, ref_cmc, atol=1e-6)
    assert abs(m_ap - ref_map) < 1e-6


@pytest.fixture()
def two_threads():
    """Ranking splits the queries over torch's intra-op threads (the tests run with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
def test_matches_torchreid_medium_matrix(threads, request):
    """The one larger comparison (about 1 s): MARS-like ids and cameras, query in gallery;
    200 queries, ranked in one thread and in two."""
    from vkd_torchreid.evaluation import ranking

    if threads == 2:
        request.getfixturevalue("two_threads")
    assert ranking._threads() == threads
    rng = np.random.RandomState(7)
    g_pids, g_cams = rng.randint(0, 150, 3000), rng.randint(0, 6, 3000)
    q_idx = rng.choice(3000, 200, replace=False)
    distmat = rng.rand(200, 3000).astype(np.float32)
    case = (distmat, g_pids[q_idx], g_pids, g_cams[q_idx], g_cams)
    cmc, m_ap = evaluate_rank(*case)
    ref_cmc, ref_map = torchreid_evaluate_rank(*case, use_cython=False)
    np.testing.assert_allclose(cmc, ref_cmc, atol=1e-6)
    assert abs(m_ap - ref_map) < 1e-6


def test_max_rank_larger_than_gallery():
    rng = np.random.RandomState(3)
    distmat = rng.rand(6, 8).astype(np.float32)
    q_pids, g_pids = rng.randint(0, 3, 6), rng.randint(0, 3, 8)
    q_cams, g_cams = np.zeros(6, int), np.ones(8, int)  # no junk: torchreid's cmc stays square
    cmc, m_ap = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50)
    ref_cmc, ref_map = torchreid_evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams,
                                               max_rank=50, use_cython=False)
    assert cmc.shape == (8,)
    np.testing.assert_allclose(cmc, ref_cmc, atol=1e-6)
    assert abs(m_ap - ref_map) < 1e-6


@pytest.mark.parametrize("ties", [False, True])
def test_both_ap_rules_match_reference_loop(ties):
    """With ties too: equal distances are ordered by gallery column, as a stable argsort."""
    for seed in range(4):
        case = random_case(10 + seed, 30, 150, 20, 4, ties=ties)
        ref_cmc, ref_map, ref_mars = reference_loop(*case, max_rank=30)
        cmc, m_ap = evaluate_rank(*case, max_rank=30)
        _, m_ap_mars = evaluate_rank(*case, max_rank=30, ap_mode="mars")
        np.testing.assert_allclose(cmc, ref_cmc, atol=1e-6)
        assert abs(m_ap - ref_map) < 1e-9 and abs(m_ap_mars - ref_mars) < 1e-9


def test_tiny_example_by_hand():
    # gallery: 0 -> pid 2 cam 0, 1 -> pid 1 cam 0, 2 -> pid 1 cam 1; distances 0.1 < 0.2 < 0.3
    distmat = np.tile(np.float32([0.1, 0.2, 0.3]), (3, 1))
    g_pids, g_cams = np.array([2, 1, 1]), np.array([0, 0, 1])
    q_pids, q_cams = np.array([1, 1, 2]), np.array([5, 0, 3])
    # q0: matches at positions 1, 2 -> AP (1/2 + 2/3) / 2 = 7/12;
    #     trapezoid: 1/2 * ((0/1 + 1/2) / 2 + (1/2 + 2/3) / 2) = 5/12
    # q1: gallery 1 is junk (same pid and cam) -> match at position 1 of [0, 2]: AP 1/2,
    #     trapezoid (0 + 1/2) / 2 = 1/4
    # q2: match first: AP 1 and trapezoid (1 + 1) / 2 = 1
    cmc, m_ap = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=3)
    _, m_ap_mars = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, ap_mode="mars")
    np.testing.assert_allclose(cmc, [1 / 3, 1, 1], atol=1e-7)
    assert m_ap == pytest.approx((7 / 12 + 1 / 2 + 1) / 3, abs=1e-12)
    assert m_ap_mars == pytest.approx((5 / 12 + 1 / 4 + 1) / 3, abs=1e-12)


def test_ties_are_broken_by_gallery_column():
    """All distances equal: the order is the gallery order (torchreid's unstable argsort
    may order such ties differently)."""
    distmat = np.zeros((1, 4), np.float32)
    cmc, m_ap = evaluate_rank(distmat, np.array([1]), np.array([0, 1, 0, 1]), np.array([0]),
                              np.array([1, 1, 1, 1]), max_rank=4)
    np.testing.assert_allclose(cmc, [0, 1, 1, 1])
    assert m_ap == pytest.approx((1 / 2 + 2 / 4) / 2)
    # -0.0 and +0.0 are equal distances too
    distmat = np.float32([[0.0, -0.0]])
    cmc, m_ap = evaluate_rank(distmat, np.array([1]), np.array([0, 1]), np.array([0]),
                              np.array([1, 1]), max_rank=2)
    np.testing.assert_allclose(cmc, [0, 1])


def test_no_valid_query_raises_like_torchreid():
    distmat = np.random.rand(2, 3).astype(np.float32)
    with pytest.raises(AssertionError, match="do not appear in gallery"):
        evaluate_rank(distmat, np.array([0, 1]), np.array([0, 1, 5]), np.array([0, 0]),
                      np.array([0, 0, 0]))
    with pytest.raises(ValueError):
        evaluate_rank(distmat, np.array([7, 8]), np.array([0, 1, 5]), np.array([0, 0]),
                      np.array([0, 0, 0]))


def test_bad_arguments():
    case = random_case(0, 4, 10, 3, 2)
    with pytest.raises(ValueError, match="ap_mode"):
        evaluate_rank(*case, ap_mode="trapezoid")
    with pytest.raises(ValueError, match="distmat of shape"):
        evaluate_rank(case[0][:, :5], *case[1:])


def test_cuhk03_metric_falls_back_to_torchreid():
    case = random_case(5, 10, 60, 8, 3)
    np.random.seed(0)
    ref_cmc, ref_map = torchreid_evaluate_rank(*case, max_rank=10, use_metric_cuhk03=True,
                                               use_cython=False)
    np.random.seed(0)
    cmc, m_ap = evaluate_rank(*case, max_rank=10, use_metric_cuhk03=True)
    np.testing.assert_allclose(cmc, ref_cmc, atol=1e-6)
    assert m_ap == pytest.approx(ref_map)


def test_torch_inputs_accepted():
    case = random_case(4, 20, 80, 10, 3)
    ref = evaluate_rank(*case, max_rank=10)
    got = evaluate_rank(*(torch.as_tensor(x) for x in case), max_rank=10)
    np.testing.assert_array_equal(got[0], ref[0])
    assert got[1] == ref[1]


def test_compute_distance_matrix():
    qf = np.float32([[1, 0], [0, 3]])
    gf = np.float32([[0, 2], [3, 0], [-1, 0]])
    cos = compute_distance_matrix(qf, torch.from_numpy(gf))
    assert cos.dtype == np.float32 and isinstance(cos, np.ndarray)
    np.testing.assert_allclose(cos, [[1, 0, 2], [0, 1, 1]], atol=1e-6)
    q, g = torch.randn(5, 7), torch.randn(9, 7)
    euc = compute_distance_matrix(q, g, metric="euclidean")
    np.testing.assert_allclose(euc, torch.cdist(q, g).pow(2).numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="cosine"):
        compute_distance_matrix(q, g, metric="manhattan")


def test_rank_all_keys_and_consistency():
    case = random_case(2, 40, 200, 25, 4)
    out = rank_all(*case, ranks=(1, 5, 10, 20))
    assert list(out) == ["rank1", "rank5", "rank10", "rank20", "mAP", "mAP_mars"]
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in out.values())
    assert out["rank1"] <= out["rank5"] <= out["rank10"] <= out["rank20"]
    cmc, m_ap = evaluate_rank(*case, max_rank=20)
    assert out["rank5"] == pytest.approx(float(cmc[4])) and out["mAP"] == pytest.approx(m_ap)
    assert out["mAP_mars"] == pytest.approx(evaluate_rank(*case, ap_mode="mars")[1])


def atrw_case():
    """Ten images on the unit circle (cosine distance grows with the angle between them).

    index: pid, frame group, frame, query type, angle (degrees)
    0: 0 a 10 sing 0     1: 0 a 12 sing 5      2: 0 a 20 multi 40
    3: 1 b 5 sing 22     4: 1 c 5 multi 65     5: -1 a 11 sing 1 (junk, never a query)
    6: 2 d 0 multi 180   7: 2 d 2 multi 179    8: 3 f 0 sing 150    9: 3 g 0 sing 152
    """
    pids = np.array([0, 0, 0, 1, 1, -1, 2, 2, 3, 3])
    groups = np.array(["a", "a", "a", "b", "c", "a", "d", "d", "f", "g"])
    frames = np.array([10, 12, 20, 5, 5, 11, 0, 2, 0, 0])
    qtype = np.array(["sing", "sing", "multi", "sing", "multi", "sing", "multi", "multi",
                      "sing", "sing"])
    angles = np.deg2rad([0, 5, 40, 22, 65, 1, 180, 179, 150, 152])
    feats = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32) * 3.0
    return feats, pids, groups, frames, qtype


def test_atrw_plain_protocol_by_hand():
    # max_frame_gap=3: 0 and 1 are junk to each other (2 frames apart), so are 6 and 7.
    # single: q0 valid [3, 2, 4, 8, 9, 7, 6], match 2 at position 1 -> AP 1/2
    #         q1 [3, 2, 4, ...] -> 1/2; q3 [1, 2, 0, 4] -> 4 at position 3 -> 1/4
    #         q8, q9 -> each other first -> 1; q5 has pid -1 -> skipped
    # cross:  q2 [3, 4, 1, 0] -> (1/3 + 2/4) / 2 = 5/12; q4 [2, 3, 1, 0] -> 1/2
    #         q6, q7 have no valid match -> skipped
    # MARS' trapezoid AP (mAP_mars): a match at 0-based position r after i matches adds
    # (recall step) x (i / r + (i + 1) / (r + 1)) / 2: q0, q1 -> 1/4, q3 -> 1/8, q8, q9 -> 1;
    # q2 -> 1/2 * (1/3) / 2 + 1/2 * (1/3 + 2/4) / 2 = 7/24, q4 (one match at 1) -> 1/4.
    out = atrw_plain_protocol(*atrw_case())
    assert set(out) == {"single", "cross"}
    assert out["single"] == pytest.approx({"mAP": 3.25 / 5, "mAP_mars": 2.625 / 5,
                                           "rank1": 2 / 5, "rank5": 1.0, "rank10": 1.0,
                                           "rank20": 1.0})
    assert out["cross"] == pytest.approx({"mAP": 11 / 24, "mAP_mars": 13 / 48, "rank1": 0.0,
                                          "rank5": 1.0, "rank10": 1.0, "rank20": 1.0})
    # max_frame_gap=1: 0 and 1 now find each other first (AP (1 + 2/3) / 2 = 5/6), 6 and 7 too
    out = atrw_plain_protocol(*atrw_case(), max_frame_gap=1, ranks=(1, 5))
    assert {k: out["single"][k] for k in ("mAP", "rank1", "rank5")} == pytest.approx(
        {"mAP": 47 / 60, "rank1": 4 / 5, "rank5": 1.0})
    assert {k: out["cross"][k] for k in ("mAP", "rank1", "rank5")} == pytest.approx(
        {"mAP": 35 / 48, "rank1": 0.5, "rank5": 1.0})
    assert set(out["cross"]) == {"rank1", "rank5", "mAP", "mAP_mars"}


def test_atrw_set_without_queries_is_left_out(caplog):
    feats, pids, groups, frames, _ = atrw_case()
    with caplog.at_level(logging.WARNING, logger=evaluation.__name__):
        out = atrw_plain_protocol(feats, pids, groups, frames, np.array(["sing"] * 10))
    assert set(out) == {"single"} and "cross" in caplog.text
    assert all(not math.isnan(v) for v in out["single"].values())


def test_queries_without_match_are_counted_in_a_warning(caplog):
    distmat = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]], dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger=evaluation.__name__):
        cmc, m_ap = evaluate_rank(distmat, np.array([0, 9]), np.array([0, 1, 2]),
                                  np.array([0, 0]), np.array([1, 1, 1]))
    assert "1 of 2 queries have no true match" in caplog.text
    assert cmc[0] == 1.0 and m_ap == 1.0
