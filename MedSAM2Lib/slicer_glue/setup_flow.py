"""Getting MedSAM2 ready inside Slicer: what is missing, one confirmation, the installs, the weights download or
a checkpoint file the user already has. The Slicer pieces are injected, so the whole flow runs in tests:

- ``pytorch_utils()``: returns ``PyTorchUtils.PyTorchUtilsLogic()`` of the PyTorch extension (raises
  ModuleNotFoundError when that extension is not installed);
- ``pip_install(requirement)``: ``slicer.util.pip_install``;
- ``confirm(question) -> bool``: ``slicer.util.confirmOkCancelDisplay``;
- ``progress(label, done, total)`` and ``should_cancel()``: a progress dialog (total 0: no known end).

Like SlicerTotalSegmentator, PyTorch is installed only when it is absent; when it is too old the user is told
to upgrade it in PyTorch Utils and restart, because a torch already imported stays loaded after an upgrade.

No Qt and no torch here: this is what the module runs before PyTorch exists.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Protocol, Tuple

from .. import weights
from ..model_catalogue import (CATALOGUE, DEFAULT_MODEL, CatalogueModel, UnknownModelError, catalogue_model,
                               model_of_file)
from ..inference.early_stop import DEFAULT_ABSENT_SLICES, check_absent_slices
from .runtime import MINIMUM_TORCH_VERSION, ModelChoice, TorchState, missing_packages, torch_state

class SetupError(RuntimeError):
    """Setup cannot go on; the message says why and what to do."""


class SettingsStore(Protocol):
    """``qt.QSettings`` in Slicer; a dictionary-backed double in tests."""

    def value(self, key: str, default: Any = None) -> Any: ...

    def setValue(self, key: str, value: Any) -> None: ...


class MedSAM2Settings:
    """The user's model (a published one by name, or a checkpoint file), device, precision and early stop, kept
    across Slicer sessions.

    QSettings may hand back a stored number or boolean as a string (INI files store text; slicer.util.toBool
    exists for that reason), so numbers and switches are parsed here.
    """

    CHECKPOINT_KEY = "MedSAM2/Checkpoint"  # a checkpoint file of the user's; empty: the model's file in the cache
    MODEL_KEY = "MedSAM2/Model"  # a name of the model catalogue
    DEVICE_KEY = "MedSAM2/Device"
    PRECISION_KEY = "MedSAM2/Precision"
    EARLY_STOP_KEY = "MedSAM2/EarlyStop"  # on or off
    EARLY_STOP_SLICES_KEY = "MedSAM2/EarlyStopSlices"  # kept while early stop is off

    def __init__(self, store: SettingsStore) -> None:
        self.store = store

    def checkpoint_path(self) -> Path:
        stored = self.store.value(self.CHECKPOINT_KEY, "")
        return Path(stored) if stored else self._named_model().path()

    def set_checkpoint_path(self, path: Path) -> None:
        """A checkpoint file of the user's, used instead of the named model."""
        self.store.setValue(self.CHECKPOINT_KEY, str(path))

    def model(self) -> Optional[CatalogueModel]:
        """The published model in use: the named one, or the one whose file name a chosen checkpoint file has
        (None for another file)."""
        stored = self.store.value(self.CHECKPOINT_KEY, "")
        return model_of_file(Path(stored)) if stored else self._named_model()

    def set_model(self, name: str) -> None:
        """Use a published model (from the weights cache) instead of a checkpoint file; UnknownModelError for a
        name the catalogue lacks."""
        self.store.setValue(self.MODEL_KEY, catalogue_model(name).name)
        self.store.setValue(self.CHECKPOINT_KEY, "")

    def _named_model(self) -> CatalogueModel:
        try:
            return catalogue_model(self.store.value(self.MODEL_KEY, DEFAULT_MODEL.name) or DEFAULT_MODEL.name)
        except UnknownModelError:  # a name from a later version of the extension
            return DEFAULT_MODEL

    def device(self) -> str:
        return self.store.value(self.DEVICE_KEY, "auto") or "auto"

    def set_device(self, device: str) -> None:
        self.store.setValue(self.DEVICE_KEY, device)

    def precision(self) -> str:
        """auto (the default), float32 or bfloat16."""
        return self.store.value(self.PRECISION_KEY, "auto") or "auto"

    def set_precision(self, precision: str) -> None:
        self.store.setValue(self.PRECISION_KEY, precision)

    def early_stop_slices(self) -> int:
        """How many slices in a row without the object end a direction (default 5), also while it is off."""
        try:
            slices = int(self.store.value(self.EARLY_STOP_SLICES_KEY, DEFAULT_ABSENT_SLICES))
        except (TypeError, ValueError):
            return DEFAULT_ABSENT_SLICES
        return slices if slices >= 1 else DEFAULT_ABSENT_SLICES

    def early_stop(self) -> Optional[int]:
        """The predictor's early stop: that number of slices, or None (off: track to the end)."""
        enabled = self.store.value(self.EARLY_STOP_KEY, True)
        if isinstance(enabled, str):
            enabled = enabled.strip().lower() not in ("false", "0", "")
        return self.early_stop_slices() if enabled else None

    def set_early_stop(self, slices: Optional[int]) -> None:
        """A number of slices (at least 1), or None to track to the end (the number is kept)."""
        check_absent_slices(slices)
        self.store.setValue(self.EARLY_STOP_KEY, slices is not None)
        if slices is not None:
            self.store.setValue(self.EARLY_STOP_SLICES_KEY, int(slices))

    def model_choice(self) -> ModelChoice:
        return ModelChoice(self.checkpoint_path(), None, self.device(), self.precision())


@dataclass(frozen=True)
class Readiness:
    """What segmenting still needs."""

    torch: TorchState
    packages: Tuple[str, ...]  # pip names
    checkpoint: Path
    checkpoint_present: bool
    model: Optional[CatalogueModel] = DEFAULT_MODEL  # the published model the checkpoint is; None: a file of one's own

    @property
    def ready(self) -> bool:
        return self.torch.usable and not self.packages and self.checkpoint_present

    @property
    def blocker(self) -> Optional[str]:
        """What setup cannot fix by itself (a PyTorch too old to replace in a running Slicer), or None."""
        return self.torch.sentence() if self.torch.too_old else None

    def to_do(self) -> List[str]:
        """Sentences naming what setup will install or download."""
        steps = []
        if self.torch.absent:
            steps.append(self.torch.sentence() + " It will be installed by the PyTorch extension (several minutes).")
        steps += [f"The Python package {package} will be installed." for package in self.packages]
        if not self.checkpoint_present:
            model = self.model or DEFAULT_MODEL
            steps.append(f"The MedSAM2 weights '{model.name}' will be downloaded to {self.checkpoint} (about "
                         f"{model.approximate_mb} MB).")
        return steps

    def status(self) -> str:
        """The module's status line."""
        if self.ready:
            return f"Ready. {self.torch.sentence()} Weights: {self.checkpoint}."
        return "\n".join(([self.blocker] if self.blocker else []) + self.to_do())


def _no_progress(label: str, done: int, total: int) -> None:
    pass


class SetupFlow:
    """Readiness and the one-confirmation setup; the Slicer installers are injected (see the module's docstring)."""

    def __init__(
        self,
        settings: MedSAM2Settings,
        pytorch_utils: Callable[[], Any],
        pip_install: Callable[[str], None],
        confirm: Callable[[str], bool],
        progress: Callable[[str, int, int], None] = _no_progress,
        should_cancel: Callable[[], bool] = lambda: False,
        weights_source: weights.WeightsSource = weights.WeightsSource(),
    ) -> None:
        self.settings = settings
        self.pytorch_utils = pytorch_utils
        self.pip_install = pip_install
        self.confirm = confirm
        self.progress = progress
        self.should_cancel = should_cancel
        self.weights_source = weights_source

    def readiness(self) -> Readiness:
        checkpoint = self.settings.checkpoint_path()
        return Readiness(torch_state(), tuple(missing_packages()), checkpoint, checkpoint.is_file(),
                         self.settings.model())

    def ensure_ready(self, ask: bool = True) -> bool:
        """Install and download what is missing after one confirmation (``ask``). False if the user declined
        or cancelled the download; SetupError when setup cannot go on."""
        readiness = self.readiness()
        if readiness.ready:
            return True
        if readiness.blocker:
            raise SetupError(readiness.blocker)
        question = "MedSAM2 needs a few things first:\n\n- " + "\n- ".join(readiness.to_do()) + "\n\nProceed?"
        if ask and not self.confirm(question):
            return False
        if readiness.torch.absent:
            self.install_torch()
        for package in readiness.packages:
            self.progress(f"Installing {package}...", 0, 0)
            self.pip_install(package)
        if not readiness.checkpoint_present:
            return self.download_weights()
        return True

    def install_torch(self) -> None:
        """PyTorch through the PyTorch extension, with MedSAM2's minimum version."""
        try:
            logic = self.pytorch_utils()
        except ModuleNotFoundError:
            raise SetupError("MedSAM2 needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, "
                             "restart Slicer and try again.") from None
        requirement = ">=" + ".".join(map(str, MINIMUM_TORCH_VERSION))
        self.progress("Installing PyTorch (this can take several minutes)...", 0, 0)
        # PyTorchUtilsLogic.installTorch returns the imported torch module, or None if the install was declined
        # (askConfirmation=False: our single confirmation was already given).
        if logic.installTorch(askConfirmation=False, torchVersionRequirement=requirement) is None or not torch_state().usable:
            raise SetupError("PyTorch could not be installed; see the Python console for details, or install it "
                             f"in the PyTorch Utils module (version requirement {requirement}).")

    def download_weights(self) -> bool:
        """The chosen published model (a checkpoint file of another name: the default model) into the configured
        path, verified; False if the user cancelled (nothing kept). DownloadError (offline, ...) says how to get
        the file by hand."""
        label = "Downloading MedSAM2 weights..."
        model = self.settings.model() or DEFAULT_MODEL
        source = dataclasses.replace(self.weights_source, filename=model.filename)
        try:
            weights.download_checkpoint(self.settings.checkpoint_path(),
                                        progress=lambda done, total: self.progress(label, done, total),
                                        should_cancel=self.should_cancel, source=source)
        except weights.DownloadCancelled:
            return False
        return True

    def use_local_checkpoint(self, path: Path) -> Path:
        """A checkpoint file already on this computer (offline sites); it is checked to load (needs torch)."""
        if not torch_state().usable:
            raise SetupError("Checking a checkpoint file needs PyTorch: run the setup first. "
                             + torch_state().sentence())
        checked = weights.install_local_checkpoint(path)
        self.settings.set_checkpoint_path(checked)
        return checked


@dataclass(frozen=True)
class ModelEntry:
    """One item of the model combo boxes (module panel and effect options)."""

    value: str  # a catalogue name, or OWN_FILE
    label: str
    tooltip: str


OWN_FILE = ""  # the entry of a checkpoint file of the user's


def model_entries(settings: MedSAM2Settings) -> List[ModelEntry]:
    """The catalogue's models with their architecture, size and whether they are downloaded; first, when the
    user's own checkpoint file is in use, an entry for it. :func:`selected_model_entry` is the current one."""
    entries = []
    if settings.model() is None:
        path = settings.checkpoint_path()
        entries.append(ModelEntry(OWN_FILE, f"File: {path.name}", str(path)))
    for model in CATALOGUE:
        here = "downloaded" if model.is_downloaded() else "to download"
        entries.append(ModelEntry(model.name, f"{model.name} ({model.architecture}, about {model.approximate_mb} MB, "
                                              f"{here})", f"{model.trained_for}. File: {model.path()}"))
    return entries


def selected_model_entry(settings: MedSAM2Settings) -> str:
    """The value of the entry in use (a chosen file named like a published model counts as that model)."""
    model = settings.model()
    return OWN_FILE if model is None else model.name
