"""The dual-decoder SegNet-like network of AtlasNet (Chassagnon et al., Radiology 2020, Fig 2).

One encoder, two identical decoders: one predicts the lung (background / lung), the other the
disease (background / ILD). The encoder has five blocks of two ``conv 3x3 → batch norm → ReLU``;
the first block lifts the input to ``64`` channels and each further block doubles them (``1024``
at the bottom). Max-pooling (2x2) follows every block but the last, so the bottleneck is at
1/16 of the input resolution. Each decoder mirrors the encoder and ends with a 1x1 convolution;
each level upsamples x2, then refines with ``conv → BN → ReLU`` blocks. How it upsamples is
``upsampling``: ``"indices"`` (default) as SegNet, with the encoder's max-pooling indices
(``MaxUnpool2d``); ``"nearest"`` as the paper's Keras code words it ("upsampling layers",
``UpSampling2D``: each value repeated 2x2).

Tensors are ``[N, C, H, W]`` = ``[batch, channel, j (row), i (column)]`` of axial slices;
``H`` and ``W`` must be multiples of ``2 ** (depth - 1)``.

``width`` multiplies every channel count (``1.0`` is the paper's 64→1024, ``1/8`` gives 8→128)
so that tests and CPU users can run the same architecture cheaply.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


def scaled_channels(base_channels: int, width: float, depth: int) -> list[int]:
    """Channel counts of the encoder blocks: ``base * width * 2**b`` (at least 1 each).

    Raises:
        ValueError: if ``base_channels`` < 1, ``width`` <= 0 or ``depth`` < 1.
    """
    if base_channels < 1:
        raise ValueError(f"base_channels must be at least 1, got {base_channels}")
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    first = max(1, round(base_channels * width))
    return [first * 2**b for b in range(depth)]


def init_weights(module: nn.Module) -> None:
    """He-normal convolutions (fan-out, ReLU), unit batch-norm scales, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """``conv 3x3 (same padding, no bias) → BatchNorm2d → ReLU``."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class ConvBlock(nn.Sequential):
    """``convs`` successions of ``conv 3x3 → BN → ReLU``, ``in_channels → out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, convs: int = 2) -> None:
        if convs < 1:
            raise ValueError(f"convs must be at least 1, got {convs}")
        layers = conv_bn_relu(in_channels, out_channels)
        for _ in range(convs - 1):
            layers += conv_bn_relu(out_channels, out_channels)
        super().__init__(*layers)


Upsampling = Literal["indices", "nearest"]
UPSAMPLING_MODES: tuple[Upsampling, ...] = ("indices", "nearest")


class SegNetDecoder(nn.Module):
    """One decoding branch: ``reduce → upsample x2 → block`` per level, then 1x1.

    Args:
        channels: encoder block channels, shallow to deep (``[64, 128, 256, 512, 1024]``).
        classes: output channels (logits).
        convs: conv-BN-ReLU per block.
        upsampling: ``"indices"`` (unpool with the encoder's max-pooling indices) or
            ``"nearest"`` (repeat each value 2x2).
    """

    def __init__(
        self, channels: list[int], classes: int, convs: int = 2, upsampling: Upsampling = "indices"
    ) -> None:
        super().__init__()
        if upsampling not in UPSAMPLING_MODES:
            raise ValueError(f"upsampling must be one of {UPSAMPLING_MODES}, got {upsampling!r}")
        self.upsampling = upsampling
        levels = len(channels) - 1
        # Level b (deep to shallow): bring c[b+1] down to c[b] at the coarse size so the unpooling
        # indices (recorded on c[b] channels) apply, unpool, then refine at the finer size.
        self.reduce = nn.ModuleList(
            nn.Sequential(*conv_bn_relu(channels[b + 1], channels[b])) for b in range(levels)
        )
        self.refine = nn.ModuleList(
            ConvBlock(channels[b], channels[b], convs) for b in range(levels)
        )
        self.unpool = nn.MaxUnpool2d(kernel_size=2, stride=2)
        self.head = nn.Conv2d(channels[0], classes, kernel_size=1)

    def forward(
        self, bottom: torch.Tensor, indices: list[torch.Tensor], sizes: list[torch.Size]
    ) -> torch.Tensor:
        x = bottom
        for b in reversed(range(len(self.reduce))):
            x = self.reduce[b](x)
            if self.upsampling == "indices":
                x = self.unpool(x, indices[b], output_size=sizes[b])
            else:
                x = nn.functional.interpolate(x, size=sizes[b], mode="nearest")
            x = self.refine[b](x)
        logits: torch.Tensor = self.head(x)
        return logits


class DualDecoderSegNet(nn.Module):
    """AtlasNet's per-template network: shared SegNet encoder, a lung and a disease decoder.

    Args:
        in_channels: input channels (1: a normalised CT slice).
        base_channels: channels of the first block at ``width=1`` (paper: 64).
        depth: encoder blocks (paper: 5, i.e. 64→1024 and four poolings).
        width: channel multiplier (``1.0`` paper; ``0.125`` CPU; ``1/32`` tests).
        convs_per_block: conv-BN-ReLU per block (paper: 2).
        lung_classes: lung decoder classes (2: background, lung).
        disease_classes: disease decoder classes (2: background, ILD).
        upsampling: how the decoders upsample (see :class:`SegNetDecoder`).

    ``forward(x)`` takes ``[N, in_channels, H, W]`` and returns ``(lung_logits,
    disease_logits)``, each ``[N, classes, H, W]``.

    Raises:
        ValueError: for a non-positive hyper-parameter; in ``forward``, for an input whose
            ``H``/``W`` is not a multiple of ``2 ** (depth - 1)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 64,
        depth: int = 5,
        width: float = 1.0,
        convs_per_block: int = 2,
        lung_classes: int = 2,
        disease_classes: int = 2,
        upsampling: Upsampling = "indices",
    ) -> None:
        super().__init__()
        if in_channels < 1 or lung_classes < 2 or disease_classes < 2:
            raise ValueError("in_channels must be >= 1 and each decoder needs >= 2 classes")
        channels = scaled_channels(base_channels, width, depth)
        self.depth = depth
        self.channels = channels
        self.encoder = nn.ModuleList(
            ConvBlock(in_channels if b == 0 else channels[b - 1], channels[b], convs_per_block)
            for b in range(depth)
        )
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2, return_indices=True)
        self.lung_decoder = SegNetDecoder(channels, lung_classes, convs_per_block, upsampling)
        self.disease_decoder = SegNetDecoder(channels, disease_classes, convs_per_block, upsampling)
        init_weights(self)

    @property
    def size_multiple(self) -> int:
        """``H`` and ``W`` must be multiples of this (``2 ** (depth - 1)``)."""
        return int(2 ** (self.depth - 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input_size(x, self.size_multiple)
        indices: list[torch.Tensor] = []
        sizes: list[torch.Size] = []
        for b, block in enumerate(self.encoder):
            x = block(x)
            if b < self.depth - 1:
                sizes.append(x.shape[-2:])
                x, index = self.pool(x)
                indices.append(index)
        lung: torch.Tensor = self.lung_decoder(x, indices, sizes)
        disease: torch.Tensor = self.disease_decoder(x, indices, sizes)
        return lung, disease


def check_input_size(x: torch.Tensor, multiple: int) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[N, C, H, W]`` with ``H``, ``W`` multiples."""
    if x.ndim != 4:
        raise ValueError(f"expected a [N, C, H, W] tensor, got shape {tuple(x.shape)}")
    height, width = int(x.shape[-2]), int(x.shape[-1])
    if height % multiple or width % multiple:
        raise ValueError(f"slice size {height}x{width} must be a multiple of {multiple}")
