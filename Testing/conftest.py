"""Shared test fixtures: the tiny MedSAM2 parity data copied into Testing/Data (see Data/README.md)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from functools import lru_cache
from typing import Dict

import numpy as np
import pytest
import torch

from MedSAM2Lib.model.checkpoint import load_model
from MedSAM2Lib.inference.reference_check import ReferenceMasks, relative_error  # noqa: F401 (for the tests)
from MedSAM2Lib.model.config import load_config

DATA = Path(__file__).resolve().parent / "Data"
# CI clones the repository with ../shared beside it; a plain clone has only Testing/Data.
SHARED_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "medsam2"

# Fixture set -> (checkpoint variant, hole filling on?)
FIXTURE_SETS = {
    "tiny_fillholes": ("tiny", True),
    "tiny_nofill": ("tiny", False),
    "tiny_fallback_fillholes": ("tiny_fallback", True),
    "tiny_fallback_nofill": ("tiny_fallback", False),
    "tiny_absent_nofill": ("tiny_absent", False),
}


@lru_cache(maxsize=None)
def reference_masks(name: str) -> ReferenceMasks:
    """An official fixture's seg_union / seg_final and the logits that decided them, to compare masks with as
    float32 allows on any CPU (MedSAM2Lib.inference.reference_check): "tiny_fillholes" (a CT-pipeline set,
    expected_<name>.npz) or "session_<scenario>"."""
    return ReferenceMasks.from_file(DATA / (f"{name}.npz" if name.startswith("session_") else f"expected_{name}.npz"))


@pytest.fixture(scope="session")
def tiny_config():
    return load_config(DATA / "medsam2_tiny_test.yaml")


@pytest.fixture(scope="session")
def input_volume():
    content = np.load(DATA / "input_volume.npz")
    return content["imgs"], int(content["key_slice"]), [float(v) for v in content["box"]]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Dict[str, Path]:
    """Paths of the three tiny checkpoints in the official format. The fallback and absent variants are the
    base checkpoint with the few tensors in which they differ (stored in checkpoint_variants.npz)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    base_path = DATA / "medsam2_tiny_random_seed0.pt"
    paths = {"tiny": base_path}
    deltas = np.load(DATA / "checkpoint_variants.npz")
    for variant in ("tiny_fallback", "tiny_absent"):
        state_dict = torch.load(base_path, weights_only=True)["model"]
        for name in deltas.files:
            prefix, _, key = name.partition("/")
            if prefix == variant:
                state_dict[key] = torch.from_numpy(deltas[name])
        paths[variant] = folder / f"medsam2_{variant}_seed0.pt"
        torch.save({"model": state_dict}, paths[variant])
    return paths


@pytest.fixture(scope="session")
def tiny_model(tiny_config, checkpoints):
    return load_model(checkpoints["tiny"], tiny_config)


# -- ending the test process -----------------------------------------------------------------------------------
# In two of five fresh-clone CI runs the pytest process crashed (SIGSEGV, exit 139) after the last test had passed
# and the summary was printed, with PYTHONFAULTHANDLER=1 printing no Python stack: the crash is in native teardown
# after Python's own finalization (C atexit handlers and library destructors), with threads that some libraries
# leave running to the end (Ray's gRPC threads outlive ray.shutdown(), Mesa's llvmpipe threads outlive the render
# windows). Nothing of ours runs there and no result depends on it, so when pytest is the program, the process
# ends as soon as pytest has finished (the summary printed, every plugin unconfigured), with pytest's own exit
# status. Run in-process (pytest.main from other code), nothing changes.
_SESSION = None


def pytest_sessionstart(session):
    global _SESSION
    _SESSION = session


def _pytest_is_the_program() -> bool:
    program = Path(sys.argv[0])
    return program.name == "pytest" or (program.name == "__main__.py" and program.parent.name == "pytest")


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if _SESSION is not None and _pytest_is_the_program():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(_SESSION.exitstatus))
