"""VeRi-776 (Liu et al., ICME 2016) as a video dataset, following the VKD reference.

- train: one tracklet per (vehicle, camera), its images sorted by name (= by time);
- gallery: one tracklet per line of ``test_track.txt``; ``gallery_img``: the test images
  (option ``veri_image_gallery``);
- ``query_img``: every official query image;
- ``query`` (video queries): for each query image, a gallery track of the same vehicle and
  camera; queries without such a track are skipped with a warning.

Option ``veri_query_track``:

- ``longest`` (default): the video query is the longest such track; a track's images are the
  names after its key token, sorted and de-duplicated;
- ``first`` (the VKD reference): the first such line of ``test_track.txt``; every track is read
  as the reference reads it, ``line.split(' ')[1:-1]``: file order, duplicates kept, and the
  line's last image dropped when the line does not end with a space (a warning counts them).

Option ``veri_image_gallery`` (the gallery of I2I and V2I):

- ``name_test`` (default): every image of ``name_test.txt``, once each;
- ``tracks`` (the VKD reference): every image of every gallery track, in track order, with the
  track's vehicle and camera. With ``veri_query_track first`` the tracks are the reference's
  reading, so an image dropped as a line's last token is not in the gallery and an image
  listed twice is there twice, exactly as the reference builds its ``gallery_img``.
"""
from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from typing import Any, Dict, List, Tuple

from vkd_torchreid.data.base import (
    ImageItem,
    LayoutError,
    Protocol,
    Splits,
    Tracklet,
    VKDVideoDataset,
    read_lines,
    relabel,
    require_dir,
    require_file,
)
from vkd_torchreid.data.registry import register_dataset

logger = logging.getLogger(__name__)

#: Values of the ``veri_query_track`` option.
QUERY_TRACKS = ("first", "longest")
#: Values of the ``veri_image_gallery`` option.
IMAGE_GALLERIES = ("name_test", "tracks")
#: ``<vid4>_c<cam3>_<time>_<n>.jpg``
IMAGE_NAME = re.compile(r"^(\d{4})_c(\d{3})_(\d+)_(\d+)\.jpg$")
NAME_FORM = "<vid4>_c<cam3>_<time>_<n>.jpg"
#: A ``test_track.txt`` key: vehicle and camera first (an image name or ``<vid4>_c<cam3>``).
TRACK_KEY = re.compile(r"^(\d{4})_c(\d{3})(?:_|$)")


def parse_name(name: str, path: str, line: int) -> Tuple[int, int]:
    """(vehicle id, 0-based camera) of an image name; ValueError naming file and line."""
    match = IMAGE_NAME.match(name)
    if match is None or int(match.group(2)) < 1:
        raise ValueError(f"{path}: line {line}: bad image name {name!r}; expected {NAME_FORM}")
    return int(match.group(1)), int(match.group(2)) - 1


@register_dataset("vkd_veri")
class VeRi(VKDVideoDataset):
    """VeRi-776 under ``root/VeRi`` (options ``veri_query_track``, ``veri_image_gallery``)."""

    dataset_dir = "VeRi"
    OPTIONS = ("veri_query_track", "veri_image_gallery")
    FRAME_FORMAT = "jpeg"
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
    def parse(cls, dataset_dir: str, veri_query_track: str = "longest",
              veri_image_gallery: str = "name_test", **unused: Any) -> Splits:
        """Reads VeRi-776 at ``dataset_dir``."""
        for option, value, allowed in (("veri_query_track", veri_query_track, QUERY_TRACKS),
                                       ("veri_image_gallery", veri_image_gallery,
                                        IMAGE_GALLERIES)):
            if value not in allowed:
                raise ValueError(f"{option}={value!r}: expected one of "
                                 f"{', '.join(repr(m) for m in allowed)}")
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
        if veri_query_track == "first":
            gallery = cls._reference_tracks(files["test_track"], dirs["test"])
        else:
            gallery = cls._tracks(files["test_track"], dirs["test"])
        if veri_image_gallery == "tracks":
            gallery_img = [(path, vid, cam) for paths, vid, cam in gallery for path in paths]
        else:
            gallery_img = cls._images(files["name_test"], dirs["test"])

        chosen: Dict[Tuple[int, int], Tracklet] = {}
        for track in gallery:
            key = (track[1], track[2])
            if key not in chosen or (veri_query_track == "longest"
                                     and len(track[0]) > len(chosen[key][0])):
                chosen[key] = track
        query = [chosen[(vid, cam)] for _, vid, cam in query_img if (vid, cam) in chosen]
        if len(query) < len(query_img):
            logger.warning("%s: %d of %d query images have no gallery track of the same "
                           "vehicle and camera; they have no video query",
                           dataset_dir, len(query_img) - len(query), len(query_img))
        firsts = [("train", train[0][0][0] if train else ""),
                  ("query", query_img[0][0] if query_img else ""),
                  ("test", gallery_img[0][0] if gallery_img else "")]
        for split, first in firsts:
            if first and not os.path.isfile(first):
                raise LayoutError(f"missing image {first} (first {split} image)", cls.LAYOUT)
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

    @staticmethod
    def _reference_tracks(path: str, image_dir: str) -> List[Tracklet]:
        """One tracklet per line, read as the reference reads it: ``line.split(' ')[1:-1]``.

        The key (first token) gives vehicle and camera; the last token is dropped, which loses
        the line's last image unless the line ends with a space. File order and duplicates are
        kept. Blank lines are skipped; a line left without images is skipped with a warning.
        """
        tracks: List[Tracklet] = []
        lost: List[str] = []
        emptied: List[int] = []
        lines = 0
        with open(path, encoding="utf-8") as fh:
            for i, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                lines += 1
                tokens = raw.split(" ")
                key = tokens[0].strip()
                # The reference reads vehicle and camera from the key's first two fields: an
                # image name or a bare '<vid4>_c<cam3>' key both work.
                match = TRACK_KEY.match(key)
                if match is None or int(match.group(2)) < 1:
                    raise ValueError(f"{path}: line {i}: bad track key {key!r}; expected "
                                     f"<vid4>_c<cam3>[...]")
                vid, cam = int(match.group(1)), int(match.group(2)) - 1
                names = tokens[1:len(tokens) - 1]
                last = tokens[-1].rstrip("\r\n") if len(tokens) > 1 else ""
                if last:
                    parse_name(last, path, i)
                    lost.append(last)
                for name in names:
                    if parse_name(name, path, i) != (vid, cam):
                        raise ValueError(f"{path}: line {i}: image {name!r} is not of the "
                                         f"vehicle and camera of the key {key!r}")
                if not names:
                    emptied.append(i)
                    continue
                tracks.append((tuple(os.path.join(image_dir, n) for n in names), vid, cam))
        if lost:
            logger.warning("%s: %d of %d lines do not end with a space; read as the reference "
                           "reads them (veri_query_track='first'), they lose their last image "
                           "(first ones: %s)", path, len(lost), lines, ", ".join(lost[:5]))
        if emptied:
            logger.warning("%s: %d lines have no image left after the key (first lines: %s); "
                           "they are not gallery tracks", path, len(emptied),
                           ", ".join(map(str, emptied[:5])))
        return tracks
