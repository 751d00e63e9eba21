"""Small building blocks shared by several network parts: MLP, channel-first LayerNorm, position encodings."""

from __future__ import annotations

import math
from typing import Type

import torch
import torch.nn.functional as F
from torch import nn

from .precision import cpu_bfloat16_autocast


class MLP(nn.Module):
    """``num_layers`` linear layers with an activation between them (parameters ``layers.N``)."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: Type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        widths = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in zip(widths[:-1], widths[1:]))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        x = self.layers[-1](x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        variance = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(variance + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention: q (B, heads, Nq, D), k and v (B, heads, Nk, D) -> (B, heads, Nq, D).

    In CPU bfloat16 autocast the two products run as bfloat16 matrix products with the softmax in float32:
    PyTorch's CPU SDPA kernel gains little in bfloat16 (a memory cross-attention 1024 x 7232 x 256: 47.9 ->
    42.5 ms) while bfloat16 matrix products of that size are 2.6x faster. Otherwise PyTorch's SDPA, exactly.
    """
    if q.device.type != "cpu" or not cpu_bfloat16_autocast():
        return F.scaled_dot_product_attention(q, k, v)
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
    # The CPU softmax kernel computes bfloat16 input in float32 and rounds once at the end: the same values as
    # converting to float32 first (a test checks this), without two passes over the score matrix.
    weights = torch.softmax(scores, dim=-1)
    return torch.matmul(weights, v)


def _sine_frequencies(num_feats: int, temperature: float, device: torch.device) -> torch.Tensor:
    """Divisors temperature^(2*floor(i/2)/num_feats), i < num_feats: one per sin/cos pair."""
    index = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_feats)


def sine_position_encoding_2d(
    channels: int, height: int, width: int, device: torch.device | str = "cpu", temperature: float = 10000.0
) -> torch.Tensor:
    """DETR-style normalised sine encoding of a (height, width) grid.

    Returns (channels, height, width): the first half encodes the row, the second the column, each as
    interleaved sin/cos of (position / size) * 2*pi at geometric frequencies.
    """
    num_feats = channels // 2
    eps = 1e-6
    rows = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    cols = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    rows = rows / (rows[-1:] + eps) * (2 * math.pi)
    cols = cols / (cols[-1:] + eps) * (2 * math.pi)
    divisors = _sine_frequencies(num_feats, temperature, rows.device)

    def interleave(positions: torch.Tensor) -> torch.Tensor:
        scaled = positions[:, None] / divisors  # (n, num_feats)
        return torch.stack((scaled[:, 0::2].sin(), scaled[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = interleave(rows)[:, None, :].expand(height, width, num_feats)
    pos_x = interleave(cols)[None, :, :].expand(height, width, num_feats)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).contiguous()


def sine_position_encoding_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(N,) positions -> (N, dim): [sin of dim/2 frequencies, cos of the same]."""
    divisors = _sine_frequencies(dim // 2, temperature, positions.device)
    scaled = positions.unsqueeze(-1) / divisors
    return torch.cat([scaled.sin(), scaled.cos()], dim=-1)


def axial_rope_angles(head_dim: int, side: int, theta: float) -> torch.Tensor:
    """Rotation angles of 2D axial rotary encoding for a side x side grid, row-major.

    Returns (side*side, head_dim/2): channel pair j rotates by x*f_j for j < head_dim/4 and by
    y*f_(j - head_dim/4) after, with f_j = theta^(-4j/head_dim).
    """
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim))
    token = torch.arange(side * side, dtype=torch.float32)
    x = token % side
    y = torch.div(token, side, rounding_mode="floor")
    return torch.cat([torch.outer(x, freqs), torch.outer(y, freqs)], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of x (..., N, D) by angles given as cos/sin (N, D/2).

    Real arithmetic instead of complex tensors, so it runs on every device (MPS has no complex support).
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)
