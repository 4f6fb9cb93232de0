"""VeRi-776 (Liu et al., ICME 2016) as a video dataset, following the VKD reference.

- train: one tracklet per (vehicle, camera), its images sorted by name (= by time);
- gallery: one tracklet per line of ``test_track.txt``; ``gallery_img``: every test image;
- ``query_img``: every official query image;
- ``query`` (video queries): for each query image, the gallery track of the same vehicle and
  camera (the longest if several); queries without such a track are skipped with a warning.
"""
from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from typing import Any, Dict, List, Tuple

from vkd_torchreid.data.base import (
    ImageItem,
    Protocol,
    Splits,
    Tracklet,
    VKDVideoDataset,
    read_lines,
    relabel,
    require_dir,
    require_file,
)

logger = logging.getLogger(__name__)

#: ``<vid4>_c<cam3>_<time>_<n>.jpg``
IMAGE_NAME = re.compile(r"^(\d{4})_c(\d{3})_(\d+)_(\d+)\.jpg$")
NAME_FORM = "<vid4>_c<cam3>_<time>_<n>.jpg"


def parse_name(name: str, path: str, line: int) -> Tuple[int, int]:
    """(vehicle id, 0-based camera) of an image name; ValueError naming file and line."""
    match = IMAGE_NAME.match(name)
    if match is None or int(match.group(2)) < 1:
        raise ValueError(f"{path}: line {line}: bad image name {name!r}; expected {NAME_FORM}")
    return int(match.group(1)), int(match.group(2)) - 1


class VeRi(VKDVideoDataset):
    """VeRi-776 under ``root/VeRi``."""

    dataset_dir = "VeRi"
    ERASE_RATIO = (0.7, 1.4)
    INPUT_SIZE = (224, 224)
    LAYOUT = """\
VeRi/
  image_train/<vid4>_c<cam3>_<time>_<n>.jpg
  image_query/<vid4>_c<cam3>_<time>_<n>.jpg
  image_test/<vid4>_c<cam3>_<time>_<n>.jpg
  name_train.txt   name_query.txt   name_test.txt     one image name a line
  test_track.txt   one gallery track a line: a key token, then its image names"""

    @classmethod
    def parse(cls, dataset_dir: str, **unused: Any) -> Splits:
        """Reads VeRi-776 at ``dataset_dir``."""
        dirs = {k: require_dir(os.path.join(dataset_dir, f"image_{k}"), cls.LAYOUT)
                for k in ("train", "query", "test")}
        files = {k: require_file(os.path.join(dataset_dir, f"{k}.txt"), cls.LAYOUT)
                 for k in ("name_train", "name_query", "name_test", "test_track")}

        groups: Dict[Tuple[int, int], List[str]] = defaultdict(list)
        for i, name in enumerate(read_lines(files["name_train"]), start=1):
            groups[parse_name(name, files["name_train"], i)].append(name)
        train = relabel([(tuple(os.path.join(dirs["train"], n) for n in sorted(names)), vid, cam)
                         for (vid, cam), names in sorted(groups.items())])

        query_img = cls._images(files["name_query"], dirs["query"])
        gallery_img = cls._images(files["name_test"], dirs["test"])
        gallery = cls._tracks(files["test_track"], dirs["test"])

        longest: Dict[Tuple[int, int], Tracklet] = {}
        for track in gallery:
            key = (track[1], track[2])
            if key not in longest or len(track[0]) > len(longest[key][0]):
                longest[key] = track
        query = [longest[(vid, cam)] for _, vid, cam in query_img if (vid, cam) in longest]
        if len(query) < len(query_img):
            logger.warning("%s: %d of %d query images have no gallery track of the same "
                           "vehicle and camera; they have no video query",
                           dataset_dir, len(query_img) - len(query), len(query_img))
        firsts = [("train", train[0][0][0] if train else ""),
                  ("query", query_img[0][0] if query_img else ""),
                  ("test", gallery_img[0][0] if gallery_img else "")]
        for split, first in firsts:
            if first and not os.path.isfile(first):
                raise FileNotFoundError(f"missing image {first} (first {split} image); "
                                        f"expected layout:\n{cls.LAYOUT}")
        return Splits(train=train, query=query, gallery=gallery, query_img=query_img,
                      gallery_img=gallery_img, protocol=Protocol(("I2V", "V2V", "I2I", "V2I")))

    @staticmethod
    def _images(list_path: str, image_dir: str) -> List[ImageItem]:
        items = []
        for i, name in enumerate(read_lines(list_path), start=1):
            vid, cam = parse_name(name, list_path, i)
            items.append((os.path.join(image_dir, name), vid, cam))
        return items

    @staticmethod
    def _tracks(path: str, image_dir: str) -> List[Tracklet]:
        """One tracklet per line: the tokens after the key (the key alone if it is all)."""
        tracks: List[Tracklet] = []
        for i, line in enumerate(read_lines(path), start=1):
            tokens = line.split()
            names = list(dict.fromkeys(tokens[1:] or tokens[:1]))
            for name in names:
                parse_name(name, path, i)
            names.sort()
            vid, cam = parse_name(names[0], path, i)
            tracks.append((tuple(os.path.join(image_dir, n) for n in names), vid, cam))
        return tracks
