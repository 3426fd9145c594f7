"""The shared encoders: Conv-4 (the few-shot workhorse) and small MLPs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (64 filters), batch norm, ReLU, 2x2 max-pool: one Conv-4 block."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class Conv4(nn.Module):
    """Four conv blocks, as in Vinyals et al. (2016) and Snell et al. (2017).

    A ``(batch, 1, 28, 28)`` image shrinks 28 -> 14 -> 7 -> 3 -> 1, so the output is a
    ``(batch, hidden)`` embedding: 64-d with the default width. ``image_shape`` declares that
    size, ``(in_channels, 28, 28)`` (``None`` for other depths): the few-shot methods built on a
    Conv-4 refuse other images with one sentence (:class:`helpers.fewshot.FewShotMethod`).
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, depth: int = 4) -> None:
        super().__init__()
        channels = [in_channels] + [hidden] * depth
        self.blocks = nn.Sequential(
            *[conv_block(a, b) for a, b in zip(channels[:-1], channels[1:])]
        )
        self.out_features = hidden
        self.image_shape = (in_channels, 28, 28) if depth == 4 else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.blocks(images).flatten(start_dim=1)


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """A plain multilayer perceptron: ``mlp([1, 40, 40, 1])`` is the sinusoid net of MAML."""
    if len(sizes) < 2:
        raise ValueError(
            f"mlp needs at least an input and an output size, got sizes={list(sizes)}."
        )
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)
