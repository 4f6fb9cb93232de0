"""A training probe of the data path: teacher-stage steps on a synthetic DukeMTMC-VideoReID world
written at the input size, decoded on the CPU or the GPU (``data.decode_device``), and, when a
loss is not finite, where the first non-finite value appears.

    python tools/gpu_check.py --train-steps 40 [--decode cpu,cuda]

For each decode device it runs ``steps`` steps of randomly initialised networks (bf16,
channels_last on CUDA) at a tiny learning rate, checks every batch's input on the device, and
on a non-finite loss reports the step, the input's range, whether the weights were still finite,
and the first module (in forward order) whose output holds a NaN or an infinity, found by a
forward of the same batch with hooks.
"""
from __future__ import annotations

import argparse
import gc
import tempfile
from typing import Any, Dict, List, Sequence

import torch
from torch import nn

from vkd_torchreid.apps.benchmark.step import loader_config
from vkd_torchreid.apps.benchmark.world import write_world
from vkd_torchreid.data.manager import VKDDataManager
from vkd_torchreid.engine.build import build_engine
from vkd_torchreid.engine.loss_values import NonFiniteLossError
from vkd_torchreid.utils.device import autocast


def first_nonfinite_module(model: nn.Module, x: torch.Tensor, amp: str = "") -> str:
    """The name of the first module (in the order they run) of ``model.forward_features(x)``
    whose output holds a non-finite value; '' when every output is finite."""
    found: List[str] = []

    def hook(name: str) -> Any:
        def check(_module: nn.Module, _inputs: Any, output: Any) -> None:
            outs = output if isinstance(output, (tuple, list)) else (output,)
            if not found and any(isinstance(o, torch.Tensor) and o.is_floating_point()
                                 and not torch.isfinite(o).all() for o in outs):
                found.append(name)
        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad(), autocast(x.device, amp):
            model.forward_features(x)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else ""


def _probe_one(args: argparse.Namespace, root: str, use_gpu: bool, decode: str) -> Dict[str, Any]:
    extra = ["train.amp", args.amp, "train.channels_last", str(use_gpu), "train.lr", "1e-9",
             "train.print_freq", "1000000", "data.decode_device", decode]
    cfg = loader_config(args, root, use_gpu, "teacher", args.workers, *extra)
    dm = VKDDataManager.from_config(cfg)
    torch.manual_seed(0)
    engine = build_engine(cfg, dm, callbacks=[])
    engine.set_model_mode("train")
    row: Dict[str, Any] = {"decode_device": decode, "steps": 0, "nonfinite_inputs": 0}
    for step, batch in enumerate(engine.train_loader):
        if step >= args.steps:
            break
        x = batch.device_images(engine.device, engine.options.channels_last)
        row["nonfinite_inputs"] += int((~torch.isfinite(x)).sum())
        try:
            engine.forward_backward(batch)
        except NonFiniteLossError as exc:
            row.update(failed_at=step, error=str(exc), input_min=float(x.min()),
                       input_max=float(x.max()), input_mean=float(x.float().mean()),
                       weights_finite=all(bool(torch.isfinite(p).all())
                                          for p in engine.model.parameters()),
                       first_nonfinite_module=first_nonfinite_module(engine.model, x, args.amp))
            break
        row["steps"] = step + 1
    del engine, dm
    gc.collect()
    return row


def probe(args: argparse.Namespace, decodes: Sequence[str]) -> List[Dict[str, Any]]:
    """One row per decode device (see the module docstring)."""
    use_gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="vkd_train_probe_") as root:
        write_world(root, train_ids=args.p * (args.steps + 1), height=args.height,
                    width=args.width, frames=args.n)
        return [_probe_one(args, root, use_gpu, d) for d in decodes]


def probe_args(steps: int, model: str = "vkd_resnet50", p: int = 8, k: int = 4, n: int = 8,
               height: int = 256, width: int = 128, workers: int = 8,
               amp: str = "bf16") -> argparse.Namespace:
    """The probe's settings (the paper's teacher batch by default)."""
    return argparse.Namespace(steps=steps, model=model, p=p, k=k, n=n, m=2, height=height,
                              width=width, workers=workers, amp=amp, classes=10)
