"""Memory encoder: a slice's image features fused with its predicted mask -> one memory-bank entry."""

from __future__ import annotations

import torch
from torch import nn

from .common import LayerNorm2d


class MaskDownSampler(nn.Module):
    """Four stride-2 3x3 convolutions (1 -> 4 -> 16 -> 64 -> 256 channels) then a 1x1 to ``embed_dim``:
    (B, 1, S, S) -> (B, embed_dim, S/16, S/16)."""

    def __init__(self, embed_dim: int, num_downsamplings: int = 4) -> None:
        super().__init__()
        layers = []
        channels = 1
        for _ in range(num_downsamplings):
            layers += [nn.Conv2d(channels, channels * 4, kernel_size=3, stride=2, padding=1),
                       LayerNorm2d(channels * 4), nn.GELU()]
            channels *= 4
        layers.append(nn.Conv2d(channels, embed_dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(mask)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7, LayerNorm, pointwise MLP (x4) with layer scale, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    def __init__(self, dim: int, mem_dim: int, fuser_layers: int) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(dim)
        self.pix_feat_proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.fuser = Fuser(dim, fuser_layers)
        self.out_proj = nn.Conv2d(dim, mem_dim, kernel_size=1)

    def forward(self, image_features: torch.Tensor, mask_for_memory: torch.Tensor) -> torch.Tensor:
        """image_features (B, C, s, s), mask_for_memory (B, 1, 16s, 16s) already scaled to logits
        -> (B, mem_dim, s, s)."""
        x = self.pix_feat_proj(image_features) + self.mask_downsampler(mask_for_memory)
        return self.out_proj(self.fuser(x))
