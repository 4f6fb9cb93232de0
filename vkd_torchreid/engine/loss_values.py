"""The loss values of a training step as the host sees them: read back once (under torchrun,
averaged over the ranks in one all-reduce that also carries the decoded-frame count and the stop
flag), and refused when not finite."""
from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import torch


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; nothing was stepped or saved with it."""


def synced_values(losses: Dict[str, torch.Tensor], decoded: int, dist: Any,
                  stop_requested: bool) -> Tuple[Dict[str, float], int, bool]:
    """(loss values, frames decoded, whether any rank was asked to stop).

    In one process: the values read back in one transfer, ``decoded`` and ``stop_requested``
    as given. Under torchrun (``dist.enabled``): the values' mean over the ranks, the frames
    decoded by all ranks and whether any rank was asked to stop, from one all-reduce.
    """
    names = list(losses)
    flat = torch.stack([losses[k].detach().float() for k in names])
    if not dist.enabled:
        return dict(zip(names, flat.tolist())), decoded, stop_requested
    extra = torch.tensor([decoded, float(stop_requested)], device=flat.device)
    total = torch.cat([flat, extra]).double()
    torch.distributed.all_reduce(total)
    means = (total[:len(names)] / dist.world_size).tolist()
    return dict(zip(names, means)), int(total[-2].item()), bool(total[-1].item() > 0)


def check_finite(values: Dict[str, float], where: str) -> None:
    """Raises :class:`NonFiniteLossError` naming the non-finite terms and ``where`` (epoch,
    step, batch) when a value is NaN or infinite."""
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        terms = [k for k in bad if k != "loss"] or bad
        hint = ("; a NaN triplet loss on a GPU also means a batch of a single identity (the "
                "sampler's P below 2)" if terms == ["loss_tr"] else "")
        raise NonFiniteLossError(
            f"non-finite loss {', '.join(f'{k}={values[k]}' for k in terms)} at {where}; "
            f"no update was made and no checkpoint was written with it{hint}")
