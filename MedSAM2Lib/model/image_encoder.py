"""Image encoder: Hiera trunk (multi-scale windowed ViT) and FPN neck.

A (B, 3, 512, 512) image becomes three feature maps: (B, d, 128, 128), (B, d, 64, 64), (B, d, 32, 32).
The 16x16 stage feeds the neck's top-down path but is not returned ("scalp" 1).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, attention
from .config import HieraConfig


def _pad_to_multiple(x: torch.Tensor, window: int) -> torch.Tensor:
    """Zero-pad (B, H, W, C) at the bottom/right so H and W are multiples of window."""
    height, width = x.shape[1:3]
    pad_h = (window - height % window) % window
    pad_w = (window - width % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, window, window, C), padding H and W up to multiples of window."""
    x = _pad_to_multiple(x, window)
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, channels)


def window_unpartition(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`, cropping the padding: -> (B, height, width, C)."""
    padded_h = -(-height // window) * window
    padded_w = -(-width // window) * window
    batch = windows.shape[0] // ((padded_h // window) * (padded_w // window))
    x = windows.reshape(batch, padded_h // window, padded_w // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, -1)
    return x[:, :height, :width, :]


def _max_pool_hw(x: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    """Apply a 2D pooling module to a channels-last (B, H, W, C) tensor."""
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention whose queries can be max-pooled (2x downsampling at stage starts)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, dim) -> (B, H', W', dim_out), H' = H / q_stride when pooling."""
        batch, height, width, _ = x.shape
        q, k, v = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).unbind(2)
        if self.q_pool is not None:
            q = _max_pool_hw(q.reshape(batch, height, width, -1), self.q_pool)
            height, width = q.shape[1:3]
            q = q.reshape(batch, height * width, self.num_heads, -1)
        x = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(x.transpose(1, 2).reshape(batch, height, width, -1))


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block with windowed (or global, window 0) attention and optional pooling."""

    def __init__(
        self, dim: int, dim_out: int, num_heads: int, window_size: int, q_stride: Tuple[int, int] | None
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride) if q_stride else None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_pool=self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, dim_out * 4, dim_out, num_layers=2, activation=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, dim) -> (B, H', W', dim_out)."""
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)
            if self.pool is not None:
                shortcut = _max_pool_hw(shortcut, self.pool)
        out_h, out_w = shortcut.shape[1:3]
        window = self.window_size
        if window > 0:
            x = window_partition(x, window)
        x = self.attn(x)
        if window > 0:
            if self.q_stride:
                window //= self.q_stride[0]
            x = window_unpartition(x, window, out_h, out_w)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Strided convolution, channels-last out: Hiera's 7x7 stride 4 (B, 3, H, W) -> (B, H/4, W/4, C), or a
    ViT's 16x16 patches (stride 16, no padding)."""

    def __init__(self, embed_dim: int, kernel_size: int = 7, stride: int = 4, padding: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Hiera(nn.Module):
    """Hierarchical ViT trunk; returns one (B, C_i, H_i, W_i) map per stage, highest resolution first."""

    def __init__(self, config: HieraConfig) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(config.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.embed_dim, *config.background_pos_embed_size))
        first_window = config.window_spec[0]
        self.pos_embed_window = nn.Parameter(torch.zeros(1, config.embed_dim, first_window, first_window))

        stage_ends = [sum(config.stages[: i + 1]) - 1 for i in range(len(config.stages))]
        self.stage_ends = stage_ends
        dims, heads = config.embed_dim, config.num_heads
        blocks = []
        stage = 0
        for index in range(sum(config.stages)):
            dim_in = dims
            # The first block of a stage still uses the previous stage's window, then pools to the new size.
            window = 0 if index in config.global_attention_blocks else config.window_spec[stage]
            starts_stage = index - 1 in stage_ends[:-1]
            if starts_stage:
                dims, heads, stage = dims * 2, heads * 2, stage + 1
            blocks.append(
                MultiScaleBlock(dim_in, dims, heads, window, q_stride=(2, 2) if starts_stage else None)
            )
        self.blocks = nn.ModuleList(blocks)

    def _position_embedding(self, height: int, width: int) -> torch.Tensor:
        """Background embedding resized bicubically to the token grid plus the tiled window embedding."""
        background = F.interpolate(self.pos_embed, size=(height, width), mode="bicubic")
        window = self.pos_embed_window
        tiles = (height // window.shape[-2], width // window.shape[-1])
        return (background + window.tile((1, 1) + tiles)).permute(0, 2, 3, 1)

    def forward(self, image: torch.Tensor) -> List[torch.Tensor]:
        x = self.patch_embed(image)
        x = x + self._position_embedding(*x.shape[1:3])
        stage_outputs = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.stage_ends:
                stage_outputs.append(x.permute(0, 3, 1, 2))
        return stage_outputs


class FpnNeck(nn.Module):
    """1x1 lateral convolutions to d_model; nearest-upsampled top-down sums on ``top_down_levels`` only."""

    def __init__(self, stage_dims: Tuple[int, ...], d_model: int, top_down_levels: Tuple[int, ...]) -> None:
        super().__init__()
        # convs[0] is the lowest-resolution (widest) stage, as in the checkpoint.
        self.convs = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(dim, d_model, kernel_size=1))) for dim in reversed(stage_dims)
        )
        self.top_down_levels = set(top_down_levels)

    def forward(self, stage_outputs: List[torch.Tensor]) -> List[torch.Tensor]:
        """Per-stage maps (highest resolution first) -> d_model maps, same order."""
        last = len(stage_outputs) - 1
        outputs: List[torch.Tensor] = [None] * len(stage_outputs)  # type: ignore[list-item]
        previous = None
        for level in range(last, -1, -1):
            lateral = self.convs[last - level](stage_outputs[level])
            if level in self.top_down_levels and previous is not None:
                top_down = F.interpolate(previous.float(), scale_factor=2.0, mode="nearest")
                previous = lateral + top_down
            else:
                previous = lateral
            outputs[level] = previous
        return outputs


class ImageEncoder(nn.Module):
    """Hiera + FPN neck; drops the lowest-resolution level (SAM 2's scalp=1)."""

    def __init__(self, trunk_config: HieraConfig, d_model: int, top_down_levels: Tuple[int, ...]) -> None:
        super().__init__()
        self.trunk = Hiera(trunk_config)
        self.neck = FpnNeck(trunk_config.stage_dims, d_model, top_down_levels)

    def forward(self, image: torch.Tensor) -> List[torch.Tensor]:
        """(B, 3, S, S) -> [(B, d, S/4, S/4), (B, d, S/8, S/8), (B, d, S/16, S/16)]."""
        return self.neck(self.trunk(image))[:-1]
