"""Reading official yaml configs."""

from __future__ import annotations

import pytest
import yaml

from MedSAM2Lib.model.config import MEDSAM2_T512, ConfigError, HieraConfig, load_config

from conftest import DATA


def test_tiny_yaml_is_read_through_the_official_layout(tiny_config):
    assert tiny_config.trunk == HieraConfig(embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), global_attention_blocks=(3,))
    assert (tiny_config.d_model, tiny_config.mem_dim, tiny_config.memory_attention_layers) == (64, 16, 2)
    assert (tiny_config.memory_attention_ffn_dim, tiny_config.memory_fuser_layers, tiny_config.image_size) == (128, 1, 512)


def test_t512_numbers_give_the_default(tmp_path):
    """The official sam2.1_hiera_t512.yaml differs from the tiny test yaml only in these numbers."""
    document = yaml.safe_load((DATA / "medsam2_tiny_test.yaml").read_text())
    model = document["model"]
    trunk, neck = model["image_encoder"]["trunk"], model["image_encoder"]["neck"]
    trunk.update(embed_dim=96, stages=[1, 2, 7, 2], global_att_blocks=[5, 7, 9])
    neck.update(d_model=256, backbone_channel_list=[768, 384, 192, 96])
    layer = model["memory_attention"]["layer"]
    model["memory_attention"].update(d_model=256, num_layers=4)
    layer.update(d_model=256, dim_feedforward=2048)
    layer["cross_attention"].update(embedding_dim=256, kv_in_dim=64)
    model["memory_encoder"].update(out_dim=64, in_dim=256)
    model["memory_encoder"]["fuser"]["num_layers"] = 2
    path = tmp_path / "sam2.1_hiera_t512.yaml"
    path.write_text(yaml.safe_dump(document))
    assert load_config(path) == MEDSAM2_T512


def test_unsupported_flag_is_named(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text((DATA / "medsam2_tiny_test.yaml").read_text().replace(
        "use_high_res_features_in_sam: true", "use_high_res_features_in_sam: false"))
    with pytest.raises(ConfigError, match="use_high_res_features_in_sam=False"):
        load_config(path)


@pytest.mark.parametrize("content, message", [
    ("model: [", r"bad.yaml is not valid YAML at line 1, column 9: expected the node content"),
    ("a: 1", "no 'model:' section"),
    ("model:\n  image_size: 512", r"bad.yaml: model.image_encoder.trunk.embed_dim is missing\.$"),
])
def test_bad_config_files(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_mistyped_entry_is_named_with_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text((DATA / "medsam2_tiny_test.yaml").read_text().replace("num_maskmem: 7", "num_maskmem: seven"))
    with pytest.raises(ConfigError, match=r"^The config file .*typo.yaml: model.num_maskmem is 'seven', not a whole number\.$"):
        load_config(path)


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model:\n  name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml is not UTF-8 text \(byte 19 is not UTF-8\); save it as UTF-8\."):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="Cannot read the config file"):
        load_config(tmp_path / "none.yaml")
