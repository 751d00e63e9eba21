"""The model ``medsam2 web`` computes with, and the page's model options (precision, early stop), as the desktop
module keeps them: the settings in a :class:`~MedSAM2Lib.slicer_glue.setup_flow.MedSAM2Settings` (here in memory,
for the server's life) and the logic from a :class:`~MedSAM2Lib.slicer_glue.runtime.ModelCache`, which keeps the
loaded model and makes a new logic when the precision changes (features computed in one precision are not reused
in the other), and hands the early stop to the logic for its next propagation.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional

from ..inference.early_stop import DEFAULT_ABSENT_SLICES
from ..slicer_glue.logic import MedSAM2Logic
from ..slicer_glue.runtime import ModelCache, ModelChoice
from ..slicer_glue.setup_flow import MedSAM2Settings


class MemoryStore(dict):
    """The settings store of MedSAM2Settings (QSettings in Slicer) in memory: the page's choices last as long as
    the server."""

    def value(self, key, default=None):
        return self.get(key, default)

    def setValue(self, key, value) -> None:
        self[key] = value


@dataclass(frozen=True)
class ModelOptions:
    """The model and how it computes, as the command line gives them (the page starts from these)."""

    choice: ModelChoice  # checkpoint, config, device, precision
    early_stop: Optional[int] = DEFAULT_ABSENT_SLICES  # None: track to the end
    fill_holes: bool = True
    keep_largest_component: bool = True

    @classmethod
    def from_arguments(cls, args: argparse.Namespace, saved_options: Optional[Mapping[str, Any]] = None
                       ) -> "ModelOptions":
        """``medsam2 web``'s model arguments (read as the other commands read them: cli.computing_options);
        ``saved_options``: a session file's, for what the arguments leave open."""
        from ..apps.cli import chosen_checkpoint, computing_options

        computing = computing_options(args, saved_options or {})
        return cls(ModelChoice(chosen_checkpoint(args), args.config, args.device, computing["precision"]),
                   computing["early_stop"], computing["fill_holes"], computing["keep_largest_component"])


class PageModel:
    """The page's model: ModelOptions, with the precision and early stop the page sets since (its fill holes and
    largest component are where the page starts: the tool keeps them as the effect's parameters)."""

    def __init__(self, options: ModelOptions) -> None:
        self.options = options
        self.models = ModelCache()
        self.settings = MedSAM2Settings(MemoryStore())
        self.settings.set_precision(options.choice.precision)
        self.settings.set_early_stop(options.early_stop)

    def choice(self) -> ModelChoice:
        return replace(self.options.choice, precision=self.settings.precision())

    def logic(self, fill_holes: bool, keep_largest_component: bool) -> MedSAM2Logic:
        """The logic in the precision chosen now, with the early stop chosen now and this post-processing (the
        effect's, :func:`~MedSAM2Lib.slicer_glue.effect.post_processing`, as the desktop module's
        ``segmentation_logic`` takes it): the same object while the precision stays (its image features are
        kept); the first call loads the model."""
        return self.models.logic(self.choice(), fill_holes, keep_largest_component, self.settings.early_stop())
