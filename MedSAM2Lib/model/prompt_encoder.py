"""Prompt encoder: points and box corners (or no prompt) -> sparse tokens; a mask (or none) -> dense embedding;
the dense grid encoding."""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d

# Point labels of the official prompt format: a box is two points labelled 2 and 3, given before any others.
NOT_A_POINT, BACKGROUND, OBJECT, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3


class RandomFourierPositions(nn.Module):
    """Encodes normalised (x, y) positions with fixed random Gaussian frequencies (SAM's ``pe_layer``)."""

    def __init__(self, num_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((2, num_feats)))

    def encode(self, xy: torch.Tensor) -> torch.Tensor:
        """(..., 2) in [0, 1] -> (..., 2 * num_feats)."""
        projected = (2 * xy - 1) @ self.positional_encoding_gaussian_matrix
        projected = 2 * math.pi * projected
        return torch.cat([projected.sin(), projected.cos()], dim=-1)

    def grid(self, size: int) -> torch.Tensor:
        """Encoding of the centres of a size x size grid: (2 * num_feats, size, size)."""
        device = self.positional_encoding_gaussian_matrix.device
        centres = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) / size
        xy = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), dim=-1)
        return self.encode(xy).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """Sparse tokens for points and box corners; a dense embedding for a low-resolution mask input."""

    def __init__(self, embed_dim: int, image_size: int, mask_in_chans: int = 16) -> None:
        super().__init__()
        self.image_size = image_size
        self.embedding_size = image_size // 16
        self.pe_layer = RandomFourierPositions(embed_dim // 2)
        # 0: negative point, 1: positive point, 2: box top-left, 3: box bottom-right.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, N, 2) x, y in model-input pixels and (B, N) labels -> (B, N + 1, C) tokens, the last one padding.

        Labels: 0 background point, 1 object point, 2 and 3 the box's corners (placed first)."""
        batch = coords.shape[0]
        coords = torch.cat([coords, coords.new_zeros(batch, 1, 2)], dim=1)
        labels = torch.cat([labels, labels.new_full((batch, 1), NOT_A_POINT)], dim=1).unsqueeze(-1)
        tokens = self.pe_layer.encode((coords + 0.5) / self.image_size)  # +0.5: pixel centres
        tokens = torch.where(labels == NOT_A_POINT, torch.zeros_like(tokens) + self.not_a_point_embed.weight, tokens)
        for label, embedding in enumerate(self.point_embeddings):
            tokens = torch.where(labels == label, tokens + embedding.weight, tokens)
        return tokens

    def embed_no_prompt(self, batch: int) -> torch.Tensor:
        """Tokens for a slice without prompt (tracking): an empty point plus padding, (B, 2, C)."""
        return self.not_a_point_embed.weight.expand(batch, 2, -1)

    def dense_no_mask(self, batch: int) -> torch.Tensor:
        """(B, C, s, s): the learned embedding that says "no mask prompt"."""
        size = self.embedding_size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, size, size)

    def dense_mask(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """(B, 1, 4s, 4s) mask input (logits, or a mask at that size) -> (B, C, s, s) dense embedding."""
        return self.mask_downscaling(mask_logits)

    def dense_positional_encoding(self) -> torch.Tensor:
        """(1, C, s, s) encoding of the image-embedding grid, for the mask decoder."""
        return self.pe_layer.grid(self.embedding_size).unsqueeze(0)
