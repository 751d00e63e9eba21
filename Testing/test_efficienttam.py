"""Efficient MedSAM2 (EfficientTAM: ViT trunk) against the official efficient_track_anything code's outputs.

Fixtures: Testing/Data/*efficienttam* (made by Data/make_efficienttam_fixtures.py, see Data/README.md).
Tolerances as for the Hiera model: logits within 1e-4 x max|ref| per slice; masks equal except where the
reference logit lies within that tolerance of 0.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from MedSAM2Lib.model.checkpoint import CheckpointError, load_model, recognised_config
from MedSAM2Lib.model.config import (EFFICIENTTAM, EFFICIENTTAM_S_512, EFFICIENTTAM_TI_512, HIERA, MEDSAM2_T512,
                                     ConfigError, ViTConfig, load_config)
from MedSAM2Lib.model.medsam2 import MedSAM2
from MedSAM2Lib.inference.predictor import VolumePredictor
from MedSAM2Lib.inference.session import Session

from conftest import DATA, relative_error
from test_session import give, scenario_steps

TOLERANCE = 1e-4
CHECKPOINT = DATA / "efficienttam_tiny_random_seed5.pt"


@pytest.fixture(scope="module")
def efficient_config():
    return load_config(DATA / "efficienttam_tiny_test.yaml")


@pytest.fixture(scope="module")
def efficient_model(efficient_config):
    return load_model(CHECKPOINT, efficient_config)


def assert_matches(logits: np.ndarray, reference: np.ndarray, where: str) -> None:
    tolerance = TOLERANCE * np.abs(reference).max()
    assert np.abs(logits - reference).max() <= tolerance, where
    decided = np.abs(reference) > tolerance
    np.testing.assert_array_equal((logits > 0)[decided], (reference > 0)[decided], err_msg=where)


def assert_masks_match(ours: np.ndarray, reference: np.ndarray, undecided: np.ndarray) -> None:
    """Volumes equal wherever the reference decided each slice beyond the tolerance."""
    np.testing.assert_array_equal(ours[~undecided], reference[~undecided])


def reference_logits(reference, calls, shape):
    """{(prefix, slice): logits at slice size} of the reference's propagate outputs; ``calls``: {prefix: key
    stem of its low-res logits and frames}."""
    logits = {}
    for prefix, (frames_key, low_res_key) in calls.items():
        for k, index in enumerate(reference[frames_key]):
            logits[prefix, int(index)] = slice_logits(reference[low_res_key][k], shape)
    return logits


def undecided_voxels(logits, shape) -> np.ndarray:
    """Voxels where a reference logit lies within the tolerance of 0 (their sign is float rounding's)."""
    undecided = np.zeros(shape, dtype=bool)
    for (_, index), values in logits.items():
        undecided[index] |= np.abs(values) <= TOLERANCE * np.abs(values).max()
    return undecided


def slice_logits(low_res: np.ndarray, shape) -> np.ndarray:
    """The reference's yielded logits: its low-res logits resized one slice at a time, as it does."""
    return F.interpolate(torch.from_numpy(low_res)[None, None], size=tuple(shape), mode="bilinear",
                         align_corners=False)[0, 0].numpy()


# -- architecture ----------------------------------------------------------------------------------------


def test_tiny_config_is_read_as_efficienttam(efficient_config):
    assert efficient_config.architecture == EFFICIENTTAM
    assert efficient_config.trunk == ViTConfig(embed_dim=16, depth=4, num_heads=2, window_size=14,
                                               window_blocks=(0, 2))
    assert (efficient_config.d_model, efficient_config.mem_dim, efficient_config.memory_attention_layers) == (16, 4, 2)
    assert not (efficient_config.high_res_features or efficient_config.pointer_temporal_encoding
                or efficient_config.no_object_memory_embedding)
    assert MEDSAM2_T512.architecture == HIERA and MEDSAM2_T512.high_res_features


@pytest.mark.parametrize("name, config", [("ti", EFFICIENTTAM_TI_512), ("s", EFFICIENTTAM_S_512)])
def test_built_in_configs_have_the_official_models_keys_and_shapes(name, config):
    """The official efficienttam_{ti,s}_512x512.yaml models' state_dict listings (made from the official code)."""
    official = json.loads((DATA / f"state_dict_efficienttam_{name}.json").read_text())
    with torch.device("meta"):
        ours = {key: list(value.shape) for key, value in MedSAM2(config).state_dict().items()}
    assert ours == official


def test_efficienttam_yaml_settings_we_do_not_reproduce_are_refused(tmp_path):
    text = (DATA / "efficienttam_tiny_test.yaml").read_text()
    for old, new, message in (
        ("add_tpos_enc_to_obj_ptrs: false", "add_tpos_enc_to_obj_ptrs: true",
         "add_tpos_enc_to_obj_ptrs=True: this implementation of EfficientTAM needs False"),
        ("use_rel_pos: false", "use_rel_pos: true", "no relative positions"),
        ("backbone_channel_list: [16]", "backbone_channel_list: [32]", "does not match the ViT width"),
    ):
        path = tmp_path / "changed.yaml"
        path.write_text(text.replace(old, new))
        with pytest.raises(ConfigError, match=message):
            load_config(path)


def test_checkpoint_architecture_is_recognised_from_its_keys(tmp_path):
    for config in (MEDSAM2_T512, EFFICIENTTAM_TI_512, EFFICIENTTAM_S_512):
        with torch.device("meta"):
            state_dict = MedSAM2(config).state_dict()
        assert recognised_config(state_dict) == config


def test_tiny_efficienttam_checkpoint_without_its_config_is_named():
    with pytest.raises(CheckpointError, match=r"does not fit .* EfficientTAM \(Efficient MedSAM2\) checkpoint with a "
                                              r"ViT trunk of width 16 and 4 blocks.*pass its config file"):
        load_model(CHECKPOINT)


def test_checkpoint_of_neither_family_gets_a_sentence(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": {"encoder.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(CheckpointError, match="It does not look like a SAM 2 family checkpoint"):
        load_model(path)


def test_strict_loading_refuses_a_missing_tensor(tmp_path, efficient_config):
    state_dict = torch.load(CHECKPOINT, weights_only=True)["model"]
    del state_dict["image_encoder.neck.convs.0.norm_1.bias"]
    path = tmp_path / "incomplete.pt"
    torch.save({"model": state_dict}, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys \(e.g. image_encoder.neck.convs.0.norm_1.bias\)"):
        load_model(path, efficient_config)


# -- parity ----------------------------------------------------------------------------------------------


def test_ct_pipeline_matches_official_code_in_both_directions(efficient_model, input_volume):
    """One box on the key slice, forward then backward, as the official CT script; slice order, logits, object
    scores, union and its largest component."""
    volume, key_slice, box = input_volume
    reference = np.load(DATA / "expected_efficienttam_tiny_fillholes.npz")
    results = list(VolumePredictor(efficient_model).propagate(volume, key_slice, box))
    expected_order = list(reference["fwd_frame_idx"]) + list(reference["rev_frame_idx"])[1:]
    assert [r.index for r in results] == expected_order
    by_index = {r.index: r for r in results}
    logits = reference_logits(reference, {d: (f"{d}_state_frames", f"{d}_lowres_logits") for d in ("fwd", "rev")},
                              volume.shape[1:])
    for (direction, index), expected in logits.items():
        assert_matches(by_index[index].logits, expected, f"{direction} slice {index}")
    for direction in ("fwd", "rev"):
        for index, score in zip(reference[f"{direction}_state_frames"], reference[f"{direction}_object_score_logits"]):
            assert by_index[int(index)].object_score == pytest.approx(float(score), abs=TOLERANCE * abs(float(score)))
    union = np.zeros_like(reference["seg_union"])
    for result in results:
        union[result.index] |= result.mask
    undecided = undecided_voxels(logits, volume.shape)
    assert_masks_match(union, reference["seg_union"], undecided)
    segmentation = VolumePredictor(efficient_model).segment(volume, key_slice, box)
    assert_masks_match(segmentation, reference["seg_final"], undecided)


@pytest.mark.parametrize("name", ["two_boxes", "mask_on_key"])
def test_session_scenario_matches_official_video_predictor(name, efficient_model, input_volume):
    """Two conditioning slices; a mask as the prompt (the official Efficient MedSAM2 script's way of giving
    its box's mask). Each direction's propagation against the official one, then union and largest component."""
    volume = input_volume[0]
    reference = np.load(DATA / f"session_efficienttam_{name}.npz")
    calls = json.loads(str(reference["calls_json"]))
    session = Session(VolumePredictor(efficient_model), volume)
    for step in scenario_steps(name):
        if "propagate" not in step:
            give(session, step)
            continue
        list(session.propagate(step["propagate"]))
    # Each direction's one propagate call is its last call.
    stems = {prefix: f"{prefix}_call{len(calls[prefix]) - 1}" for prefix in ("fwd", "rev")}
    logits = reference_logits(reference, {p: (f"{s}_frames", f"{s}_lowres_logits") for p, s in stems.items()},
                              volume.shape[1:])
    for (prefix, index), expected in logits.items():
        assert_matches(session.results[index].logits, expected, f"{prefix} slice {index}")
    union = np.zeros(volume.shape, dtype=np.uint8)
    for index, result in session.results.items():
        union[index] = result.mask
    undecided = undecided_voxels(logits, volume.shape)
    assert_masks_match(union, reference["seg_union"], undecided)
    assert_masks_match(session.mask(), reference["seg_final"], undecided)


def test_fast_mode_runs_the_efficient_model(efficient_model, input_volume):
    """bfloat16 on the ViT trunk too; its masks agree with exact mode as the Hiera model's do (>= 0.98 Dice)."""
    volume, key_slice, box = input_volume
    exact = VolumePredictor(efficient_model).segment(volume, key_slice, box) > 0
    fast = VolumePredictor(efficient_model, precision="bfloat16").segment(volume, key_slice, box) > 0
    dice = 2 * np.logical_and(exact, fast).sum() / (exact.sum() + fast.sum())
    assert dice >= 0.98
