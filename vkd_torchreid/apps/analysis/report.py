"""The analyses of a finished run with several networks (the demo's teacher, student and
control): the ``compare`` chart, the ``gallery-curve`` and the ``explain`` grid, written into
``<run>/analysis`` from one feature extraction per network."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional, Sequence

from vkd_torchreid.apps.analysis import compare, explain, gallery_curve
from vkd_torchreid.apps.analysis.session import AnalysisSession
from vkd_torchreid.utils import checkpoint as ckpt_io

logger = logging.getLogger(__name__)

ANALYSIS_DIR = "analysis"
EXPLAIN_FRAMES = 8


def run_report(cfg: Any, run_dir: str, names: Sequence[str], masks: str = "",
               datamanager: Optional[Any] = None) -> Dict[str, str]:
    """Writes the analyses of the runs ``<run_dir>/<name>`` (each with ``results.json`` and
    ``model/latest.pth.tar``) into ``<run_dir>/analysis``; returns the PNGs written. Without
    the ``analysis`` extra, Grad-CAM is skipped with one log line."""
    out = os.path.join(run_dir, ANALYSIS_DIR)
    pictures = {"compare": compare.write_outputs(
        compare.compare([os.path.join(run_dir, n) for n in names]), out)["png"]}
    weights = [os.path.join(run_dir, n, "model", ckpt_io.LATEST_NAME) for n in names]
    session = AnalysisSession(cfg, weights, names, out, datamanager=datamanager)
    curve = gallery_curve.gallery_curve(session)
    pictures["gallery_curve"] = gallery_curve.write_outputs(curve, out)["png"]
    try:
        frames = explain.choose_frames(session, EXPLAIN_FRAMES, seed=0)
        result = explain.explain(session, frames, masks if os.path.isdir(masks) else "")
        pictures["explain"] = explain.write_outputs(result, out)["png"]
    except ImportError as exc:
        logger.info("Grad-CAM skipped (%s)", exc)
    session.save()
    return pictures


__all__ = ["ANALYSIS_DIR", "run_report"]
