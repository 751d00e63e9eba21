"""What the MedSAM2 module shares with its Segment Editor effect, without Qt: the settings, the loaded model, the
one-run-at-a-time controller, the setup flow, and the scene observation that releases image features when the
scene closes. The module (MedSAM2Slicer/MedSAM2.py) builds one with Slicer's settings store, installers and
dialogs, and calls :meth:`ModuleState.cleanup` when Slicer unloads or reloads it: the scene keeps no reference
to an old state (and so to its model and features) afterwards.

No torch here: the module builds this at Slicer's startup, before PyTorch may exist.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

import slicer

from .run_controller import RunController
from .runtime import ModelCache
from .setup_flow import MedSAM2Settings, SettingsStore, SetupFlow


class ModuleState:
    """Settings, setup on consent, the loaded model and the run controller shared by the module and the effect.

    scene: the application's MRML scene; computing(): the context around each run's computation (the wait
    cursor); the other arguments are SetupFlow's.
    """

    def __init__(self, store: SettingsStore, scene, pytorch_utils: Callable[[], Any],
                 pip_install: Callable[[str], None], confirm: Callable[[str], bool],
                 progress: Callable[[str, int, int], None], should_cancel: Callable[[], bool],
                 close_progress: Callable[[], None] = lambda: None,
                 computing: Callable[[], ContextManager] = contextlib.nullcontext) -> None:
        self.settings = MedSAM2Settings(store)
        self.models = ModelCache()
        self.runs = RunController(computing)
        self.setup = SetupFlow(self.settings, pytorch_utils, pip_install, confirm, progress=progress,
                               should_cancel=should_cancel)
        self._close_progress = close_progress
        # Image features belong to the scene's volumes: drop them when it closes (the model stays loaded).
        self._scene: Optional[Any] = scene
        self._scene_closed_tag = scene.AddObserver(slicer.vtkMRMLScene.EndCloseEvent, self._on_scene_closed)

    def _on_scene_closed(self, caller=None, event=None) -> None:
        self.models.forget_features()

    def set_up(self, owner: Any = None) -> bool:
        """The one-confirmation setup, as one run of the shared controller (RunRefused while another runs);
        False if the user declined or cancelled the download."""
        with self.runs.exclusive("setting up MedSAM2", owner):
            try:
                return self.setup.ensure_ready()
            finally:
                self._close_progress()

    def segmentation_logic(self, fill_holes: bool = True, keep_largest_component: bool = True):
        """The MedSAM2Logic on the configured checkpoint, device and precision, with the configured early stop
        (after set_up); the same object, with its image-feature cache, until the model, device or precision
        changes."""
        return self.models.logic(self.settings.model_choice(), fill_holes, keep_largest_component,
                                 self.settings.early_stop())

    def use_local_checkpoint(self, path) -> Path:
        with self.runs.exclusive("checking a checkpoint file"):
            return self.setup.use_local_checkpoint(path)

    def setup_button_enabled(self) -> bool:
        """The module's setup button: only when something is missing that setup can install, and nothing runs."""
        readiness = self.setup.readiness()
        return not self.runs.busy and not readiness.ready and not readiness.blocker

    def status(self) -> str:
        """The module's status line."""
        return f"Busy {self.runs.activity}..." if self.runs.busy else self.setup.readiness().status()

    def cleanup(self) -> None:
        """Stop observing the scene and release the model (the module is being unloaded or reloaded)."""
        if self._scene is not None:
            self._scene.RemoveObserver(self._scene_closed_tag)
            self._scene = None
        self.models.clear()

