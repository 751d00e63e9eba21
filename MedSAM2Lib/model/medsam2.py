"""MedSAM2: the SAM 2.1 network with a memory bank, as the per-slice operations a volume predictor needs.

Attribute names equal the official module names, so the official ``state_dict`` loads unchanged.
Shapes: B batch (always 1 in the predictor), C = config.d_model, M = config.mem_dim, s = image_size/16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, sine_position_encoding_1d, sine_position_encoding_2d
from .config import MedSAM2Config
from .image_encoder import ImageEncoder
from .mask_decoder import MaskDecoder
from .memory_attention import MemoryAttention
from .memory_encoder import MemoryEncoder
from .prompt_encoder import PromptEncoder

NO_OBJECT_LOGIT = -1024.0  # low-res logits of a slice on which the object is absent


@dataclass
class ImageFeatures:
    """One encoded slice."""

    embedding: torch.Tensor  # (B, C, s, s) stride-16 features
    high_res: Tuple[torch.Tensor, torch.Tensor]  # (B, C/8, 4s, 4s), (B, C/4, 2s, 2s), projected for the decoder


@dataclass
class SliceOutput:
    """Decoder result for one slice."""

    low_res_logits: torch.Tensor  # (B, 1, 4s, 4s); NO_OBJECT_LOGIT everywhere when the object is absent
    obj_ptr: torch.Tensor  # (B, C) object pointer for later slices
    object_score_logits: torch.Tensor  # (B, 1)
    iou_scores: torch.Tensor  # (B, 3) multimask IoU predictions on tracked slices, (B, 1) on the prompted slice

    @property
    def object_present(self) -> torch.Tensor:
        return self.object_score_logits > 0


@dataclass
class SpatialMemory:
    """A memory-bank entry as the reference keeps it: features in bfloat16."""

    features: torch.Tensor  # (B, M, s, s) bfloat16
    obj_ptr: torch.Tensor  # (B, C)


class MedSAM2(nn.Module):
    def __init__(self, config: MedSAM2Config) -> None:
        super().__init__()
        if config.d_model % config.mem_dim or config.mem_dim >= config.d_model:
            raise ValueError("mem_dim must be a proper divisor of d_model")
        self.config = config
        dim, mem_dim, size = config.d_model, config.mem_dim, config.feature_size

        self.image_encoder = ImageEncoder(config.trunk, dim, config.fpn_top_down_levels)
        self.memory_attention = MemoryAttention(
            dim, mem_dim, config.memory_attention_layers, config.memory_attention_heads,
            config.memory_attention_ffn_dim, size, config.rope_theta,
        )
        self.memory_encoder = MemoryEncoder(dim, mem_dim, config.memory_fuser_layers)
        self.sam_prompt_encoder = PromptEncoder(dim, config.image_size)
        self.sam_mask_decoder = MaskDecoder(dim)
        self.obj_ptr_proj = MLP(dim, dim, dim, num_layers=3)
        self.obj_ptr_tpos_proj = nn.Linear(dim, mem_dim)

        # Temporal encoding of memory-bank slots: index num_maskmem-1 is the prompted slice, k-1 the slice k back.
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(config.num_maskmem, 1, 1, mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, dim))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, dim))
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem_dim))
        # Present in official checkpoints, unused by box propagation: the no-memory position token (unused
        # when no_mem_embed is added directly) and the mask-prompt downsampler.
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)

        # Constant position encodings of the stride-16 grid (not in the checkpoint).
        self.register_buffer(
            "vision_pos", sine_position_encoding_2d(dim, size, size).flatten(1).T.unsqueeze(0), persistent=False
        )
        self.register_buffer(
            "memory_pos", sine_position_encoding_2d(mem_dim, size, size).flatten(1).T.unsqueeze(0), persistent=False
        )

    # -- per-slice operations -------------------------------------------------------------------------

    def encode_image(self, image: torch.Tensor) -> ImageFeatures:
        """(B, 3, S, S) normalised image -> features; the only step that does not depend on prompts or memory."""
        stride4, stride8, stride16 = self.image_encoder(image)
        return ImageFeatures(stride16, self.sam_mask_decoder.project_high_res_features(stride4, stride8))

    def segment_with_box(self, features: ImageFeatures, box: torch.Tensor) -> SliceOutput:
        """Prompted slice: no memory; box (B, 4) x0, y0, x1, y1 in model-input pixels (0..S)."""
        pix_feat = features.embedding + self.no_mem_embed.reshape(1, -1, 1, 1)
        sparse = self.sam_prompt_encoder.embed_box(box)
        decoded = self._decode(pix_feat, features, sparse)
        # A box counts as two points: single-mask output, falling back to the best multimask token when the
        # single mask is unstable. The pointer always comes from the single-mask token.
        logits, iou = decoded.mask_logits, decoded.iou_scores
        best_multi = 1 + iou[:, 1:].argmax(dim=1)
        batch = torch.arange(logits.shape[0], device=logits.device)
        stable = self._stability(logits[:, 0]) >= self.config.stability_threshold
        chosen = torch.where(stable, torch.zeros_like(best_multi), best_multi)
        return self._slice_output(
            logits[batch, chosen], iou[batch, chosen].unsqueeze(1), decoded.mask_tokens[:, 0],
            decoded.object_score_logits,
        )

    def track(
        self,
        features: ImageFeatures,
        memories: Sequence[Tuple[int, SpatialMemory]],
        pointers: Sequence[Tuple[int, torch.Tensor]],
        num_frames: int,
    ) -> SliceOutput:
        """Unprompted slice conditioned on the memory bank.

        memories: (slot, entry) with slot an index into ``maskmem_tpos_enc``; pointers: (temporal distance,
        (B, C) pointer); num_frames: slices in the volume (it bounds the pointer distance normalisation).
        """
        memory, memory_pos, num_ptr_tokens = self._memory_tokens(memories, pointers, num_frames)
        embedding = features.embedding
        conditioned = self.memory_attention(
            embedding.flatten(2).transpose(1, 2), self.vision_pos, memory, memory_pos, num_ptr_tokens
        )
        pix_feat = conditioned.transpose(1, 2).reshape(embedding.shape)
        decoded = self._decode(pix_feat, features, self.sam_prompt_encoder.embed_no_prompt(embedding.shape[0]))
        # Tracking: best of the three multimask outputs; its own token gives the pointer.
        iou = decoded.iou_scores[:, 1:]
        chosen = 1 + iou.argmax(dim=1)
        batch = torch.arange(iou.shape[0], device=iou.device)
        return self._slice_output(
            decoded.mask_logits[batch, chosen], iou, decoded.mask_tokens[batch, chosen], decoded.object_score_logits
        )

    def encode_memory(
        self, features: ImageFeatures, low_res_logits: torch.Tensor, object_score_logits: torch.Tensor, binarize: bool
    ) -> torch.Tensor:
        """Memory features (B, M, s, s) in bfloat16 for a slice and its (B, 1, 4s, 4s) logits.

        binarize: the prompted slice enters memory as a hard mask, tracked slices as sigmoid probabilities.
        """
        size = self.config.image_size
        high_res = F.interpolate(low_res_logits.float(), size=(size, size), mode="bilinear", align_corners=False)
        mask = (high_res > 0).float() if binarize else torch.sigmoid(high_res)
        mask = mask * self.config.sigmoid_scale_for_mem_enc + self.config.sigmoid_bias_for_mem_enc
        memory = self.memory_encoder(features.embedding, mask)
        absent = (object_score_logits <= 0).to(memory.dtype)[..., None, None]
        memory = memory + absent * self.no_obj_embed_spatial[..., None, None]
        return memory.to(torch.bfloat16)

    # -- internals ------------------------------------------------------------------------------------

    def _decode(self, pix_feat: torch.Tensor, features: ImageFeatures, sparse: torch.Tensor):
        prompt = self.sam_prompt_encoder
        return self.sam_mask_decoder(
            pix_feat, prompt.dense_positional_encoding(), sparse, prompt.dense_no_mask(pix_feat.shape[0]),
            features.high_res,
        )

    def _stability(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, h, w) -> (B,) IoU between the masks thresholded at +delta and -delta (1 when both empty)."""
        delta = self.config.stability_delta
        flat = logits.flatten(1)
        intersection = (flat > delta).sum(dim=1).float()
        union = (flat > -delta).sum(dim=1).float()
        return torch.where(union > 0, intersection / union, torch.ones_like(union))

    def _slice_output(
        self, logits: torch.Tensor, iou: torch.Tensor, token: torch.Tensor, object_score_logits: torch.Tensor
    ) -> SliceOutput:
        """Chosen (B, h, w) logits and (B, C) token -> output with the object-absent case applied."""
        present = object_score_logits > 0
        logits = torch.where(present[:, :, None, None], logits.unsqueeze(1), NO_OBJECT_LOGIT).float()
        obj_ptr = torch.where(present, self.obj_ptr_proj(token), self.no_obj_ptr)
        return SliceOutput(logits, obj_ptr, object_score_logits, iou)

    def _memory_tokens(
        self,
        memories: Sequence[Tuple[int, SpatialMemory]],
        pointers: Sequence[Tuple[int, torch.Tensor]],
        num_frames: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, int]:
        """Memory bank as tokens: (B, n*s*s + P*C/M, M) features, same-shape positions, pointer-token count."""
        tokens, positions = [], []
        for slot, entry in memories:
            tokens.append(entry.features.float().flatten(2).transpose(1, 2))
            positions.append(self.memory_pos + self.maskmem_tpos_enc[slot].reshape(1, 1, -1))
        batch = tokens[0].shape[0] if tokens else pointers[0][1].shape[0]
        num_ptr_tokens = 0
        if pointers:
            distances, ptrs = zip(*pointers)
            # Distances are normalised by the largest pointer distance the bank can hold.
            max_distance = min(num_frames, self.config.max_obj_ptrs) - 1
            scaled = torch.tensor(distances, dtype=torch.float32, device=ptrs[0].device) / max_distance
            ptr_pos = self.obj_ptr_tpos_proj(sine_position_encoding_1d(scaled, self.config.d_model))
            # Each C-wide pointer becomes C/M consecutive M-wide tokens sharing one position.
            split = self.config.d_model // self.config.mem_dim
            ptr_tokens = torch.stack(ptrs, dim=1).reshape(batch, len(ptrs) * split, self.config.mem_dim)
            tokens.append(ptr_tokens)
            positions.append(ptr_pos.repeat_interleave(split, dim=0).unsqueeze(0).expand(batch, -1, -1))
            num_ptr_tokens = ptr_tokens.shape[1]
        memory = torch.cat(tokens, dim=1)
        memory_pos = torch.cat([p.expand(batch, -1, -1) for p in positions], dim=1)
        return memory, memory_pos, num_ptr_tokens
