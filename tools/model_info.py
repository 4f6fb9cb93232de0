"""Size and cost of one of our networks (logic: vkd_torchreid/apps/model_info.py).

    python tools/model_info.py --model vkd_resnet50 --height 256 --width 128 [--num-classes 625]
"""
from __future__ import annotations

from vkd_torchreid.apps.model_info import main

if __name__ == "__main__":
    raise SystemExit(main())
