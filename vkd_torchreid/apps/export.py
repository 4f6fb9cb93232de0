"""ONNX export of a trained network: an image model and a tracklet model, checked against PyTorch.

    vkd-reid export --config-file vkd_mars_r50 \
        --weights log/vkd_mars_r50/model/latest.pth.tar --output vkd_mars_r50.onnx
    vkd-reid export --config-file configs/teacher_mars_r50.yaml \
        --weights path/to/released/experiment_folder --output teacher.onnx model.name vkd_resnet50

Writes two files:

- ``X.onnx``: ``images`` float32 ``[batch, 3, H, W]`` (resized to ``data.height`` x
  ``data.width``, scaled to [0, 1], normalised with ``data.norm_mean``/``data.norm_std``) ->
  ``embeddings`` float32 ``[batch, D]``: the per-frame embedding of the network in eval mode
  (pooled backbone features before the BNNeck, not L2-normalised);
- ``X_tracklet.onnx``: ``tracklets`` float32 ``[batch, frames, 3, H, W]`` ->
  ``set_embeddings`` float32 ``[batch, D]``: the mean over the frames of the per-frame
  embeddings, as our evaluation builds a tracklet's embedding.

The architecture and class count come from the weights (ours, torchreid's, or a released
reference experiment folder); ``model.name`` must agree where the weights declare one. The
export runs on the CPU in float32 (``test.amp`` and ``train.channels_last`` do not apply).
``data.root`` is never read. Each file is written to a temporary name, checked with
onnxruntime against PyTorch on a random batch, and only then renamed: a failed export leaves
no file that looks complete. Needs ``pip install vkd_torchreid[export]``.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from vkd_torchreid.apps.common import (  # noqa: F401  (EXIT_ERROR: the API)
    EXIT_ERROR,
    add_config_arguments,
    command_parser,
    config_of,
    guarded,
    parse,
)
from vkd_torchreid.apps.onnx_check import (  # noqa: F401  (TOLERANCE, OnnxCheck: the API)
    TOLERANCE,
    ExportError,
    OnnxCheck,
    check_onnx,
    require_export_deps,
)
from vkd_torchreid.models import open_network
from vkd_torchreid.models.vkdnet import VKDNet
from vkd_torchreid.utils.logs import one_line

logger = logging.getLogger(__name__)

IMAGE_INPUT, IMAGE_OUTPUT = "images", "embeddings"
TRACKLET_INPUT, TRACKLET_OUTPUT = "tracklets", "set_embeddings"
TRACKLET_SUFFIX = "_tracklet"
#: Shapes of the example inputs the graph is traced with, and of the (different) random
#: inputs it is checked with, so that the check also exercises the dynamic dimensions.
_TRACE_BATCH, _TRACE_FRAMES = 2, 3
_CHECK_BATCH, _CHECK_TRACKLETS, _CHECK_FRAMES = 3, 2, 4


class TrackletModel(nn.Module):
    """``[B, T, 3, H, W]`` -> ``[B, D]``: the mean over the T frames of the per-frame embeddings
    of ``model`` (in eval mode), as :func:`vkd_torchreid.engine.extract.extract` builds a
    tracklet's embedding."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tracklets: torch.Tensor) -> torch.Tensor:
        b, t = tracklets.shape[0], tracklets.shape[1]
        frames = tracklets.reshape(b * t, *tracklets.shape[2:])
        feats = self.model(frames).float()  # [B*T, D]
        return feats.view(b, t, -1).mean(dim=1)


def tracklet_path(output: str) -> str:
    """``X.onnx`` -> ``X_tracklet.onnx`` (same folder)."""
    root, ext = os.path.splitext(output)
    return f"{root}{TRACKLET_SUFFIX}{ext}"


def load_export_model(config_arch: str, weights: str, last_stride: int = 1,
                      trust: bool = False) -> VKDNet:
    """The network of ``weights`` to export: its declared architecture must be
    ``config_arch`` (the config's ``model.name``); see
    :func:`vkd_torchreid.models.open_network`; in eval mode."""
    if not weights:
        raise ValueError("no weights to export: pass --weights (or set model.load_weights)")
    return open_network(weights, config_arch, last_stride=last_stride, trust=trust).eval()


def _export(module: nn.Module, example: torch.Tensor, path: str, input_name: str,
            output_name: str, dynamic: dict) -> None:
    # The default (dynamo) exporter handles every one of our architectures (ResNet, BAM,
    # DenseNet, MobileNetV2) with dynamic batch and frame dimensions, so there is no
    # fallback to the TorchScript exporter (dynamo=False). One file (no external data): our
    # networks are far below protobuf's 2 GB limit.
    try:
        torch.onnx.export(module, (example,), path, dynamo=True, verbose=False,
                          input_names=[input_name], output_names=[output_name],
                          dynamic_shapes=(dynamic,), external_data=False)
    except Exception as exc:  # the exporter raises many kinds; all mean "no file"
        raise ExportError(f"ONNX export of {type(module).__name__} failed: "
                          f"{type(exc).__name__}: {one_line(exc)}") from exc


def _temp_name(path: str) -> str:
    """A hidden, unique temporary file next to ``path`` (so that the rename is atomic)."""
    folder, base = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=folder)
    os.close(fd)
    return tmp


def _finish(path: str) -> None:
    """Flushes a finished temporary file to disk and gives it the permissions a plain
    ``open(path, "w")`` would (``mkstemp`` makes it private)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def export_onnx(model: nn.Module, height: int, width: int, output: str,
                on_check: Optional[Callable[[OnnxCheck], None]] = None,
                seed: int = 0) -> Tuple[str, str]:
    """Exports ``model`` as the image model ``output`` and the tracklet model
    ``X_tracklet.onnx`` (see the module docstring), each checked with onnxruntime against
    PyTorch on a random batch before it gets its name.

    Args:
        model: one of our networks (any device, dtype, mode or memory format: a float32
            CPU copy in eval mode is exported; ``model`` itself is not changed).
        height, width: the input frame size (``data.height``, ``data.width``).
        output: the image model's path; its folder is created if needed.
        on_check: called with each passed :class:`OnnxCheck` (to print it).
        seed: of the random check inputs.

    Returns:
        ``(image model path, tracklet model path)``.

    Raises:
        ExportError: the export failed, or onnxruntime and PyTorch differ by more than
            ``1e-4 * (1 + max |PyTorch output|)``. Neither file is written then (an existing
            file of that name is left as it was).
        ValueError: ``output`` names a folder.
        OSError: the folder cannot be written.
    """
    if not os.path.basename(output) or os.path.isdir(output):
        raise ValueError(f"--output must name a file (X.onnx), got {output!r}")
    require_export_deps()
    net = copy.deepcopy(model).to("cpu", torch.float32)
    net = net.to(memory_format=torch.contiguous_format).eval()
    tracklet_net = TrackletModel(net).eval()
    paths = (output, tracklet_path(output))
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    batch, frames = torch.export.Dim("batch"), torch.export.Dim("frames")
    jobs = [  # (module, trace input, check input, input name, output name, dynamic dims)
        (net, torch.randn(_TRACE_BATCH, 3, height, width, generator=gen),
         torch.randn(_CHECK_BATCH, 3, height, width, generator=gen),
         IMAGE_INPUT, IMAGE_OUTPUT, {0: batch}),
        (tracklet_net, torch.randn(_TRACE_BATCH, _TRACE_FRAMES, 3, height, width, generator=gen),
         torch.randn(_CHECK_TRACKLETS, _CHECK_FRAMES, 3, height, width, generator=gen),
         TRACKLET_INPUT, TRACKLET_OUTPUT, {0: batch, 1: frames}),
    ]
    temps: List[str] = []
    checks: List[OnnxCheck] = []
    try:
        for path, (module, example, check_input, in_name, out_name, dims) in zip(paths, jobs):
            temps.append(_temp_name(path))
            _export(module, example, temps[-1], in_name, out_name, dims)
            check = check_onnx(temps[-1], module, check_input, in_name, name=path)
            if not check.ok:
                raise ExportError(f"exported model does not match PyTorch: {check}")
            checks.append(check)
        for tmp in temps:
            _finish(tmp)
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)
        temps = []
    finally:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.remove(tmp)
    with contextlib.suppress(OSError):  # the renames survive a crash (POSIX)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for check in checks:
        logger.info("%s", check)
        if on_check is not None:
            on_check(check)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``vkd-reid export``: exports and checks the two ONNX models; returns the exit code."""
    parser = command_parser("vkd-reid export", __doc__)
    parser.add_argument("--weights", default="",
                        help="our checkpoint, torchreid's, or a released reference experiment "
                             "folder (default: model.load_weights)")
    parser.add_argument("--output", required=True,
                        help="the image model X.onnx; the tracklet model is X_tracklet.onnx")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow legacy pickled checkpoints (torch.load weights_only=False)")
    add_config_arguments(parser, data_shortcuts=False)
    return guarded(lambda: _export_command(parse(parser, argv)), (ExportError,))


def _export_command(args: Any) -> int:
    """Exports the network of parsed arguments (model.name, data.height/width,
    model.last_stride of the config) and prints what was written."""
    start = time.time()
    require_export_deps()
    cfg = config_of(args, *(["model.trust_checkpoint", "True"] if args.trust_checkpoint
                            else []))
    model = load_export_model(cfg.model.name, args.weights or cfg.model.load_weights,
                              last_stride=cfg.model.last_stride,
                              trust=cfg.model.trust_checkpoint)
    height, width = int(cfg.data.height), int(cfg.data.width)
    image, tracklet = export_onnx(model, height, width, args.output,
                                  on_check=lambda check: print(f"check {check}"))
    dim = model.feature_dim
    print(f"exported {model.arch} ({model.num_classes} classes) at {height}x{width} in "
          f"{time.time() - start:.1f} s:")
    print(f"  {image}: {IMAGE_INPUT} [batch, 3, {height}, {width}] -> {IMAGE_OUTPUT} "
          f"[batch, {dim}]")
    print(f"  {tracklet}: {TRACKLET_INPUT} [batch, frames, 3, {height}, {width}] -> "
          f"{TRACKLET_OUTPUT} [batch, {dim}]")
    print(f"inputs: RGB resized to {height}x{width} (Pillow bicubic), scaled to [0, 1], "
          f"normalised with mean {list(cfg.data.norm_mean)} std {list(cfg.data.norm_std)}")
    return 0
