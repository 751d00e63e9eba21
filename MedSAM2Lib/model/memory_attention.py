"""Memory attention: the current slice's features attend to themselves and to the memory bank, with 2D RoPE.

Memory bank tokens are spatial memories (``frames x s*s`` tokens, rotated like the image grid) followed by
object-pointer tokens (not rotated).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import apply_rope, axial_rope_angles
from .precision import in_autocast_dtype
from .transformer import Attention


class RoPEAttention(Attention):
    """Attention with axial rotary position encoding of an s x s grid on queries and (repeated) keys."""

    def __init__(self, dim: int, num_heads: int, feature_size: int, theta: float, kv_in_dim: int | None = None):
        super().__init__(dim, num_heads, kv_in_dim=kv_in_dim)
        angles = axial_rope_angles(dim // num_heads, feature_size, theta)
        # Made as the references make them (complex, by torch.polar, on the CPU at build time): float32
        # cos()/sin() differ from those in the last bit, which bfloat16 memories can amplify to 1e-4.
        rotations = torch.polar(torch.ones_like(angles), angles)
        self.register_buffer("rope_cos", rotations.real.contiguous(), persistent=False)
        self.register_buffer("rope_sin", rotations.imag.contiguous(), persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0) -> torch.Tensor:
        """q (B, s*s, C); k, v (B, n*s*s + num_k_exclude_rope, C_kv): the last num_k_exclude_rope keys keep
        their position (object pointers)."""
        q, k, v = self.project(q, k, v)
        q = apply_rope(q, self.rope_cos, self.rope_sin)
        num_rope = k.shape[-2] - num_k_exclude_rope
        # Each memory slice's s*s keys take the grid's rotations: broadcast over the slices, not repeated.
        grid_keys = k[:, :, :num_rope].unflatten(2, (num_rope // q.shape[-2], q.shape[-2]))
        rotated = apply_rope(grid_keys, self.rope_cos, self.rope_sin).flatten(2, 3)
        k = torch.cat([rotated, k[:, :, num_rope:]], dim=2)
        return self.attend(q, k, v)


class MemoryAttentionLayer(nn.Module):
    """Pre-norm: RoPE self-attention, RoPE cross-attention to memory (keys carry memory positions), MLP."""

    def __init__(self, dim: int, mem_dim: int, num_heads: int, ffn_dim: int, feature_size: int, theta: float):
        super().__init__()
        self.self_attn = RoPEAttention(dim, num_heads, feature_size, theta)
        self.cross_attn_image = RoPEAttention(dim, num_heads, feature_size, theta, kv_in_dim=mem_dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, num_obj_ptr_tokens: int) -> torch.Tensor:
        """x (B, s*s, C); keys (memory plus its positions) and values (memory) (B, M, mem_dim) -> (B, s*s, C)."""
        normed = in_autocast_dtype(self.norm1(x))  # rounded once for the three projections
        x = x + self.self_attn(normed, normed, normed)
        x = x + self.cross_attn_image(self.norm2(x), keys, values, num_obj_ptr_tokens)
        return x + self.linear2(F.relu(self.linear1(self.norm3(x))))


class MemoryAttention(nn.Module):
    def __init__(self, dim: int, mem_dim: int, num_layers: int, num_heads: int, ffn_dim: int, feature_size: int,
                 theta: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MemoryAttentionLayer(dim, mem_dim, num_heads, ffn_dim, feature_size, theta) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        features: torch.Tensor,
        features_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int,
    ) -> torch.Tensor:
        """features, features_pos (B, s*s, C); memory, memory_pos (B, M, mem_dim) -> (B, s*s, C)."""
        x = features + 0.1 * features_pos
        # Every layer attends to the same keys and values: summed, and rounded to autocast's dtype, once.
        keys, values = in_autocast_dtype(memory + memory_pos), in_autocast_dtype(memory)
        for layer in self.layers:
            x = layer(x, keys, values, num_obj_ptr_tokens)
        return self.norm(x)
