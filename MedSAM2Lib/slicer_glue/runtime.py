"""What the Slicer module needs to know before segmenting: is PyTorch there and recent enough, which
checkpoint to use, and one loaded model kept across uses. No Qt here, and torch is imported only on demand,
so this module loads in a Slicer that has no PyTorch yet."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
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


@dataclass(frozen=True)
class TorchState:
    """The PyTorch this Python uses. ``loaded``: the version of an already imported torch, which stays in use
    until Slicer restarts whatever is installed on disk since; ``installed``: the version on disk."""

    loaded: Optional[str]
    installed: Optional[str]

    @property
    def version(self) -> Optional[str]:
        return self.loaded or self.installed

    @property
    def absent(self) -> bool:
        return self.version is None

    @property
    def usable(self) -> bool:
        return self.version is not None and _version_tuple(self.version) >= MINIMUM_TORCH_VERSION

    @property
    def too_old(self) -> bool:
        return not self.absent and not self.usable

    def sentence(self) -> str:
        minimum = ".".join(map(str, MINIMUM_TORCH_VERSION))
        if self.absent:
            return f"PyTorch is not installed (MedSAM2 needs {minimum} or later)."
        if self.usable:
            return f"PyTorch {self.version} is installed."
        # SlicerTotalSegmentator's rule: never reinstall torch under a running Slicer (the old module would stay
        # loaded); the user upgrades it in PyTorch Utils and restarts.
        if self.loaded and self.installed and self.installed != self.loaded:
            return (f"PyTorch {self.loaded} is loaded and MedSAM2 needs {minimum} or later; PyTorch {self.installed} "
                    "is installed now: restart Slicer to use it.")
        return (f"PyTorch {self.version} is installed; MedSAM2 needs {minimum} or later. Upgrade it in the "
                f"PyTorch Utils module (version requirement >={minimum}), then restart Slicer.")


def torch_state() -> TorchState:
    """What PyTorch this Python would use, without importing it (importing torch takes seconds)."""
    loaded = sys.modules.get("torch", False)
    if loaded is None:  # an import of torch failed or is blocked in this Python
        return TorchState(None, None)
    if loaded:
        return TorchState(getattr(loaded, "__version__", None), _installed_torch_version())
    try:
        if importlib.util.find_spec("torch") is None:
            return TorchState(None, None)
    except (ImportError, ValueError):
        return TorchState(None, None)
    return TorchState(None, _installed_torch_version())


def _installed_torch_version() -> Optional[str]:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_packages() -> List[str]:
    """pip names of the extra packages that are not importable."""
    return [package for module, package in EXTRA_PACKAGES.items() if importlib.util.find_spec(module) is None]


@dataclass(frozen=True)
class ModelChoice:
    """The model to load and how it computes."""

    checkpoint: Path
    config: Optional[Path] = None  # None: MedSAM2's t512
    device: str = "auto"
    precision: str = "auto"  # auto, float32 (exact) or bfloat16 (fast); see MedSAM2Lib.model.precision


class ModelCache:
    """Keeps the last loaded model, and the effect's logic on it; loads again only when the checkpoint file,
    config or device changes. A change of precision keeps the model and makes a new logic (image features
    computed in one precision are not reused in the other)."""

    def __init__(self) -> None:
        self._key = None
        self._model = None
        self._logic = None

    def model(self, choice: ModelChoice):
        from ..model.checkpoint import load_model
        from ..model.config import load_config
        from ..inference.predictor import select_device

        checkpoint = Path(choice.checkpoint)
        stamp = checkpoint.stat().st_mtime_ns if checkpoint.is_file() else None
        key = (checkpoint.resolve(), stamp, choice.config, choice.device)
        if key != self._key:
            self.forget_features()  # its background encoding stops before another model loads
            self._model = self._logic = None  # free the previous model before loading another
            config = load_config(choice.config) if choice.config else None  # None: recognised from the checkpoint
            self._model = load_model(checkpoint, config, select_device(choice.device))
            self._key = key
        return self._model

    def predictor(self, choice: ModelChoice, fill_holes: bool = True, keep_largest_component: bool = True,
                  early_stop: Optional[int] = DEFAULT_ABSENT_SLICES):
        """A new predictor on the model in the choice's precision; early_stop: slices without the object that
        end a direction (None: track to the end)."""
        from ..inference.predictor import VolumePredictor

        return VolumePredictor(self.model(choice), fill_holes=fill_holes, keep_largest_component=keep_largest_component,
                               precision=choice.precision, early_stop=early_stop)

    def logic(self, choice: ModelChoice, fill_holes: bool = True, keep_largest_component: bool = True,
              early_stop: Optional[int] = DEFAULT_ABSENT_SLICES):
        """The MedSAM2Logic on this model in the choice's precision, the same one while both stay: its
        image-feature cache then survives from one click to the next (a preview then Propagate encodes each
        slice once). early_stop applies to the next propagation of the logic and of its sessions."""
        from ..inference.early_stop import check_absent_slices
        from ..model.precision import resolve_precision
        from .logic import MedSAM2Logic

        model = self.model(choice)
        check_absent_slices(early_stop)
        dtype = resolve_precision(choice.precision, next(model.parameters()).device)
        if self._logic is None or self._logic.predictor.dtype != dtype:
            self.forget_features()  # the logic replaced stops encoding in the background: one model call at a time
            self._logic = MedSAM2Logic(self.predictor(choice))
            # Kernel set-up now, with the loading, rather than in the clinician's first preview.
            self._logic.predictor.warm_up()
        # Post-processing and early stop do not touch the cached image features.
        predictor = self._logic.predictor
        predictor.fill_holes = fill_holes
        predictor.keep_largest_component = keep_largest_component
        predictor.early_stop = early_stop
        return self._logic

    def forget_features(self) -> None:
        """Drop the image features (the scene closed) but keep the model."""
        if self._logic is not None:
            self._logic.clear_cache()

    def clear(self) -> None:
        self.forget_features()  # the logic's background encoding stops with it
        self._key = self._model = self._logic = None
