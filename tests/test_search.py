"""GalleryIndex: exact search equals an argsort of cosine scores, faiss agrees, an index saves
and loads without pickle, bad input is a clear error."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vkd_torchreid.search import GalleryIndex

from conftest import require_extra


def _clustered(n, d=64, centres=50, seed=0):
    """Embeddings around ``centres`` identities, like a re-ID gallery (not uniform noise)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, d, generator=g)
    ids = torch.randint(0, centres, (n,), generator=g)
    return c[ids] + 0.3 * torch.randn(n, d, generator=g), ids.numpy()


def test_exact_search_equals_an_argsort_of_cosine_scores():
    gallery, _ = _clustered(500)
    queries, _ = _clustered(37, seed=1)
    index = GalleryIndex.build(gallery)
    scores, idx = index.search(queries, k=10)
    cos = F.normalize(queries, dim=1) @ F.normalize(gallery, dim=1).T
    order = torch.argsort(cos, dim=1, descending=True)[:, :10]
    assert torch.equal(idx, order)
    torch.testing.assert_close(scores, torch.gather(cos, 1, order))
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first
    s, i = index.search(queries[:2], k=10_000)  # k capped at the gallery size
    assert s.shape == i.shape == (2, 500)


def test_exact_search_in_chunks(monkeypatch):
    import vkd_torchreid.search as search

    gallery, _ = _clustered(300)
    queries, _ = _clustered(25, seed=2)
    whole = GalleryIndex.build(gallery).search(queries, 5)
    monkeypatch.setattr(search, "EXACT_CHUNK", 4)
    chunked = GalleryIndex.build(gallery).search(queries, 5)
    assert torch.equal(whole[1], chunked[1])


def test_save_and_load_without_pickle(tmp_path):
    gallery, ids = _clustered(200)
    index = GalleryIndex.build(gallery, pids=ids, camids=np.arange(200) % 3)
    folder = index.save(str(tmp_path / "idx"))
    with open(os.path.join(folder, "index.json"), encoding="utf-8") as fh:
        assert json.load(fh)["backend"] == "exact"
    back = GalleryIndex.load(folder)
    assert np.array_equal(back.pids, ids) and np.array_equal(back.camids, np.arange(200) % 3)
    q, _ = _clustered(10, seed=3)
    assert torch.equal(back.search(q, 7)[1], index.search(q, 7)[1])
    index.save(folder)  # replaces the folder as a whole
    assert sorted(os.listdir(folder)) == ["gallery.npz", "index.json"]
    with pytest.raises(FileNotFoundError, match="no gallery index in"):
        GalleryIndex.load(str(tmp_path / "nothing"))


def test_bad_input_is_a_clear_error():
    gallery, _ = _clustered(20)
    with pytest.raises(ValueError, match="the gallery is empty"):
        GalleryIndex.build(torch.zeros(0, 64))
    with pytest.raises(ValueError, match="queries have dimension 32 but the gallery"):
        GalleryIndex.build(gallery).search(torch.zeros(3, 32), 5)
    with pytest.raises(ValueError, match="pids: expected 20 values"):
        GalleryIndex.build(gallery, pids=[1, 2, 3])
    with pytest.raises(ValueError, match="backend='annoy'"):
        GalleryIndex.build(gallery, backend="annoy")
    with pytest.raises(ValueError, match=r"expected a \[n, d\] matrix"):
        GalleryIndex.build(torch.zeros(5))


def test_faiss_flat_equals_exact_and_ivf_recall(tmp_path):
    require_extra("faiss", "search")
    gallery, _ = _clustered(4000)
    queries, _ = _clustered(200, seed=4)
    exact = GalleryIndex.build(gallery).search(queries, 10)
    flat = GalleryIndex.build(gallery, backend="faiss-flat")
    s, i = flat.search(queries, 10)
    torch.testing.assert_close(s, exact[0], rtol=1e-5, atol=1e-5)
    agree = (i == exact[1]).float().mean()
    assert agree > 0.99  # ties may order differently
    ivf = GalleryIndex.build(gallery, backend="faiss-ivf", nprobe=8)
    _, j = ivf.search(queries, 10)
    recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / 10
                      for a, b in zip(j, exact[1])])
    assert recall > 0.8, recall
    back = GalleryIndex.load(ivf.save(str(tmp_path / "ivf")))
    assert torch.equal(back.search(queries, 10)[1], j)


def test_the_network_travels_with_the_index_and_is_checked(tmp_path):
    gallery, _ = _clustered(30)
    network = {"weights_sha256": "ab" * 32, "arch": "vkd_resnet50", "height": 256,
               "norm_mean": (0.485, 0.456, 0.406)}
    folder = GalleryIndex.build(gallery, network=network).save(str(tmp_path / "idx"))
    back = GalleryIndex.load(folder)
    assert back.network == {**network, "norm_mean": [0.485, 0.456, 0.406]}
    back.check_network(network)  # the same (tuples and lists alike): no error
    assert back.network_differences({**network, "height": 128, "weights_sha256": "cd" * 32}) \
        == ["weights_sha256 abababababab... vs cdcdcdcdcdcd...", "height 256 vs 128"]
    with pytest.raises(ValueError, match=r"^idx was embedded by another network .*arch "
                                         r"'vkd_resnet50' vs 'vkd_resnet18'"):
        back.check_network({**network, "arch": "vkd_resnet18"}, "idx")
    with pytest.raises(ValueError, match="does not record the network"):
        GalleryIndex.build(gallery).check_network(network)


@pytest.mark.parametrize("name,content,match", [
    ("index.json", '{"format": 1, "backend": "exact", "count": 3', r"line 1 column \d+"),
    ("index.json", '{"format": 1, "backend": "exact", "count": null, "dim": 64, "nlist": 0, '
                   '"nprobe": 0}', "count is null, expected an integer"),
    ("gallery.npz", "not a zip", "not the arrays of a gallery index"),
])
def test_a_broken_index_file_is_one_line_naming_it(tmp_path, name, content, match):
    folder = GalleryIndex.build(_clustered(30)[0]).save(str(tmp_path / "idx"))
    with open(os.path.join(folder, name), "w", encoding="utf-8") as fh:
        fh.write(content)
    with pytest.raises(ValueError, match=match) as info:
        GalleryIndex.load(folder)
    message = str(info.value)
    assert os.path.join(folder, name) in message and "\n" not in message
