"""The training probe of the data path: it runs real steps, and finds the first module whose
output is not finite."""
from __future__ import annotations

import torch
from torch import nn

from vkd_torchreid.apps.train_probe import first_nonfinite_module, probe, probe_args


class _Net(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.c = nn.Linear(4, 2)
        with torch.no_grad():
            self.b.weight.fill_(scale)

    def forward_features(self, x: torch.Tensor):
        return self.c(torch.log(self.b(self.a(x)).abs() - 1e-30))


def test_first_nonfinite_module_names_where_it_starts():
    x = torch.randn(3, 4)
    assert first_nonfinite_module(_Net(1.0), x) == ""
    assert first_nonfinite_module(_Net(float("inf")), x) == "b"  # not a, not c after it


def test_probe_runs_real_steps_and_reports_them():
    (row,) = probe(probe_args(2, model="vkd_resnet18", p=2, k=2, n=2, height=32, width=16,
                              workers=0, amp=""), ["cpu"])
    assert row["decode_device"] == "cpu" and row["steps"] == 2
    assert row["nonfinite_inputs"] == 0 and "failed_at" not in row


def test_gpu_check_on_the_cpu_writes_its_report(tmp_path):
    """tools/gpu_check.py with --device cpu (torchvision's libjpeg standing in for nvJPEG):
    the decode report in the JSON; the benchmarks' argument lists parse as the benchmark
    command's (they run only with --benchmarks, on a GPU)."""
    import json

    from vkd_torchreid.apps import gpu_check
    from vkd_torchreid.apps.benchmark import build_parser

    out = tmp_path / "report.json"
    assert gpu_check.main(["--device", "cpu", "--skip-tests", "--frames", "8",
                           "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["sources"]) == {"256x128", "320x160", "192x96"}
    assert report["sources"]["256x128"]["decode_max"] == 0 and report["tests_exit_status"] == 0
    assert "memory_reuse" not in report  # CUDA only
    for argv in (gpu_check.PIPELINE_ARGS, gpu_check.STEP_ARGS):
        args = build_parser().parse_args(argv)
        assert (args.p, args.k, args.n, args.height, args.width) == (8, 4, 8, 256, 128)
