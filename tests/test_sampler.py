"""Multi-view sampling: batch composition, camera spread, strategies, cost independent of size."""
from __future__ import annotations

import numpy as np
import pytest

from vkd_torchreid.data import sampler as sampler_module
from vkd_torchreid.data.base import evenly_indices, random_chunk_indices
from vkd_torchreid.data.sampler import (
    IdentityIndex,
    MultiViewSampler,
    TrackletBatchSampler,
    sample_item,
)


def _source(num_ids: int, cams: int, tracklets_per_cam: int = 2, frames: int = 12):
    data = []
    for pid in range(num_ids):
        for cam in range(cams):
            for t in range(tracklets_per_cam):
                paths = tuple(f"p{pid}_c{cam}_t{t}_f{f}.jpg" for f in range(frames))
                data.append((paths, pid, cam))
    return data


def test_batch_is_p_identities_times_k_items():
    np.random.seed(0)
    data = _source(10, 3)
    sampler = MultiViewSampler(data, batch_size=8, num_instances=2, seq_len=6, strategy="multiview")
    assert len(sampler) == 10 // 4
    for batch in sampler:
        assert len(batch) == 8
        pids = [pid for pid, _, _, _ in batch]
        assert len(set(pids)) == 4
        assert all(pids.count(p) == 2 for p in set(pids))
        for pid, camid, refs, student in batch:
            assert student == ()  # no student frames: the teacher stage
            assert len(refs) == 6
            assert all(data[t][1] == pid for t, _ in refs)
            assert camid == data[refs[0][0]][2]


@pytest.mark.parametrize("cams,n", [(6, 8), (3, 8), (6, 4), (1, 8)])
def test_multiview_spreads_over_min_n_cameras(cams, n):
    np.random.seed(1)
    data = _source(5, cams)
    index = IdentityIndex(data)
    for pid in range(5):
        for _ in range(20):
            _, _, refs = sample_item(index, pid, n, "multiview")
            seen = {data[t][2] for t, _ in refs}
            assert len(seen) >= min(n, cams)


def test_multiview_random_uses_a_permutation_of_tracklets():
    np.random.seed(2)
    data = _source(3, 2, tracklets_per_cam=2)  # 4 tracklets per identity
    index = IdentityIndex(data)
    _, _, refs = sample_item(index, 1, 8, "multiview_random")
    tracklets = [t for t, _ in refs]
    assert sorted(tracklets[:4]) == sorted(index.tracklets[1].tolist())
    assert tracklets[4:] == tracklets[:4]  # cycles over the same permutation


def _reference_rule(tracklets, n, rng):
    """The reference's multi-view draw, written from its description: a random permutation of
    the identity's tracklets (cameras ignored), frame i from tracklet perm[i % T], a random
    frame of it."""
    perm = rng.permutation(len(tracklets))
    out = []
    for i in range(n):
        t = int(perm[i % len(perm)])
        out.append((t, int(rng.randint(0, len(tracklets[t])))))
    return out


def _unbalanced_identity():
    """One identity: five tracklets in camera 0, one in camera 1 (lengths differ)."""
    data = [(tuple(f"c0_t{t}_f{f}.jpg" for f in range(5 + t)), 0, 0) for t in range(5)]
    data.append((tuple(f"c1_f{f}.jpg" for f in range(3)), 0, 1))
    return data


def test_multiview_random_equals_the_reference_rule_on_unbalanced_tracklets():
    data = _unbalanced_identity()
    index = IdentityIndex(data)
    np.random.seed(7)
    ours = [sample_item(index, 0, 8, "multiview_random")[2] for _ in range(200)]
    rng = np.random.RandomState(7)  # same stream as the global RNG seeded with 7
    reference = [tuple(_reference_rule([d[0] for d in data], 8, rng)) for _ in range(200)]
    assert ours == reference


def test_views_spread_reference_vs_camera_balanced_on_unbalanced_tracklets():
    """Camera 1 holds one of six tracklets: the reference rule gives it 8/6 of 8 frames on
    average (one tracklet of six, cycled), camera balancing gives it half of them."""
    data = _unbalanced_identity()
    index = IdentityIndex(data)
    np.random.seed(8)
    share = {}
    for strategy in ("multiview_random", "multiview"):
        refs = [sample_item(index, 0, 8, strategy)[2] for _ in range(3000)]
        per_item = [sum(data[t][2] == 1 for t, _ in r) for r in refs]
        share[strategy] = np.mean(per_item)
        if strategy == "multiview_random":
            assert set(per_item) == {1, 2}  # T = 6 tracklets cycled over N = 8 frames
            # every tracklet is used once or twice per item, never more
            assert all(max(np.bincount([t for t, _ in r], minlength=6)) <= 2 for r in refs)
        else:
            assert set(per_item) == {4}
    assert share["multiview_random"] == pytest.approx(8 / 6, abs=0.03)


def test_temporal_and_tracklet_stay_in_one_tracklet_with_chunks():
    np.random.seed(3)
    data = _source(3, 3, frames=16)
    index = IdentityIndex(data)
    for strategy in ("temporal", "tracklet"):
        _, _, refs = sample_item(index, 2, 8, strategy)
        assert len({t for t, _ in refs}) == 1
        frames = [f for _, f in refs]
        # one frame from each chunk of two frames
        assert [f // 2 for f in frames] == list(range(8))


def test_single_camera_single_tracklet_identity():
    np.random.seed(4)
    data = [(("a0.jpg", "a1.jpg", "a2.jpg"), 0, 0), (("b0.jpg", "b1.jpg"), 1, 2)]
    sampler = MultiViewSampler(data, batch_size=4, num_instances=2, seq_len=8, strategy="multiview")
    (batch,) = list(sampler)
    for pid, _, refs, _ in batch:
        assert len(refs) == 8 and all(data[t][1] == pid for t, _ in refs)


def test_too_few_identities_is_a_clear_error():
    with pytest.raises(ValueError, match=r"2 identities, fewer than P=4"):
        MultiViewSampler(_source(2, 2), batch_size=8, num_instances=2, seq_len=4)
    with pytest.raises(ValueError, match="multiple of num_instances"):
        MultiViewSampler(_source(8, 2), batch_size=7, num_instances=2, seq_len=4)
    with pytest.raises(ValueError, match="unknown sampling strategy"):
        MultiViewSampler(_source(8, 2), batch_size=8, num_instances=2, seq_len=4, strategy="x")


class _CountingSource(list):
    """A training list that counts every read of it after construction."""

    reads = 0

    def __getitem__(self, i):
        type(self).reads += 1
        return super().__getitem__(i)

    def __iter__(self):
        type(self).reads += 1
        return super().__iter__()


class _CountingLookups(dict):
    """An IdentityIndex table (pid -> tracklets / cameras) that counts its lookups."""

    def __init__(self, table, counter):
        super().__init__(table)
        self.counter = counter

    def __getitem__(self, key):
        self.counter["lookups"] += 1
        return super().__getitem__(key)


_RNG_DRAWS = ("permutation", "randint", "choice", "shuffle", "rand", "random", "random_sample",
              "uniform")


def _elements(name, args, kwargs):
    """Numbers a numpy RNG call draws or permutes: the pool of a permutation/choice (an array
    or an int), else the requested size (1 without one)."""
    size = kwargs.get("size", args[2] if name == "randint" and len(args) > 2 else None)
    drawn = int(np.prod(size)) if size is not None else 1
    if name in ("permutation", "shuffle", "choice") and args:
        pool = len(args[0]) if hasattr(args[0], "__len__") else int(args[0])
        return max(pool, drawn)
    return drawn


class _CountingRandom:
    """A RandomState whose draws are counted (the sampler draws from one per identity slot)."""

    def __init__(self, rand, counter):
        self.rand, self.counter = rand, counter

    def __getattr__(self, name):
        fn = getattr(self.rand, name)
        if name not in _RNG_DRAWS:
            return fn

        def draw(*args, **kwargs):
            self.counter["calls"] += 1
            self.counter["elements"] += _elements(name, args, kwargs)
            return fn(*args, **kwargs)
        return draw


def _work_per_batch(num_ids, monkeypatch, batches=30):
    """Per batch: RNG calls, elements those calls touch, IdentityIndex lookups and reads of
    the training list. The first batch also draws the epoch's identity order."""
    counter = {"calls": 0, "elements": 0, "lookups": 0}
    source = _CountingSource(_source(num_ids, 4))
    sampler = MultiViewSampler(source, 16, 4, 8, "multiview")
    sampler.index.tracklets = _CountingLookups(sampler.index.tracklets, counter)
    sampler.index.cameras = _CountingLookups(sampler.index.cameras, counter)
    real = sampler_module.draw_rng
    with monkeypatch.context() as m:
        m.setattr(sampler_module, "draw_rng",
                  lambda *keys: _CountingRandom(real(*keys), counter))
        _CountingSource.reads = 0
        it = iter(sampler)
        profile = []
        for _ in range(batches + 1):
            before = dict(counter)
            batch = next(it)
            assert len(batch) == 16
            profile.append({k: counter[k] - before[k] for k in counter})
        reads = _CountingSource.reads
    return profile, reads


def test_item_cost_does_not_grow_with_dataset_size(monkeypatch):
    """25x more identities and tracklets: every batch after the first makes the same RNG
    draws from the same small pools and the same identity lookups; the training list is never
    read again. (A scan of the training list per item, as the reference does, would show.)"""
    small, small_reads = _work_per_batch(200, monkeypatch)
    large, large_reads = _work_per_batch(5000, monkeypatch)
    assert small_reads == large_reads == 0
    assert small[1:] == large[1:]
    # an item touches its own identity only: its 4 cameras, 8 tracklets and 8 frames (16
    # items per batch; the small set alone has 200 identities and 1600 tracklets)
    per_item = 4 + 4 * 2 + 8
    assert all(0 < p["calls"] <= 16 * per_item for p in small[1:])
    assert all(0 < p["elements"] <= 16 * per_item for p in small[1:])
    assert all(16 <= p["lookups"] <= 2 * 16 for p in small[1:])
    # the epoch's identity order is drawn once, in the first batch: one permutation of all ids
    assert large[0]["calls"] == small[0]["calls"] == small[1]["calls"] + 1
    assert large[0]["elements"] - small[0]["elements"] == 5000 - 200


def test_torchreid_sampler_adapter():
    from vkd_torchreid.compat import build_train_sampler

    np.random.seed(5)
    data = _source(6, 2)
    base = build_train_sampler([(*t, 0) for t in data], "RandomIdentitySampler", batch_size=8,
                               num_instances=4)
    sampler = TrackletBatchSampler(base, data, batch_size=8, seq_len=4, strategy="tracklet")
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == 8
        for pid, _, refs, _ in batch:
            assert len({t for t, _ in refs}) == 1 and data[refs[0][0]][1] == pid


def test_frame_index_helpers():
    assert evenly_indices(16, 8).tolist() == [0, 2, 4, 6, 8, 10, 12, 14]
    assert evenly_indices(3, 5).tolist() == [0, 1, 2, 2, 2]
    assert evenly_indices(10, 4).tolist() == [0, 3, 6, 9]
    idx = random_chunk_indices(10, 4, np.random.RandomState(0))
    assert all(0 <= i < 10 for i in idx) and list(idx) == sorted(idx)
    with pytest.raises(ValueError):
        evenly_indices(0, 4)


@pytest.mark.parametrize("strategy,m", [("multiview_random", 2), ("tracklet", 0)])
@pytest.mark.parametrize("world", [2, 4])
def test_ranks_together_draw_the_single_process_batch(strategy, m, world):
    """Each rank's share of every batch is its P / world-size whole identities; the shares in
    rank order are exactly the single process's batch (items, frames and student picks), and
    the global RNG plays no part."""
    source = _source(40, 3)
    single = MultiViewSampler(source, 32, 4, 8, strategy, student_frames=m, seed=3)
    ranks = [MultiViewSampler(source, 32, 4, 8, strategy, student_frames=m, seed=3, rank=r,
                              world_size=world) for r in range(world)]
    for epoch in (0, 5):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        np.random.seed(epoch)
        expected = list(single)
        np.random.seed(epoch + 100)
        shares = [list(r) for r in ranks]
        assert len(expected) == len(single) == 5
        for b, batch in enumerate(expected):
            assert [item for share in shares for item in share[b]] == batch
            for r, share in enumerate(shares):
                pids = {item[0] for item in share[b]}
                assert len(share[b]) == 32 // world and len(pids) == 8 // world
                others = {item[0] for q, other in enumerate(shares) if q != r
                          for item in other[b]}
                assert not pids & others


def test_draws_depend_on_seed_and_epoch_only():
    source = _source(40, 3)
    a = MultiViewSampler(source, 32, 4, 8, "multiview_random", student_frames=2, seed=1)
    b = MultiViewSampler(source, 32, 4, 8, "multiview_random", student_frames=2, seed=1)
    np.random.seed(0)
    first = list(a)
    np.random.seed(1)
    assert list(b) == first
    b.set_epoch(1)
    assert list(b) != first
    c = MultiViewSampler(source, 32, 4, 8, "multiview_random", student_frames=2, seed=2)
    assert list(c) != first


def test_identities_not_divisible_by_world_size_is_an_error():
    with pytest.raises(ValueError, match="P=8 identities per batch must be divisible by the "
                                         "world size 3"):
        MultiViewSampler(_source(40, 3), 32, 4, 8, rank=0, world_size=3)
