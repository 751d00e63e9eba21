"""Architecture of a MedSAM2 network, as a frozen dataclass.

Two families: SAM 2.1 with a Hiera trunk (the default, :data:`MEDSAM2_T512`, MedSAM2's
``sam2.1_hiera_t512.yaml``) and EfficientTAM with a plain ViT trunk (Efficient MedSAM2,
:data:`EFFICIENTTAM_TI_512` and :data:`EFFICIENTTAM_S_512`, the official ``efficienttam_ti_512x512.yaml`` and
``efficienttam_s_512x512.yaml``). :func:`load_config` reads an official hydra-style yaml
(``model: image_encoder: trunk: ...``) of either family and refuses settings our implementation does not
reproduce, rather than silently computing something else.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Tuple, Union


class ConfigError(ValueError):
    """The config file cannot be read or describes a model this implementation does not provide."""


@dataclasses.dataclass(frozen=True)
class HieraConfig:
    """Hiera image trunk: four stages, each halving resolution and doubling width."""

    embed_dim: int = 96
    num_heads: int = 1
    stages: Tuple[int, ...] = (1, 2, 7, 2)
    global_attention_blocks: Tuple[int, ...] = (5, 7, 9)
    window_spec: Tuple[int, ...] = (8, 4, 14, 7)
    background_pos_embed_size: Tuple[int, int] = (7, 7)

    @property
    def stage_dims(self) -> Tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.stages)))


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """EfficientTAM's plain ViT trunk: 16 px patches, one resolution, windowed blocks except the global ones,
    MLPs 4x as wide as the tokens.

    Its features are taken after the last global block. The absolute position embedding is stored for a
    14 x 14 patch grid plus a class token (ViTDet pretraining at 224 px) and resized bicubically.
    """

    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    window_size: int = 14
    window_blocks: Tuple[int, ...] = (0, 1, 3, 4, 6, 7, 9, 10)
    pretrain_grid: int = 14

    @property
    def global_blocks(self) -> Tuple[int, ...]:
        return tuple(i for i in range(self.depth) if i not in self.window_blocks)


HIERA, EFFICIENTTAM = "hiera", "efficienttam"


@dataclasses.dataclass(frozen=True)
class MedSAM2Config:
    """Everything that differs between MedSAM2 variants of the SAM 2.1 and EfficientTAM architectures.

    Fixed by the reference model, not configurable: two-way transformer depth 2, MLP 2048, 8 heads;
    IoU head hidden 256; 16 mask-input channels; at most 16 object pointers; 4 mask tokens.
    The family follows from the trunk: SAM 2.1 (Hiera) feeds stride-4 and stride-8 features to the mask
    decoder, gives object pointers a temporal position and marks absent-object memories with
    ``no_obj_embed_spatial``; EfficientTAM (ViT) does none of the three.
    """

    image_size: int = 512
    trunk: Union[HieraConfig, ViTConfig] = HieraConfig()
    d_model: int = 256  # FPN neck width = prompt/mask decoder width = memory-attention width
    fpn_top_down_levels: Tuple[int, ...] = (2, 3)
    memory_attention_layers: int = 4
    memory_attention_heads: int = 1
    memory_attention_ffn_dim: int = 2048
    rope_theta: float = 10000.0
    mem_dim: int = 64  # width of the memory bank features
    memory_fuser_layers: int = 2
    num_maskmem: int = 7  # the prompted slice + 6 most recent tracked slices
    max_obj_ptrs: int = 16
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    # The prompted slice falls back to the best multimask output when its single mask is unstable.
    stability_delta: float = 0.05
    stability_threshold: float = 0.98
    fill_hole_area: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.trunk, ViTConfig) and (self.trunk.embed_dim % self.trunk.num_heads
                                                   or not self.trunk.global_blocks):
            raise ConfigError("The ViT trunk needs a width divisible by its heads and at least one global block.")

    @property
    def architecture(self) -> str:
        """``hiera`` (SAM 2.1) or ``efficienttam``."""
        return EFFICIENTTAM if isinstance(self.trunk, ViTConfig) else HIERA

    @property
    def high_res_features(self) -> bool:
        """Whether the mask decoder adds stride-4 and stride-8 image features while upscaling."""
        return self.architecture == HIERA

    @property
    def pointer_temporal_encoding(self) -> bool:
        """Whether object pointers carry a (projected, signed) temporal position; EfficientTAM's carry none."""
        return self.architecture == HIERA

    @property
    def no_object_memory_embedding(self) -> bool:
        """Whether ``no_obj_embed_spatial`` is added to the memory of a slice without the object."""
        return self.architecture == HIERA

    @property
    def backbone_stride(self) -> int:
        return 16

    @property
    def feature_size(self) -> int:
        """Side of the lowest-resolution feature map that the decoders and memory work on."""
        return self.image_size // self.backbone_stride

    @property
    def low_res_mask_size(self) -> int:
        return self.image_size // 4


MEDSAM2_T512 = MedSAM2Config()
EFFICIENTTAM_TI_512 = MedSAM2Config(trunk=ViTConfig(embed_dim=192, num_heads=3))
EFFICIENTTAM_S_512 = MedSAM2Config(trunk=ViTConfig(embed_dim=384, num_heads=6))


# Inference flags that MedSAM2 (SAM 2.1) and Efficient MedSAM2 (EfficientTAM) set and that our implementation
# hard-codes, per family.
_FAMILY_FLAGS = {
    HIERA: {"no_obj_embed_spatial": True, "use_high_res_features_in_sam": True, "add_tpos_enc_to_obj_ptrs": True,
            "proj_tpos_enc_in_obj_ptrs": True, "use_signed_tpos_enc_to_obj_ptrs": True},
    EFFICIENTTAM: {"no_obj_embed_spatial": False, "use_high_res_features_in_sam": False,
                   "add_tpos_enc_to_obj_ptrs": False, "proj_tpos_enc_in_obj_ptrs": False,
                   "use_signed_tpos_enc_to_obj_ptrs": False},
}
_REQUIRED_FLAGS = {
    "use_mask_input_as_output_without_sam": True,
    "directly_add_no_mem_embed": True,
    "multimask_output_in_sam": True,
    "iou_prediction_use_sigmoid": True,
    "use_obj_ptrs_in_encoder": True,
    "only_obj_ptrs_in_the_past_for_eval": True,
    "pred_obj_scores": True,
    "pred_obj_scores_mlp": True,
    "fixed_no_obj_ptr": True,
    "multimask_output_for_tracking": True,
    "use_multimask_token_for_obj_ptr": True,
    "multimask_min_pt_num": 0,
    "multimask_max_pt_num": 1,
    "use_mlp_for_obj_ptr_proj": True,
}


def load_config(path: str | Path) -> MedSAM2Config:
    """Read an official MedSAM2/SAM2 or EfficientTAM hydra yaml (e.g. ``sam2.1_hiera_t512.yaml``,
    ``efficienttam_ti_512x512.yaml``)."""
    try:
        import yaml
    except ImportError as error:  # pragma: no cover - PyYAML is a declared dependency
        raise ConfigError("Reading a config file needs PyYAML: pip install pyyaml") from error
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"Cannot read the config file {path}: {error.strerror or error}.") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"The config file {path} is not UTF-8 text (byte {error.start + 1} is not UTF-8); save it as "
                          "UTF-8.") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"The config file {path} is not valid YAML{where}: {problem}.") from error
    if not isinstance(document, Mapping) or not isinstance(document.get("model"), Mapping):
        raise ConfigError(f"The config file {path} has no 'model:' section; expected the official SAM2 yaml layout.")
    try:
        return config_from_model_section(document["model"])
    except ConfigError as error:
        raise ConfigError(f"The config file {path}: {error}") from error


def config_from_model_section(model: Mapping[str, Any]) -> MedSAM2Config:
    """Build a config from the ``model:`` mapping of an official yaml; ConfigError names a missing or mistyped
    entry by its path (``model.image_encoder.trunk.embed_dim``)."""
    entries = _Entries(model)
    vit = str(entries.get("image_encoder.trunk._target_", "")).endswith(".ViT")
    for flag, expected in {**_REQUIRED_FLAGS, **_FAMILY_FLAGS[EFFICIENTTAM if vit else HIERA]}.items():
        if model.get(flag, expected) != expected:
            family = "EfficientTAM" if vit else "SAM 2.1 (Hiera)"
            raise ConfigError(f"Unsupported setting {flag}={model[flag]!r}: this implementation of {family} needs "
                              f"{expected!r}.")
    trunk = _vit_trunk(entries) if vit else _hiera_trunk(entries)
    d_model = entries.integer("image_encoder.neck.d_model")
    if entries.integer("memory_attention.d_model") != d_model:
        raise ConfigError("memory_attention.d_model must equal the neck's d_model.")
    cross = "memory_attention.layer.cross_attention."
    common = dict(
        image_size=entries.integer("image_size"),
        d_model=d_model,
        memory_attention_layers=entries.integer("memory_attention.num_layers"),
        memory_attention_heads=entries.integer(cross + "num_heads"),
        memory_attention_ffn_dim=entries.integer("memory_attention.layer.dim_feedforward"),
        rope_theta=entries.number(cross + "rope_theta", 10000.0),
        mem_dim=entries.integer("memory_encoder.out_dim"),
        memory_fuser_layers=entries.integer("memory_encoder.fuser.num_layers"),
        num_maskmem=entries.integer("num_maskmem"),
        sigmoid_scale_for_mem_enc=entries.number("sigmoid_scale_for_mem_enc"),
        sigmoid_bias_for_mem_enc=entries.number("sigmoid_bias_for_mem_enc"),
    )
    if vit:
        return MedSAM2Config(trunk=trunk, **common)
    top_down_levels = entries.integers("image_encoder.neck.fpn_top_down_levels")
    return MedSAM2Config(trunk=trunk, fpn_top_down_levels=top_down_levels, **common)


def _vit_trunk(entries: "_Entries") -> ViTConfig:
    trunk = "image_encoder.trunk."
    if (entries.get("image_encoder.scalp", 0) != 0 or entries.get(trunk + "use_rel_pos", False)
            or entries.integer(trunk + "patch_size", 16) != 16 or entries.number(trunk + "mlp_ratio", 4.0) != 4.0
            or entries.get("image_encoder.neck.neck_norm", None) != "LN"
            or not str(entries.get("image_encoder.neck._target_", "")).endswith(".ViTDetNeck")):
        raise ConfigError("Only the EfficientTAM image encoder (scalp 0, 16 px patches, MLP ratio 4, no relative "
                          "positions, ViTDet neck with LN) is supported.")
    vit = ViTConfig(
        embed_dim=entries.integer(trunk + "embed_dim"),
        depth=entries.integer(trunk + "depth"),
        num_heads=entries.integer(trunk + "num_heads"),
        window_size=entries.integer(trunk + "window_size"),
        window_blocks=entries.integers(trunk + "window_block_indexes"),
    )
    if list(entries.integers("image_encoder.neck.backbone_channel_list")) != [vit.embed_dim]:
        raise ConfigError("neck.backbone_channel_list does not match the ViT width.")
    return vit


def _hiera_trunk(entries: "_Entries") -> HieraConfig:
    if entries.get("image_encoder.scalp", 1) != 1 or entries.get("image_encoder.neck.fpn_interp_model", "nearest") != "nearest":
        raise ConfigError("Only the SAM 2.1 image encoder (scalp 1, nearest top-down FPN) is supported.")
    trunk, default_trunk = "image_encoder.trunk.", HieraConfig()
    hiera = HieraConfig(
        embed_dim=entries.integer(trunk + "embed_dim"),
        num_heads=entries.integer(trunk + "num_heads"),
        stages=entries.integers(trunk + "stages"),
        global_attention_blocks=entries.integers(trunk + "global_att_blocks"),
        window_spec=entries.integers(trunk + "window_spec", default_trunk.window_spec),
        background_pos_embed_size=entries.integers(trunk + "window_pos_embed_bkg_spatial_size"),
    )
    if list(hiera.stage_dims[::-1]) != list(entries.integers("image_encoder.neck.backbone_channel_list")):
        raise ConfigError("neck.backbone_channel_list does not match the Hiera stage widths.")
    return hiera


_MISSING = object()


class _Entries:
    """Typed entries of the ``model:`` mapping by dotted path; ConfigError names the path of a bad one."""

    def __init__(self, model: Mapping[str, Any]) -> None:
        self.model = model

    def get(self, path: str, default: Any = _MISSING) -> Any:
        value: Any = self.model
        for key in path.split("."):
            if not isinstance(value, Mapping) or key not in value:
                if default is not _MISSING:
                    return default
                raise ConfigError(f"model.{path} is missing.")
            value = value[key]
        return value

    def integer(self, path: str, default: Any = _MISSING) -> int:
        value = self.get(path, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"model.{path} is {value!r}, not a whole number.")
        return value

    def integers(self, path: str, default: Any = _MISSING) -> Tuple[int, ...]:
        values = self.get(path, default)
        if not isinstance(values, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise ConfigError(f"model.{path} is {values!r}, not a list of whole numbers.")
        return tuple(values)

    def number(self, path: str, default: Any = _MISSING) -> float:
        value = self.get(path, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"model.{path} is {value!r}, not a number.")
        return float(value)
