"""Architecture of a MedSAM2 network, as a frozen dataclass.

The default, :data:`MEDSAM2_T512`, is MedSAM2's ``sam2.1_hiera_t512.yaml`` (Hiera-tiny, 512 px).
:func:`load_config` reads an official hydra-style yaml (``model: image_encoder: trunk: ...``) and
refuses settings our implementation does not reproduce, rather than silently computing something else.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Tuple


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
class MedSAM2Config:
    """Everything that differs between MedSAM2 variants of the SAM 2.1 architecture.

    Fixed by the reference model, not configurable: two-way transformer depth 2, MLP 2048, 8 heads;
    IoU head hidden 256; 16 mask-input channels; at most 16 object pointers; 4 mask tokens.
    """

    image_size: int = 512
    trunk: HieraConfig = HieraConfig()
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


class ConfigError(ValueError):
    """The config file cannot be read or describes a model this implementation does not provide."""


# Inference flags that MedSAM2 (SAM 2.1) sets and that our implementation hard-codes.
_REQUIRED_FLAGS = {
    "use_mask_input_as_output_without_sam": True,
    "directly_add_no_mem_embed": True,
    "no_obj_embed_spatial": True,
    "use_high_res_features_in_sam": True,
    "multimask_output_in_sam": True,
    "iou_prediction_use_sigmoid": True,
    "use_obj_ptrs_in_encoder": True,
    "add_tpos_enc_to_obj_ptrs": True,
    "proj_tpos_enc_in_obj_ptrs": True,
    "use_signed_tpos_enc_to_obj_ptrs": True,
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
    """Read an official MedSAM2/SAM2 hydra yaml (e.g. ``sam2.1_hiera_t512.yaml``)."""
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
    for flag, expected in _REQUIRED_FLAGS.items():
        if model.get(flag, expected) != expected:
            raise ConfigError(f"Unsupported setting {flag}={model[flag]!r}: this implementation needs {expected!r}.")
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
    d_model = entries.integer("image_encoder.neck.d_model")
    if entries.integer("memory_attention.d_model") != d_model:
        raise ConfigError("memory_attention.d_model must equal the neck's d_model.")
    cross = "memory_attention.layer.cross_attention."
    return MedSAM2Config(
        image_size=entries.integer("image_size"),
        trunk=hiera,
        d_model=d_model,
        fpn_top_down_levels=entries.integers("image_encoder.neck.fpn_top_down_levels"),
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
