"""Checkpoint loading: exact t512 layout, and a sentence for every way a checkpoint can be wrong."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
import torch

from MedSAM2Lib.model.checkpoint import CheckpointError, load_model, read_state_dict
from MedSAM2Lib.model.config import MEDSAM2_T512, HieraConfig
from MedSAM2Lib.model import MedSAM2

from conftest import DATA


def shapes(model: MedSAM2):
    return {key: list(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.parametrize("listing, config_name", [("state_dict_t512.json", "t512"), ("state_dict_tiny.json", "tiny")])
def test_state_dict_keys_and_shapes_equal_the_official_model(listing, config_name, tiny_config):
    config = MEDSAM2_T512 if config_name == "t512" else tiny_config
    reference = json.loads((DATA / listing).read_text())
    model = MedSAM2(config)
    assert shapes(model) == reference["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == reference["num_parameters"]


def test_loads_official_format_strictly(tiny_config, checkpoints):
    model = load_model(checkpoints["tiny"], tiny_config)
    reference = torch.load(checkpoints["tiny"], weights_only=True)["model"]
    assert all(torch.equal(model.state_dict()[key], value) for key, value in reference.items())
    assert not model.training


def test_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(CheckpointError, match=r"No MedSAM2 checkpoint at .*huggingface\.co/wanglab/MedSAM2"):
        read_state_dict(tmp_path / "MedSAM2_latest.pt")


def test_truncated_file_is_reported_as_damaged(tmp_path, checkpoints):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoints["tiny"].read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="damaged or not a PyTorch file.*Download it again"):
        read_state_dict(truncated)


def test_random_bytes_are_reported_as_damaged(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x02not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="damaged or not a PyTorch file"):
        read_state_dict(garbage)


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("kind", ["torch.save", "raw pickle"])
def test_pickle_that_would_run_code_is_refused_as_unsafe_without_running_it(tmp_path, kind):
    marker = tmp_path / "code_ran"
    malicious = tmp_path / "malicious.pt"
    content = {"model": {"weight": torch.zeros(1)}, "payload": _RunsCodeWhenUnpickled(marker)}
    if kind == "torch.save":
        torch.save(content, malicious)
    else:  # a plain pickle (protocol 4), for which torch's refusal does not name the function
        malicious.write_bytes(pickle.dumps(content, protocol=4))
    with pytest.raises(CheckpointError) as refused:
        read_state_dict(malicious)
    message = str(refused.value)
    assert message.startswith(f"Refused to load {malicious} because it is unsafe") and "(io.open)" in message
    assert "nothing from it was executed" in message
    assert "damaged" not in message and "weights_only" not in message
    assert not marker.exists()
    # The payload is real: an unrestricted unpickler runs it.
    pickle.loads(pickle.dumps(_RunsCodeWhenUnpickled(marker))).close()
    assert marker.exists()


def test_file_without_model_entry(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="expected a dictionary with a 'model' state_dict"):
        read_state_dict(path)


def _save(model_or_state, path):
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    torch.save({"model": state}, path)
    return path


def test_larger_sam21_checkpoint_is_named(tmp_path):
    base_plus = dataclasses.replace(
        MEDSAM2_T512,
        trunk=HieraConfig(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_attention_blocks=(12, 16, 20),
                          background_pos_embed_size=(14, 14)),
    )
    path = _save(MedSAM2(base_plus), tmp_path / "sam2.1_hiera_base_plus.pt")
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    message = str(error.value)
    assert "SAM 2.1 checkpoint with Hiera-B+ (base plus)" in message
    assert "unexpected keys (e.g. image_encoder.trunk.blocks.12" in message
    assert "tensors of another shape (e.g. image_encoder.neck.convs.0.conv.weight [256, 896, 1, 1]" in message


def test_sam20_checkpoint_is_named(tmp_path, tiny_config, checkpoints):
    state = torch.load(checkpoints["tiny"], weights_only=True)["model"]
    for key in ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight", "obj_ptr_tpos_proj.bias"):
        del state[key]
    path = _save(state, tmp_path / "sam2_tiny.pt")
    with pytest.raises(CheckpointError, match=r"3 missing keys \(e.g. no_obj_embed_spatial.*SAM 2.0 checkpoint"):
        load_model(path, tiny_config)


def test_tiny_checkpoint_with_default_config_names_the_mismatch(checkpoints):
    with pytest.raises(CheckpointError, match="does not fit the configured architecture.*pass its config file"):
        load_model(checkpoints["tiny"])
