"""Mask decoder: output tokens attend to the image embedding; each mask token becomes a 128x128 mask.

Outputs all four mask tokens (0: single-mask token, 1-3: multimask tokens); which one is used is the
caller's decision (see :meth:`MedSAM2.decode`).
"""

from __future__ import annotations

from dataclasses import dataclass
import contextlib
from typing import Tuple

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .common import MLP, LayerNorm2d
from .precision import float32_under_autocast
from .transformer import TwoWayTransformer

NUM_MASK_TOKENS = 4


@dataclass
class DecoderOutput:
    mask_logits: torch.Tensor  # (B, 4, 4s, 4s) low-resolution mask logits, one per mask token
    iou_scores: torch.Tensor  # (B, 4) predicted IoU of each mask
    mask_tokens: torch.Tensor  # (B, 4, C) mask tokens after the transformer (source of object pointers)
    object_score_logits: torch.Tensor  # (B, 1) > 0 when the object is present on the slice


class MaskDecoder(nn.Module):
    """high_res_features: SAM 2.1 adds projected stride-4 and stride-8 image features while upscaling;
    EfficientTAM upscales the stride-16 embedding alone. cpu_math_attention: on CPU, attend with PyTorch's
    math kernel, as the SAM 2.1 reference does (EfficientTAM's leaves the choice to PyTorch).

    Fast mode computes the decoder in float32 (:func:`~.precision.float32_under_autocast`): its logits are the
    masks, and in bfloat16 it made most of fast mode's disagreement with exact mode (on the tiny test model,
    Dice against exact mode 0.982-0.996 over the shared session scenarios with the decoder in bfloat16,
    0.996-0.998 with it in float32), for about a hundredth of a tracked slice's operations."""

    computes_in_float32 = True

    def __init__(self, dim: int, high_res_features: bool = True, cpu_math_attention: bool = True,
                 iou_head_hidden_dim: int = 256) -> None:
        super().__init__()
        self.cpu_math_attention = cpu_math_attention
        self.transformer = TwoWayTransformer(dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(NUM_MASK_TOKENS, dim)
        self.obj_score_token = nn.Embedding(1, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        if high_res_features:
            # Projections of the stride-4 and stride-8 image features added during upscaling.
            self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
            self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, num_layers=3) for _ in range(NUM_MASK_TOKENS)
        )
        self.iou_prediction_head = MLP(dim, iou_head_hidden_dim, NUM_MASK_TOKENS, num_layers=3, sigmoid_output=True)
        self.pred_obj_score_head = MLP(dim, dim, 1, num_layers=3)

    def project_high_res_features(
        self, stride4: torch.Tensor, stride8: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Done once per slice when it is encoded: (B, C, 4s, 4s), (B, C, 2s, 2s) -> C/8 and C/4 channels."""
        return self.conv_s0(stride4), self.conv_s1(stride8)

    @float32_under_autocast
    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt: torch.Tensor,
        dense_prompt: torch.Tensor,
        high_res_features: Tuple[torch.Tensor, ...],
    ) -> DecoderOutput:
        """image_embedding (B, C, s, s), image_pe (1, C, s, s), sparse_prompt (B, N, C), dense_prompt
        (B, C, s, s), high_res_features from :meth:`project_high_res_features`, or () without them."""
        batch = sparse_prompt.shape[0]
        output_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight])
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse_prompt], dim=1)
        image = image_embedding + dense_prompt
        # On CPU the SAM 2.1 reference runs these attention layers with the math kernel (its sdp_kernel context
        # turns flash attention off); doing as each reference does keeps the prompted slice's logits
        # bit-identical to it.
        math = self.cpu_math_attention and image.device.type == "cpu"
        kernel = sdpa_kernel(SDPBackend.MATH) if math else contextlib.nullcontext()
        with kernel:
            tokens_out, image_tokens = self.transformer(image, image_pe, tokens)
        object_token, iou_token = tokens_out[:, 0], tokens_out[:, 1]
        mask_tokens = tokens_out[:, 2 : 2 + NUM_MASK_TOKENS]

        image = image_tokens.transpose(1, 2).reshape(image.shape)
        if high_res_features:
            feat_s0, feat_s1 = high_res_features
            upconv1, norm, act1, upconv2, act2 = self.output_upscaling
            upscaled = act1(norm(upconv1(image) + feat_s1))
            upscaled = act2(upconv2(upscaled) + feat_s0)
        else:
            upscaled = self.output_upscaling(image)

        hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        b, c, h, w = upscaled.shape
        masks = (hyper @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        return DecoderOutput(
            mask_logits=masks,
            iou_scores=self.iou_prediction_head(iou_token),
            mask_tokens=mask_tokens,
            object_score_logits=self.pred_obj_score_head(object_token),
        )
