"""EfficientTAM image encoder: a plain ViT trunk (ViTDet style) and its one-level neck.

A (B, 3, 512, 512) image becomes one (B, d, 32, 32) feature map: 16 px patches, blocks that attend within
windows except the global ones, then a 1x1 and a 3x3 convolution, each followed by a channel LayerNorm.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d
from .config import ViTConfig
from .image_encoder import MultiScaleBlock, PatchEmbed


class ViT(nn.Module):
    """Patch embedding, absolute position embedding, equal-width blocks; -> (B, C, H/16, W/16)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(dim, kernel_size=16, stride=16, padding=0)
        # One position per pretraining patch plus one for a class token that is dropped here.
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.pretrain_grid**2, dim))
        # A ViT block is a Hiera block that keeps its width and does not pool (its MLP is 4x wide too).
        self.blocks = nn.ModuleList(
            MultiScaleBlock(dim, dim, config.num_heads, config.window_size if i in config.window_blocks else 0, None)
            for i in range(config.depth)
        )
        # The output is taken after the last global block; blocks after it (none in the official configs)
        # would not change it.
        self.output_block = config.global_blocks[-1]
        self.grid = config.pretrain_grid

    def _position_embedding(self, height: int, width: int) -> torch.Tensor:
        """(1, height, width, C): the stored grid without its class token, resized bicubically if needed."""
        grid = self.pos_embed[:, 1:].reshape(1, self.grid, self.grid, -1)
        if (height, width) == (self.grid, self.grid):
            return grid
        resized = F.interpolate(grid.permute(0, 3, 1, 2), size=(height, width), mode="bicubic", align_corners=False)
        return resized.permute(0, 2, 3, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image)
        x = x + self._position_embedding(*x.shape[1:3])
        for block in self.blocks[: self.output_block + 1]:
            x = block(x)
        return x.permute(0, 3, 1, 2)


class ViTDetNeck(nn.Module):
    """1x1 convolution to d_model, LayerNorm, 3x3 convolution, LayerNorm (no biases: the norms have them)."""

    def __init__(self, dim: int, d_model: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Sequential(OrderedDict(
            conv_1x1=nn.Conv2d(dim, d_model, kernel_size=1, bias=False),
            norm_0=LayerNorm2d(d_model),
            conv_3x3=nn.Conv2d(d_model, d_model, kernel_size=3, padding=1, bias=False),
            norm_1=LayerNorm2d(d_model),
        ))])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.convs[0](features)


class ViTImageEncoder(nn.Module):
    def __init__(self, config: ViTConfig, d_model: int) -> None:
        super().__init__()
        self.trunk = ViT(config)
        self.neck = ViTDetNeck(config.embed_dim, d_model)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, d_model, S/16, S/16)."""
        return self.neck(self.trunk(image))
