"""``vkd-reid model-info``: size and cost of one of our networks.

    vkd-reid model-info [--config-file X] [--num-classes 625] [model.name vkd_resnet18]
        [data.height 256 data.width 128] [model.last_stride 1]

The network is ``model.name`` at ``data.height`` x ``data.width`` with ``model.last_stride``
(the defaults: vkd_resnet50, 256 x 128, 1). Builds the model with random init (no weight files needed) and prints its parameters, the
FLOPs of one test-time frame (torchreid's ``compute_model_complexity``, conv and linear
layers, as torchreid reports them; falls back to ``torch.utils.flop_counter``), the embedding
size and the feature-map size before pooling.
"""
from __future__ import annotations

import argparse
import logging
from typing import Dict, Optional, Sequence, Tuple

import torch

from vkd_torchreid import compat
from vkd_torchreid.apps.common import (
    add_config_arguments,
    command_parser,
    config_of,
    guarded,
    parse,
)
from vkd_torchreid.models import build_model

logger = logging.getLogger(__name__)


def _flops(model: torch.nn.Module, size: Tuple[int, ...]) -> Tuple[int, str]:
    """(FLOPs of one forward pass, how they were counted)."""
    try:
        _, flops = compat.compute_model_complexity(model, size, verbose=False,
                                                   only_conv_linear=True)
        return int(flops), "torchreid compute_model_complexity (conv + linear)"
    except Exception as exc:  # any failure falls back to torch's counter
        logger.warning("torchreid compute_model_complexity failed (%s); using "
                       "torch.utils.flop_counter", exc)
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(size))
    # FlopCounterMode counts a multiply-add as 2 FLOPs; report multiply-adds like torchreid
    return int(counter.get_total_flops()) // 2, "torch.utils.flop_counter (multiply-adds)"


def model_info(name: str, height: int, width: int, num_classes: int = 625,
               last_stride: int = 1) -> Dict[str, object]:
    """Parameters, FLOPs, embedding size and feature-map size of ``name``."""
    model = build_model(name, num_classes, pretrained=False, last_stride=last_stride).eval()
    size = (1, 3, height, width)
    with torch.no_grad():
        fmap = model.backbone(torch.zeros(size))
        emb = model(torch.zeros(size))
    flops, method = _flops(model, size)
    params = sum(p.numel() for p in model.parameters())
    backbone = sum(p.numel() for p in model.backbone.parameters())
    return {"model": name, "input": f"{height}x{width}", "parameters": params,
            "backbone_parameters": backbone, "flops": flops, "flops_method": method,
            "embedding": int(emb.shape[1]),
            "feature_map": f"{fmap.shape[1]}x{fmap.shape[2]}x{fmap.shape[3]} (CxHxW)"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``vkd-reid model-info``; returns the exit status."""
    parser = command_parser("vkd-reid model-info", __doc__)
    parser.add_argument("--num-classes", type=int, default=625,
                        help="of the classifier (MARS' training identities by default)")
    add_config_arguments(parser, data_shortcuts=False)
    return guarded(lambda: _print_info(parse(parser, argv)))


def _print_info(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    height, width = int(cfg.data.height), int(cfg.data.width)
    info = model_info(cfg.model.name, height, width, args.num_classes, cfg.model.last_stride)
    print(f"model:        {info['model']} ({args.num_classes} classes)")
    print(f"input:        {info['input']}")
    print(f"parameters:   {info['parameters']:,} (backbone {info['backbone_parameters']:,})")
    print(f"FLOPs:        {info['flops'] / 1e9:.3f} G  [{info['flops_method']}]")
    print(f"embedding:    {info['embedding']}")
    print(f"feature map:  {info['feature_map']}")
    return 0
