"""What the Slicer module needs to know before segmenting: is PyTorch there and recent enough, which
checkpoint to use, and one loaded model kept across uses. No Qt here, and torch is imported only on demand,
so this module loads in a Slicer that has no PyTorch yet."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from ..inference.early_stop import DEFAULT_ABSENT_SLICES

MINIMUM_TORCH_VERSION = (2, 5)
# PyYAML reads model config files; Slicer's Python does not always ship it.
EXTRA_PACKAGES = {"yaml": "PyYAML"}


def _version_tuple(version: str) -> Tuple[int, ...]:
    numbers = []
    for part in version.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def installed_torch_version() -> Optional[str]:
    """The installed PyTorch version, without importing it (importing torch takes seconds)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_status() -> Tuple[bool, str]:
    """(usable, sentence) about the installed PyTorch."""
    version = installed_torch_version()
    minimum = ".".join(map(str, MINIMUM_TORCH_VERSION))
    if version is None:
        return False, f"PyTorch is not installed (MedSAM2 needs {minimum} or later)."
    if _version_tuple(version) < MINIMUM_TORCH_VERSION:
        return False, f"PyTorch {version} is installed; MedSAM2 needs {minimum} or later."
    return True, f"PyTorch {version} is installed."


def missing_packages() -> List[str]:
    """pip names of the extra packages that are not importable."""
    return [package for module, package in EXTRA_PACKAGES.items() if importlib.util.find_spec(module) is None]


@dataclass(frozen=True)
class ModelChoice:
    checkpoint: Path
    config: Optional[Path] = None  # None: MedSAM2's t512
    device: str = "auto"


class ModelCache:
    """Keeps the last loaded model; loads again only when the checkpoint file, config or device changes."""

    def __init__(self) -> None:
        self._key = None
        self._model = None

    def model(self, choice: ModelChoice):
        from ..model.checkpoint import load_model
        from ..model.config import MEDSAM2_T512, load_config
        from ..inference.predictor import select_device

        checkpoint = Path(choice.checkpoint)
        stamp = checkpoint.stat().st_mtime_ns if checkpoint.is_file() else None
        key = (checkpoint.resolve(), stamp, choice.config, choice.device)
        if key != self._key:
            self._model = None  # free the previous model before loading another
            config = load_config(choice.config) if choice.config else MEDSAM2_T512
            self._model = load_model(checkpoint, config, select_device(choice.device))
            self._key = key
        return self._model

    def predictor(self, choice: ModelChoice, fill_holes: bool = True, keep_largest_component: bool = True,
                  precision: str = "auto", early_stop: Optional[int] = DEFAULT_ABSENT_SLICES):
        """precision: auto, float32 or bfloat16; early_stop: slices without the object that end a direction
        (None: track to the end)."""
        from ..inference.predictor import VolumePredictor

        return VolumePredictor(self.model(choice), fill_holes=fill_holes, keep_largest_component=keep_largest_component,
                               precision=precision, early_stop=early_stop)

    def clear(self) -> None:
        self._key = self._model = None
