"""A synthetic multi-view world for tests, the demo, the study and the benchmarks (outside the
loading path: nothing in ``vkd_torchreid.data`` uses it)."""
from vkd_torchreid.synthetic.render import VIEWS, render
from vkd_torchreid.synthetic.writers import (
    DATASET_DIRS,
    MARKER,
    atrw_keypoints,
    mask_file,
    write_synthetic,
)

__all__ = ["DATASET_DIRS", "MARKER", "VIEWS", "atrw_keypoints", "mask_file", "render",
           "write_synthetic"]
