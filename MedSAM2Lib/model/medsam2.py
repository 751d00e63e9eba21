"""MedSAM2: the SAM 2.1 network with a memory bank, as the per-slice operations a volume predictor needs.

The same class runs Efficient MedSAM2 (EfficientTAM): a ViT image encoder with one feature level, and the
three differences its config names (:class:`MedSAM2Config`); memory attention, memory encoder, prompt
encoder and mask decoder are otherwise SAM 2.1's.

Attribute names equal the official module names, so the official ``state_dict`` loads unchanged.
Shapes: B batch (always 1 in the predictor), C = config.d_model, M = config.mem_dim, s = image_size/16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, sine_position_encoding_1d, sine_position_encoding_2d
from .config import EFFICIENTTAM, MedSAM2Config
from .image_encoder import ImageEncoder
from .vit_encoder import ViTImageEncoder
from .mask_decoder import MaskDecoder
from .memory_attention import MemoryAttention
from .memory_encoder import MemoryEncoder
from .prompt_encoder import PromptEncoder

NO_OBJECT_LOGIT = -1024.0  # low-res logits of a slice on which the object is absent


@dataclass
class ImageFeatures:
    """One encoded slice."""

    embedding: torch.Tensor  # (B, C, s, s) stride-16 features
    # (B, C/8, 4s, 4s), (B, C/4, 2s, 2s), projected for the decoder; () for EfficientTAM, which has none
    high_res: Tuple[torch.Tensor, ...]

    def item(self, number: int) -> "ImageFeatures":
        """Item ``number`` of a batch, as a batch of one with its own memory."""
        own = [tensor[number : number + 1].clone() for tensor in (self.embedding, *self.high_res)]
        return ImageFeatures(own[0], tuple(own[1:]))


@dataclass
class SliceOutput:
    """Decoder result for one slice."""

    low_res_logits: torch.Tensor  # (B, 1, 4s, 4s); NO_OBJECT_LOGIT everywhere when the object is absent
    obj_ptr: torch.Tensor  # (B, C) object pointer for later slices
    object_score_logits: torch.Tensor  # (B, 1)
    iou_scores: torch.Tensor  # (B, 3) multimask IoU predictions on tracked slices, (B, 1) on the prompted slice
    # How many masks the logits were chosen from (3 multimask outputs, or 1): the references upsample them
    # together for the memory, and PyTorch's CPU bilinear kernel rounds a 3-channel batch differently.
    candidates: int = 1

    @property
    def object_present(self) -> torch.Tensor:
        return self.object_score_logits > 0


@dataclass
class SpatialMemory:
    """A memory-bank entry as the reference keeps it: features in bfloat16."""

    features: torch.Tensor  # (B, M, s, s) bfloat16
    obj_ptr: torch.Tensor  # (B, C)


@dataclass
class MemoryContext:
    """What a tracked slice attends to."""

    memories: Sequence[Tuple[int, SpatialMemory]]  # (slot in maskmem_tpos_enc, entry): num_maskmem-1 for
    # conditioning slices, k-1 for the slice k back in the tracking direction
    pointers: Sequence[Tuple[int, torch.Tensor]]  # (signed temporal distance, (B, C) object pointer)
    num_frames: int  # slices in the volume (bounds the pointer-distance normalisation)


class MedSAM2(nn.Module):
    def __init__(self, config: MedSAM2Config) -> None:
        super().__init__()
        if config.d_model % config.mem_dim or config.mem_dim >= config.d_model:
            raise ValueError("mem_dim must be a proper divisor of d_model")
        self.config = config
        dim, mem_dim, size = config.d_model, config.mem_dim, config.feature_size

        if config.architecture == EFFICIENTTAM:
            self.image_encoder = ViTImageEncoder(config.trunk, dim)
        else:
            self.image_encoder = ImageEncoder(config.trunk, dim, config.fpn_top_down_levels)
        self.memory_attention = MemoryAttention(
            dim, mem_dim, config.memory_attention_layers, config.memory_attention_heads,
            config.memory_attention_ffn_dim, size, config.rope_theta,
        )
        self.memory_encoder = MemoryEncoder(dim, mem_dim, config.memory_fuser_layers)
        self.sam_prompt_encoder = PromptEncoder(dim, config.image_size)
        self.sam_mask_decoder = MaskDecoder(dim, config.high_res_features,
                                            cpu_math_attention=config.architecture != EFFICIENTTAM)
        self.obj_ptr_proj = MLP(dim, dim, dim, num_layers=3)
        if config.pointer_temporal_encoding:
            self.obj_ptr_tpos_proj = nn.Linear(dim, mem_dim)

        # Temporal encoding of memory-bank slots: index num_maskmem-1 is the prompted slice, k-1 the slice k back.
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(config.num_maskmem, 1, 1, mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, dim))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, dim))
        if config.no_object_memory_embedding:
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem_dim))
        # In official checkpoints but unused here: the no-memory position token (no_mem_embed is added directly).
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, dim))
        # A mask prompt at S x S -> the 4s x 4s mask input from which its object pointer is decoded.
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
        if not self.config.high_res_features:
            return ImageFeatures(self.image_encoder(image), ())
        stride4, stride8, stride16 = self.image_encoder(image)
        return ImageFeatures(stride16, self.sam_mask_decoder.project_high_res_features(stride4, stride8))

    def segment(
        self,
        features: ImageFeatures,
        points: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        mask_logits: Optional[torch.Tensor] = None,
        memory: Optional[MemoryContext] = None,
    ) -> SliceOutput:
        """Decode one slice.

        points: (B, N, 2) x, y in model-input pixels (0..S) and (B, N) labels (0 background, 1 object, 2 and 3
        a box's corners, placed first); mask_logits: (B, 1, 4s, 4s) a previous output fed back as mask input;
        memory: the memory bank for a tracked slice, None for a conditioning slice (decoded as SAM would).

        At most one point (a box counts as two) gives the best of the three multimask outputs, its own token
        giving the pointer. More give the single-mask output, falling back to the best multimask output when
        that mask is unstable; the pointer then still comes from the single-mask token.
        """
        if memory is None:
            pix_feat = features.embedding + self.no_mem_embed.reshape(1, -1, 1, 1)
        else:
            pix_feat = self._condition_on_memory(features.embedding, memory)
        batch = pix_feat.shape[0]
        prompt = self.sam_prompt_encoder
        sparse = prompt.embed_no_prompt(batch) if points is None else prompt.embed_points(*points)
        dense = prompt.dense_no_mask(batch) if mask_logits is None else prompt.dense_mask(mask_logits)
        decoded = self.sam_mask_decoder(pix_feat, prompt.dense_positional_encoding(), sparse, dense, features.high_res)
        num_points = 0 if points is None else points[1].shape[1]
        logits, iou, tokens = decoded.mask_logits, decoded.iou_scores, decoded.mask_tokens
        index = torch.arange(batch, device=logits.device)
        best_multi = 1 + iou[:, 1:].argmax(dim=1)
        if num_points <= 1:
            output = self._slice_output(logits[index, best_multi], iou[:, 1:], tokens[index, best_multi],
                                        decoded.object_score_logits)
            output.candidates = 3
            return output
        stable = self._stability(logits[:, 0]) >= self.config.stability_threshold
        chosen = torch.where(stable, torch.zeros_like(best_multi), best_multi)
        return self._slice_output(logits[index, chosen], iou[index, chosen].unsqueeze(1), tokens[:, 0],
                                  decoded.object_score_logits)

    def mask_as_output(self, features: ImageFeatures, mask: torch.Tensor) -> SliceOutput:
        """A binary (B, 1, S, S) mask given as the slice's answer (SAM 2's mask prompt): logits +-10 at 4s x 4s,
        object present iff the mask is not empty; the pointer comes from decoding the image features, without
        memory, with the mask (downsampled by ``mask_downsample``) as mask input."""
        mask = mask.float()
        high_res = mask * 20.0 - 10.0
        low_res = F.interpolate(high_res, size=(self.config.low_res_mask_size,) * 2, mode="bilinear",
                                align_corners=False, antialias=True)
        prompt = self.sam_prompt_encoder
        batch = mask.shape[0]
        decoded = self.sam_mask_decoder(
            features.embedding, prompt.dense_positional_encoding(), prompt.embed_no_prompt(batch),
            prompt.dense_mask(self.mask_downsample(mask)), features.high_res,
        )
        present = mask.flatten(1).gt(0).any(dim=1, keepdim=True)
        decoder_present = decoded.object_score_logits > 0
        obj_ptr = torch.where(present & decoder_present, self.obj_ptr_proj(decoded.mask_tokens[:, 0]), self.no_obj_ptr)
        object_score_logits = torch.where(present, 10.0, -10.0)
        return SliceOutput(low_res, obj_ptr, object_score_logits, mask.new_ones(batch, 1))

    def encode_memory(
        self, features: ImageFeatures, low_res_logits: torch.Tensor, object_score_logits: torch.Tensor, binarize: bool,
        candidates: int = 1,
    ) -> torch.Tensor:
        """Memory features (B, M, s, s) in bfloat16 for a slice and its (B, 1, 4s, 4s) logits.

        binarize: the prompted slice enters memory as a hard mask, tracked slices as sigmoid probabilities.
        candidates: the output's :attr:`SliceOutput.candidates`; the logits are upsampled in a batch of that
        many channels, so that they round as the reference's do (bfloat16 memories can turn a last-bit
        difference into 1e-4 a few slices later).
        """
        size = self.config.image_size
        batch = low_res_logits.float().expand(-1, candidates, -1, -1)
        high_res = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)[:, :1]
        mask = (high_res > 0).float() if binarize else torch.sigmoid(high_res)
        mask = mask * self.config.sigmoid_scale_for_mem_enc + self.config.sigmoid_bias_for_mem_enc
        memory = self.memory_encoder(features.embedding, mask)
        if self.config.no_object_memory_embedding:
            absent = (object_score_logits <= 0).to(memory.dtype)[..., None, None]
            memory = memory + absent * self.no_obj_embed_spatial[..., None, None]
        return memory.to(torch.bfloat16)

    # -- internals ------------------------------------------------------------------------------------

    def _condition_on_memory(self, embedding: torch.Tensor, memory: MemoryContext) -> torch.Tensor:
        """(B, C, s, s) slice features attended to the memory bank -> same shape."""
        tokens, positions, num_ptr_tokens = self._memory_tokens(memory.memories, memory.pointers, memory.num_frames)
        conditioned = self.memory_attention(
            embedding.flatten(2).transpose(1, 2), self.vision_pos, tokens, positions, num_ptr_tokens
        )
        return conditioned.transpose(1, 2).reshape(embedding.shape)

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
            if self.config.pointer_temporal_encoding:
                # Distances are normalised by the largest pointer distance the bank can hold.
                max_distance = min(num_frames, self.config.max_obj_ptrs) - 1
                scaled = torch.tensor(distances, dtype=torch.float32, device=ptrs[0].device) / max_distance
                ptr_pos = self.obj_ptr_tpos_proj(sine_position_encoding_1d(scaled, self.config.d_model))
            else:
                ptr_pos = ptrs[0].new_zeros(len(ptrs), self.config.mem_dim)
            # Each C-wide pointer becomes C/M consecutive M-wide tokens sharing one position.
            split = self.config.d_model // self.config.mem_dim
            ptr_tokens = torch.stack(ptrs, dim=1).reshape(batch, len(ptrs) * split, self.config.mem_dim)
            tokens.append(ptr_tokens)
            positions.append(ptr_pos.repeat_interleave(split, dim=0).unsqueeze(0).expand(batch, -1, -1))
            num_ptr_tokens = ptr_tokens.shape[1]
        memory = torch.cat(tokens, dim=1)
        memory_pos = torch.cat([p.expand(batch, -1, -1) for p in positions], dim=1)
        return memory, memory_pos, num_ptr_tokens
