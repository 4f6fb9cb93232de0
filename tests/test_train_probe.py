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
