"""The checks of an ONNX export: its dependencies are installed, and onnxruntime computes what
PyTorch does (:func:`check_onnx`, within :data:`TOLERANCE`)."""
from __future__ import annotations

import dataclasses
import importlib
from typing import Optional, Tuple

import torch
from torch import nn

from vkd_torchreid.utils.logs import one_line

#: A check passes when max |onnxruntime - PyTorch| <= TOLERANCE * (1 + max |PyTorch|).
TOLERANCE = 1e-4
#: What the export needs besides torch: the ONNX format, the dynamo exporter's translator
#: (torch.onnx.export(dynamo=True) requires onnxscript) and the runtime for the check.
EXPORT_DEPS = ("onnx", "onnxscript", "onnxruntime")
INSTALL_HINT = "pip install vkd_torchreid[export]"


class ExportError(RuntimeError):
    """The export cannot run, failed, or its result does not match PyTorch; one line."""


@dataclasses.dataclass(frozen=True)
class OnnxCheck:
    """onnxruntime against PyTorch on one random input.

    Attributes:
        path: the ONNX file checked (the final name, once renamed).
        input_shape: the shape of the random input.
        max_abs_diff: max |onnxruntime - PyTorch| over the output.
        max_abs_output: max |PyTorch| over the output.
    """

    path: str
    input_shape: Tuple[int, ...]
    max_abs_diff: float
    max_abs_output: float

    @property
    def bound(self) -> float:
        return TOLERANCE * (1.0 + self.max_abs_output)

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.bound  # False for a NaN difference

    def __str__(self) -> str:
        shape = "x".join(str(s) for s in self.input_shape)
        return (f"{self.path}: onnxruntime vs PyTorch on a random [{shape}] input: max abs diff "
                f"{self.max_abs_diff:.3g} {'<=' if self.ok else 'not <='} {self.bound:.3g} "
                f"(1e-4 * (1 + max |output| {self.max_abs_output:.3g})): "
                f"{'ok' if self.ok else 'FAILED'}")


def require_export_deps() -> None:
    """Raises :class:`ExportError` naming the install command if a dependency is missing."""
    missing = []
    for name in EXPORT_DEPS:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}: {INSTALL_HINT}")


def check_onnx(path: str, reference: nn.Module, inputs: torch.Tensor, input_name: str,
               name: Optional[str] = None) -> OnnxCheck:
    """Runs ``path`` with onnxruntime (CPU) on ``inputs`` and compares with ``reference``.

    Args:
        name: the file name to report (``path`` by default).
    """
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(path)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {input_name: inputs.numpy()})
    except Exception as exc:  # onnx/onnxruntime raise their own types
        raise ExportError(f"{name or path}: onnxruntime cannot run the exported model: "
                          f"{type(exc).__name__}: {one_line(exc)}") from exc
    with torch.inference_mode():
        want = reference(inputs).float()
    got_t = torch.from_numpy(got).float()
    if got_t.shape != want.shape:
        raise ExportError(f"{name or path}: onnxruntime output {tuple(got_t.shape)} but PyTorch "
                          f"{tuple(want.shape)}")
    diff = (got_t - want).abs().max().item() if want.numel() else 0.0
    top = want.abs().max().item() if want.numel() else 0.0
    return OnnxCheck(name or path, tuple(inputs.shape), float(diff), float(top))


__all__ = ["EXPORT_DEPS", "INSTALL_HINT", "TOLERANCE", "ExportError", "OnnxCheck", "check_onnx",
           "require_export_deps"]
