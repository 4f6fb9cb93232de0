"""ONNX export of a trained network (logic: vkd_torchreid/apps/export.py).

    python tools/export.py --config-file vkd_mars_r50 \
        --weights log/vkd_mars_r50/model/latest.pth.tar --output vkd_mars_r50.onnx

Writes the image model X.onnx (images [batch, 3, H, W] -> embeddings [batch, D]) and the
tracklet model X_tracklet.onnx (tracklets [batch, frames, 3, H, W] -> set_embeddings
[batch, D]), each checked with onnxruntime against PyTorch. Needs
``pip install vkd_torchreid[export]``. Errors end with one line and exit code 2.
"""
from __future__ import annotations

import sys

from vkd_torchreid.apps.export import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
