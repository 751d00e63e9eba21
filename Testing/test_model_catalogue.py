"""The MedSAM2 model family: catalogue, `medsam2 models`, `download --model`, `--model` on the commands.

Downloads come from a Hugging Face style folder served through file:// URLs (the hubs are unreachable here).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from MedSAM2Lib.apps.cli import main
from MedSAM2Lib.model_catalogue import (CATALOGUE, DEFAULT_MODEL, MODEL_NAMES, UnknownModelError, catalogue_model,
                                        model_of_file)

from conftest import DATA
from test_weights import publish

EFFICIENT_TINY_CONFIG = DATA / "efficienttam_tiny_test.yaml"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("MEDSAM2_CACHE_DIR", str(folder))
    return folder


def test_catalogue_names_the_published_files():
    """The five MedSAM2 checkpoints of the official download.sh and the two Efficient MedSAM2 baselines of its
    CPU inference script, each once."""
    assert DEFAULT_MODEL.filename == "MedSAM2_latest.pt"
    assert sorted(model.filename for model in CATALOGUE) == sorted([
        "MedSAM2_latest.pt", "MedSAM2_2411.pt", "MedSAM2_CTLesion.pt", "MedSAM2_MRI_LiverLesion.pt",
        "MedSAM2_US_Heart.pt", "eff_medsam2_tiny_FLARE25_RECIST_baseline.pt",
        "eff_medsam2_small_FLARE25_RECIST_baseline.pt"])
    assert len(set(MODEL_NAMES)) == len(CATALOGUE)
    assert all(model.trained_for and model.architecture for model in CATALOGUE)


def test_approximate_sizes_are_the_architectures_float32_weights():
    """From the official models' state_dict listings: values x 4 bytes, in MB."""
    values = {
        "SAM 2.1 Hiera-T, 512 px": json.loads((DATA / "state_dict_t512.json").read_text())["num_parameters"] + 1,
        "EfficientTAM-Ti (ViT), 512 px": sum(math.prod(shape) for shape in json.loads(
            (DATA / "state_dict_efficienttam_ti.json").read_text()).values()),
        "EfficientTAM-S (ViT), 512 px": sum(math.prod(shape) for shape in json.loads(
            (DATA / "state_dict_efficienttam_s.json").read_text()).values()),
    }
    for model in CATALOGUE:
        assert model.approximate_mb == round(values[model.architecture] * 4 / 1e6), model.name


def test_unknown_name_is_a_sentence():
    with pytest.raises(UnknownModelError, match="no MedSAM2 model named 'huge'; the models are latest, 2411"):
        catalogue_model("huge")
    assert model_of_file(Path("/x/MedSAM2_CTLesion.pt")).name == "ct-lesion" and model_of_file(Path("a.pt")) is None


def test_catalogue_imports_without_torch():
    script = ("import sys; sys.modules['torch'] = None\n"
              "from MedSAM2Lib.model_catalogue import CATALOGUE\n"
              "from MedSAM2Lib.weights import missing_checkpoint_message\n"
              "print(len(CATALOGUE), missing_checkpoint_message(CATALOGUE[-1].path()))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.stdout.startswith("7 No checkpoint of the MedSAM2 model 'efficient-small'")
    assert "medsam2 download --model efficient-small" in run.stdout


def test_models_command_lists_the_family_and_what_is_downloaded(cache, capsys):
    cache.mkdir()
    (cache / "eff_medsam2_tiny_FLARE25_RECIST_baseline.pt").write_bytes(b"weights")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"weights folder: {cache}" in out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]
             if line.startswith("  ") and line.split()[0] in MODEL_NAMES}
    assert set(lines) == set(MODEL_NAMES)
    assert "downloaded" in lines["efficient-tiny"] and "not downloaded" not in lines["efficient-tiny"]
    assert "not downloaded, the default" in lines["latest"]
    assert "EfficientTAM-S (ViT), 512 px" in lines["efficient-small"] and "about 136 MB" in lines["efficient-small"]


def test_download_by_name_goes_to_the_cache_verified(tmp_path, cache, capsys):
    server = tmp_path / "server"
    content = os.urandom(5000)
    publish(server, content, filename="eff_medsam2_small_FLARE25_RECIST_baseline.pt")
    assert main(["download", "--model", "efficient-small", "--mirror", server.as_uri()]) == 0
    target = cache / "eff_medsam2_small_FLARE25_RECIST_baseline.pt"
    assert target.read_bytes() == content
    assert f"Verified MedSAM2 weights 'efficient-small' (eff_medsam2_small_FLARE25_RECIST_baseline.pt, published " \
           f"SHA256) at {target}" in capsys.readouterr().out
    # Another model is not on the server: a sentence, nothing written.
    assert main(["download", "--model", "us-heart", "--mirror", server.as_uri()]) == 1
    assert "medsam2: error: Could not download" in capsys.readouterr().err
    assert not (cache / "MedSAM2_US_Heart.pt").exists()


def test_model_and_checkpoint_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["segment", "v.npz", "-o", "m.npz", "--model", "latest", "--checkpoint", "x.pt"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_missing_model_file_says_how_to_get_it(tmp_path, cache, capsys):
    arguments = ["segment", str(DATA / "input_volume.npz"), "--slice", "12", "--box", "104", "70", "183", "131",
                 "-o", str(tmp_path / "m.npz"), "--model", "ct-lesion"]
    assert main(arguments) == 1
    err = capsys.readouterr().err
    assert f"No checkpoint of the MedSAM2 model 'ct-lesion' at {cache / 'MedSAM2_CTLesion.pt'}" in err
    assert "medsam2 download --model ct-lesion" in err and not (tmp_path / "m.npz").exists()


def test_segment_with_a_model_by_name_runs_the_efficient_architecture(tmp_path, cache):
    """The Efficient MedSAM2 file of the catalogue (here the tiny random-weight one under its name, with its
    config) segments as the efficient model does through the Python API."""
    from MedSAM2Lib.inference.predictor import VolumePredictor
    from MedSAM2Lib.model.checkpoint import load_model
    from MedSAM2Lib.model.config import load_config

    cache.mkdir()
    model_file = catalogue_model("efficient-tiny").path()
    shutil.copyfile(DATA / "efficienttam_tiny_random_seed5.pt", model_file)
    output = tmp_path / "m.npz"
    assert main(["segment", str(DATA / "input_volume.npz"), "--slice", "12", "--box", "104", "70", "183", "131",
                 "-o", str(output), "--model", "efficient-tiny", "--config", str(EFFICIENT_TINY_CONFIG),
                 "--precision", "float32", "--no-early-stop"]) == 0
    volume = np.load(DATA / "input_volume.npz")["imgs"]
    expected = VolumePredictor(load_model(model_file, load_config(EFFICIENT_TINY_CONFIG))).segment(
        volume, 12, [104, 70, 183, 131])
    np.testing.assert_array_equal(np.load(output)["mask"], expected)
