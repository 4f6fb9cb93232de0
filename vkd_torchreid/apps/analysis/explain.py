"""``vkd-reid explain``: where each network looks, Grad-CAM on the same gallery frames.

    vkd-reid explain --config-file vkd_mars_r50 --weights teacher.pth.tar \\
        --weights student.pth.tar --output analysis/ [--frames 8] [--masks DIR]

For each frame (the first frame of ``--frames`` gallery tracklets drawn with ``--seed``, or
the files given with ``--images``), the Grad-CAM map of every network at its last
convolutional stage (ResNet: ``layer4``; DenseNet: the final ``norm5`` after ``denseblock4``;
MobileNetV2: ``features[18]``), for its top logit, as the reference's ``save_heatmaps.py``
does (test identities are not training classes, so there is no "right" class to explain).
The maps come from the maintained ``grad-cam`` package (the ``analysis`` extra); a network
runs in float32, in eval mode, on the frame as the evaluation resizes and normalises it.

With ``--masks DIR`` (person masks laid out as the dataset, see ``make_synthetic.py
--masks``), each map's foreground share is reported: the map's mass inside the person, in
[0, 1], next to the mask's area (the share a uniform map would get).

Writes ``explain.png`` (rows: frames; columns: the frame, then one map per network),
``explain.json`` (every number) and ``explain_maps.npz`` (the maps themselves).
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from vkd_torchreid.apps.analysis.session import AnalysisSession
from vkd_torchreid.apps.analysis.tool import tool_main
from vkd_torchreid.data.base import item_frames
from vkd_torchreid.data.io import read_image
from vkd_torchreid.data.transforms import resize
from vkd_torchreid.models import VKDNet
from vkd_torchreid.synthetic import mask_file
from vkd_torchreid.utils.jsonio import write_json
from vkd_torchreid.utils.plots import save_figure, subplots

DEFAULT_FRAMES = 8
EXTRA_HINT = "pip install 'vkd_torchreid[analysis]' (the grad-cam package)"


class _Logits(nn.Module):
    """A VKD network that returns its logits in eval mode (what Grad-CAM explains)."""

    def __init__(self, model: VKDNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)[1]


def target_layer(model: VKDNet) -> nn.Module:
    """The last convolutional stage: the backbone's last module (its output is pooled)."""
    return model.backbone[-1]


def target_layer_name(model: VKDNet) -> str:
    return "backbone." + list(model.backbone._modules)[-1]


def grad_cam(model: VKDNet, frames: torch.Tensor) -> tuple:
    """Grad-CAM maps ``[B, H, W]`` in [0, 1] of the top logit of each frame ``[B, 3, H, W]``,
    and those top classes ``[B]``.

    Raises:
        ImportError: the ``grad-cam`` package (``analysis`` extra) is missing.
    """
    try:
        from pytorch_grad_cam import GradCAM
    except ImportError as exc:
        raise ImportError(f"explain needs Grad-CAM: {EXTRA_HINT}") from exc
    wrapper = _Logits(model).eval()
    x = frames.float().contiguous()
    with torch.inference_mode(False), torch.enable_grad():
        with torch.no_grad():
            top = wrapper(x).argmax(1)
        with GradCAM(model=wrapper, target_layers=[target_layer(model)]) as cam:
            maps = cam(input_tensor=x, targets=None)  # None: each frame's top logit
    return np.asarray(maps, dtype=np.float32), top.cpu().numpy()


def foreground_share(cam: np.ndarray, mask: np.ndarray) -> float:
    """The map's mass inside the mask, in [0, 1] (NaN for an all-zero map)."""
    total = float(cam.sum())
    return float(cam[mask].sum() / total) if total > 0 else float("nan")


def _read_mask(masks: str, root: str, path: str, size: tuple) -> np.ndarray:
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    file = mask_file(masks, rel)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"--masks {masks}: no mask for {path} (expected {file}, "
                                "the frame's path under data.root with .png)")
    with Image.open(file) as img:
        grey = img.convert("L").resize((size[1], size[0]), Image.NEAREST)
    return np.asarray(grey) > 127


def choose_frames(session: AnalysisSession, count: int, seed: int) -> List[str]:
    """The first frame of ``count`` gallery items drawn with ``seed`` (in gallery order)."""
    gallery = session.items("gallery") or session.items("gallery_img")
    if not gallery:
        raise ValueError(f"{session.dataset} has no gallery to draw frames from")
    if count < 1:
        raise ValueError(f"--frames {count}: expected a positive number of frames")
    rows = np.sort(np.random.default_rng(seed).choice(len(gallery), min(count, len(gallery)),
                                                     replace=False))
    return [item_frames(gallery[int(r)])[0] for r in rows]


def explain(session: AnalysisSession, paths: Sequence[str], masks: str = "") -> Dict[str, Any]:
    """Maps, top classes and foreground shares of every network on ``paths``."""
    if not paths:
        raise ValueError("explain: no frame to explain")
    a = session.dm.augment
    size = (a.height, a.width)
    images = [read_image(p) for p in paths]
    shown = np.stack([resize(img, *size) for img in images])
    batch = torch.stack([session.dm.preprocess_pil_img(img) for img in images]).to(session.device)
    mask = (np.stack([_read_mask(masks, session.cfg.data.root, p, size) for p in paths])
            if masks else None)
    maps, networks = [], []
    for net in session.networks:
        m, top = grad_cam(net.model, batch)  # a channels-last model works as it is
        maps.append(m)
        shares = ([foreground_share(m[j], mask[j]) for j in range(len(paths))]
                  if mask is not None else None)
        finite = [s for s in shares or [] if np.isfinite(s)]
        networks.append({"label": net.label, "weights": os.path.abspath(net.weights),
                         "arch": net.model.arch, "target_layer": target_layer_name(net.model),
                         "top_class": [int(t) for t in top],
                         "foreground_share": None if shares is None else
                         [None if not np.isfinite(s) else s for s in shares],
                         "mean_foreground_share": float(np.mean(finite)) if finite else None})
    frames = [{"path": os.path.abspath(p)} for p in paths]
    if mask is not None:
        for f, m in zip(frames, mask):
            f["mask_area"] = float(m.mean())
    return {"dataset": session.dataset, "input_size": list(size), "method": "Grad-CAM",
            "target": "top logit", "frames": frames,
            "mean_mask_area": float(mask.mean()) if mask is not None else None,
            "networks": networks, "_maps": np.stack(maps, 1), "_shown": shown}


def plot(result: Dict[str, Any], path: str) -> str:
    """Rows: frames; columns: the frame, then each network's map over it."""
    maps, shown = result["_maps"], result["_shown"]
    rows, cols = maps.shape[0], 1 + maps.shape[1]
    h, w = shown.shape[1:3]
    fig, axes = subplots(rows, cols, figsize=(1.3 * cols * max(w / h, 0.5) + 0.6,
                                                1.3 * rows + 0.5), squeeze=False)
    for r in range(rows):
        axes[r][0].imshow(shown[r])
        for c, net in enumerate(result["networks"], start=1):
            axes[r][c].imshow(shown[r])
            axes[r][c].imshow(maps[r, c - 1], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            share = (net["foreground_share"] or [None] * rows)[r]
            if share is not None:
                axes[r][c].set_xlabel(f"fg {share:.2f}", fontsize=7, labelpad=1)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("frame", fontsize=8)
    for c, net in enumerate(result["networks"], start=1):
        mean = net["mean_foreground_share"]
        axes[0][c].set_title(net["label"] + (f"\nfg {mean:.2f}" if mean is not None else ""),
                             fontsize=8)
    return save_figure(fig, path)


def write_outputs(result: Dict[str, Any], out: str) -> Dict[str, str]:
    paths = {"json": os.path.join(out, "explain.json"), "png": os.path.join(out, "explain.png"),
             "npz": os.path.join(out, "explain_maps.npz")}
    os.makedirs(out, exist_ok=True)
    write_json({k: v for k, v in result.items() if not k.startswith("_")}, paths["json"])
    np.savez_compressed(paths["npz"], maps=result["_maps"].astype(np.float16),
                        labels=np.array([n["label"] for n in result["networks"]]),
                        paths=np.array([f["path"] for f in result["frames"]]))
    plot(result, paths["png"])
    return paths


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                   help="gallery frames to explain (the first frame of random gallery items)")
    p.add_argument("--images", nargs="+", default=[], help="explain these files instead")
    p.add_argument("--seed", type=int, default=0, help="of the gallery draw")
    p.add_argument("--masks", default="",
                   help="person masks laid out as the dataset (make_synthetic.py --masks)")


def _run(session: AnalysisSession, args: argparse.Namespace) -> Dict[str, str]:
    if args.masks and not os.path.isdir(args.masks):
        raise FileNotFoundError(f"--masks: not a folder: {args.masks}")
    paths = args.images or choose_frames(session, args.frames, args.seed)
    result = explain(session, paths, args.masks)
    for n in result["networks"]:
        if n["mean_foreground_share"] is not None:
            print(f"{n['label']}: foreground share {n['mean_foreground_share']:.3f} "
                  f"(mask area {result['mean_mask_area']:.3f})")
    return write_outputs(result, args.output)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return tool_main("vkd-reid explain", __doc__ or "", argv, _add_args, _run)


__all__ = ["choose_frames", "explain", "foreground_share", "grad_cam", "main", "plot",
           "target_layer", "write_outputs"]
