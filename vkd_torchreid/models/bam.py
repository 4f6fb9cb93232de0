"""Bottleneck Attention Module (Park et al., BMVC 2018) as the VKD reference uses it.

State-dict layout (ours; :mod:`vkd_torchreid.models.weights` maps the reference's names)::

    channel_gate.fc        Linear(C, C/r)        <- gate_c.gate_c_fc_0
    channel_gate.bn        BatchNorm1d(C/r)      <- gate_c.gate_c_bn_1
    channel_gate.fc_final  Linear(C/r, C)        <- gate_c.gate_c_fc_final
    spatial_gate.reduce    Conv 1x1 C -> C/r     <- gate_s.gate_s_conv_reduce0
    spatial_gate.reduce_bn BatchNorm2d(C/r)      <- gate_s.gate_s_bn_reduce0
    spatial_gate.dil{i}    Conv 3x3 dilation d   <- gate_s.gate_s_conv_di_{i}
    spatial_gate.dil{i}_bn BatchNorm2d(C/r)      <- gate_s.gate_s_bn_di_{i}
    spatial_gate.final     Conv 1x1 C/r -> 1     <- gate_s.gate_s_conv_final
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

#: BAM hyper-parameters of the reference (``model/cbam/bam.py``).
BAM_REDUCTION = 16
BAM_DILATION = 4
BAM_DILATED_CONVS = 2


class BAM(nn.Module):
    """Channel and spatial attention: ``x * (1 + sigmoid(channel(x) * spatial(x)))``.

    Args:
        channels: C, the channels of the input map.
        reduction: channel reduction ratio r of both gates.
        dilation: dilation (and padding) of the 3x3 convolutions of the spatial gate.
        num_dilated: number of dilated 3x3 convolutions.
    """

    def __init__(self, channels: int, reduction: int = BAM_REDUCTION,
                 dilation: int = BAM_DILATION, num_dilated: int = BAM_DILATED_CONVS) -> None:
        super().__init__()
        hidden = channels // reduction
        self.channel_gate = nn.Sequential(OrderedDict([
            ("fc", nn.Linear(channels, hidden)),
            ("bn", nn.BatchNorm1d(hidden)),
            ("relu", nn.ReLU()),
            ("fc_final", nn.Linear(hidden, channels)),
        ]))
        spatial: OrderedDict[str, nn.Module] = OrderedDict([
            ("reduce", nn.Conv2d(channels, hidden, kernel_size=1)),
            ("reduce_bn", nn.BatchNorm2d(hidden)),
            ("reduce_relu", nn.ReLU()),
        ])
        for i in range(num_dilated):
            spatial[f"dil{i}"] = nn.Conv2d(hidden, hidden, kernel_size=3, padding=dilation,
                                           dilation=dilation)
            spatial[f"dil{i}_bn"] = nn.BatchNorm2d(hidden)
            spatial[f"dil{i}_relu"] = nn.ReLU()
        spatial["final"] = nn.Conv2d(hidden, 1, kernel_size=1)
        self.spatial_gate = nn.Sequential(spatial)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference's init: convs kaiming-normal (fan_out), BN weight 1, all biases 0,
        Linear weights torch's default."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[N, C, H, W]``. Returns the attended map ``[N, C, H, W]``."""
        channel = self.channel_gate(x.mean(dim=(2, 3)))[:, :, None, None]  # [N, C, 1, 1]
        spatial = self.spatial_gate(x)  # [N, 1, H, W]
        return x * (1 + torch.sigmoid(channel * spatial))
