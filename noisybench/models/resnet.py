"""ResNets for 32x32 inputs (CIFAR): a 3x3 stride-1 stem and no max-pool.

`ResNet` follows He et al. 2016 as adapted in kuangliu/pytorch-cifar, the `resnet.py` DAL
(XiuchuanLi/DAL) ships: stages of BasicBlocks with 64/128/256/512 channels and strides 1/2/2/2,
global average pooling (DAL's `avg_pool2d(., 4)` equals it at 32x32) and a linear head.
ResNet-18 = [2, 2, 2, 2] blocks, ResNet-34 = [3, 4, 6, 3] (the GCE paper's CIFAR model).
`preact=True` gives the pre-activation variant (He et al., ECCV 2016) used by DivideMix and ELR.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from noisybench.errors import ConfigError
from noisybench.schema import PositiveInt


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        return self.conv2(F.relu(self.bn2(out))) + skip


class ResNet(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, blocks: Sequence[PositiveInt] = (2, 2, 2, 2),
                 width: PositiveInt = 64, preact: bool = False) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"a CIFAR ResNet does not fit inputs of shape {tuple(input_shape)}: it needs "
                              "(C, H, W) images; use model=mlp or model=cnn1d for this dataset")
        block = PreActBlock if preact else BasicBlock
        self.stem = nn.Conv2d(int(input_shape[0]), width, 3, 1, 1, bias=False)
        self.stem_bn = None if preact else nn.BatchNorm2d(width)
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            for j in range(int(n)):
                layers.append(block(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.final_bn = nn.BatchNorm2d(cin) if preact else None  # pre-activation nets end with BN-ReLU
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        if self.stem_bn is not None:
            out = F.relu(self.stem_bn(out))
        out = self.layers(out)
        if self.final_bn is not None:
            out = F.relu(self.final_bn(out))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))
