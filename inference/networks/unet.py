"""The U-Net comparator of Chassagnon et al. 2020 (Fig 3; Ronneberger et al. 2015), in 2D.

Five levels of two ``conv 3x3 → batch norm → ReLU`` (64→1024 channels at ``width=1``), 2x2
max-pooling between levels, learned 2x2 transposed-convolution upsampling, and skip connections
that concatenate the encoder features at each level. Unlike the 2015 paper the convolutions are
padded ("same") and batch-normalised, so the output has the input's size. One head predicts
``classes`` logits; with 3 classes these are the label-map values (0 background, 1 lung without
ILD, 2 ILD).

Tensors are ``[N, C, H, W]`` = ``[batch, channel, j (row), i (column)]`` of axial slices;
``H`` and ``W`` must be multiples of ``2 ** (depth - 1)``.
"""

from __future__ import annotations

import torch
from torch import nn

from inference.networks.atlasnet import ConvBlock, check_input_size, init_weights, scaled_channels


class UNet2D(nn.Module):
    """2D U-Net.

    Args:
        in_channels: input channels (1: a normalised CT slice).
        classes: output logits (3: background, lung without ILD, ILD).
        base_channels: channels of the first level at ``width=1`` (64).
        depth: levels (5: 64→1024, four poolings).
        width: channel multiplier (``1.0`` full; ``0.125`` CPU; ``1/32`` tests).
        convs_per_block: conv-BN-ReLU per level (2).

    ``forward(x)``: ``[N, in_channels, H, W]`` → logits ``[N, classes, H, W]``.

    Raises:
        ValueError: for a non-positive hyper-parameter; in ``forward``, for ``H``/``W`` not a
            multiple of ``2 ** (depth - 1)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 3,
        base_channels: int = 64,
        depth: int = 5,
        width: float = 1.0,
        convs_per_block: int = 2,
    ) -> None:
        super().__init__()
        if in_channels < 1 or classes < 2:
            raise ValueError("in_channels must be >= 1 and classes >= 2")
        channels = scaled_channels(base_channels, width, depth)
        self.depth = depth
        self.channels = channels
        self.down = nn.ModuleList(
            ConvBlock(in_channels if b == 0 else channels[b - 1], channels[b], convs_per_block)
            for b in range(depth)
        )
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(channels[b + 1], channels[b], kernel_size=2, stride=2)
            for b in range(depth - 1)
        )
        self.up = nn.ModuleList(
            ConvBlock(2 * channels[b], channels[b], convs_per_block) for b in range(depth - 1)
        )
        self.head = nn.Conv2d(channels[0], classes, kernel_size=1)
        init_weights(self)

    @property
    def size_multiple(self) -> int:
        """``H`` and ``W`` must be multiples of this (``2 ** (depth - 1)``)."""
        return int(2 ** (self.depth - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.size_multiple)
        skips: list[torch.Tensor] = []
        for b, block in enumerate(self.down):
            x = block(x)
            if b < self.depth - 1:
                skips.append(x)
                x = self.pool(x)
        for b in reversed(range(self.depth - 1)):
            x = self.upsample[b](x)
            x = self.up[b](torch.cat([skips[b], x], dim=1))
        logits: torch.Tensor = self.head(x)
        return logits
