"""Early stop: a propagation direction ends once the model has not seen the object on several slices in a row.

Both our and the official pipeline would otherwise track every slice to the volume's end, long after the
object has gone. The decision is the model's own: its object score is <= 0 on a slice where it sees no object
(the mask there is empty). The slices computed before the stop are exactly those of a full run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

DEFAULT_ABSENT_SLICES = 5
DIRECTIONS = ("both", "forward", "backward")  # of a propagation (here without torch: session files name them)


@dataclass(frozen=True)
class DirectionStop:
    """Where and why one propagation direction ended."""

    direction: str  # "forward" or "backward"
    last_slice: int  # the last slice computed in that direction
    absent_slices: int = 0  # > 0: stopped early, the object absent on this many slices up to last_slice

    @property
    def early(self) -> bool:
        return self.absent_slices > 0

    def __str__(self) -> str:
        if not self.early:
            return f"{self.direction.capitalize()} propagation reached slice {self.last_slice}, the end of its range."
        step = 1 if self.direction == "forward" else -1
        first = self.last_slice - step * (self.absent_slices - 1)
        return (
            f"{self.direction.capitalize()} propagation stopped at slice {self.last_slice}: the model saw no object "
            f"on slices {first}-{self.last_slice} ({self.absent_slices} in a row)."
        )


def check_absent_slices(absent_slices: Optional[int]) -> None:
    if absent_slices is not None and absent_slices < 1:
        raise ValueError(f"Early stop needs at least one slice without the object; got {absent_slices}.")


class AbsenceWatch:
    """Follows one direction's object scores; ``absent_slices`` None tracks to the end."""

    def __init__(self, direction: str, absent_slices: Optional[int]) -> None:
        check_absent_slices(absent_slices)
        self.direction = direction
        self.absent_slices = absent_slices
        self._run = 0

    def update(self, index: int, object_score: float, last: bool, prompted: bool = False) -> Optional[DirectionStop]:
        """Record the score of slice ``index`` (``last``: the direction's final planned slice); a stop or None.
        A prompted slice (conditioning or corrected) never counts as absent: the user put the object there."""
        self._run = self._run + 1 if object_score <= 0 and not prompted else 0
        if self.absent_slices is not None and self._run >= self.absent_slices:
            return DirectionStop(self.direction, index, self._run)
        return DirectionStop(self.direction, index) if last else None
