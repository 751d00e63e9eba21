"""Per-label Dice and normalised surface Dice (NSD) of a predicted label map against a reference, in numpy.

Conventions (also in the README):

- A label's *surface* is the set of its voxels that have at least one of their 6 face neighbours outside the
  label; voxels beyond the array count as outside, so a structure cut by the volume's edge is closed there.
- Distances are between voxel centres, in millimetres, using the voxel spacing (anisotropic voxels count).
- ``NSD(tau) = (|S_p within tau of S_r| + |S_r within tau of S_p|) / (|S_p| + |S_r|)``, where S_p and S_r are
  the surfaces of prediction and reference and sizes are voxel counts (not surface areas).
- Both empty: Dice = NSD = 1 (nothing to find, nothing found). Exactly one empty: both 0.

The "within tau" test is exact: a surface voxel is within tau of the other surface when the other surface has
a voxel at one of the integer offsets no longer than tau (in mm). Offsets are tried nearest first and each
voxel is dropped once matched, so the work is about (surface voxels x offsets actually tried) and the memory
is one padded boolean copy of the volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..atomic import reason, write_csv_atomically
from .volume_io import NPZ_ERRORS, VolumeError, check_npz, is_npz, read_volume

DEFAULT_TOLERANCE_MM = 2.0
# Keys of a label map in an .npz: ours (``medsam2 segment`` / ``batch``), then MedSAM2's data sets.
NPZ_LABEL_KEYS = ("mask", "gts")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npz")


# -- metrics on arrays ----------------------------------------------------------------------------------


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """2 |P and R| / (|P| + |R|) of two boolean arrays of one shape; 1.0 when both are empty."""
    prediction, reference = np.asarray(prediction, bool), np.asarray(reference, bool)
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / total


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boolean array (same shape, any dimension): the mask's voxels with a face neighbour outside it."""
    mask = np.asarray(mask, bool)
    padded = np.pad(mask, 1, constant_values=False)
    centre = tuple(slice(1, -1) for _ in range(mask.ndim))
    inside = mask.copy()
    for axis in range(mask.ndim):
        for step in (-1, 1):
            neighbour = list(centre)
            neighbour[axis] = slice(1 + step, padded.shape[axis] - 1 + step)
            inside &= padded[tuple(neighbour)]
    return mask & ~inside


def offsets_within(tolerance_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """(K, ndim) integer offsets whose length in mm is at most the tolerance, shortest first.

    spacing: voxel size in mm along each array axis (the arrays' axis order, not x, y, z)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    if tolerance_mm < 0 or not np.all(spacing > 0):
        raise ValueError(f"The tolerance ({tolerance_mm} mm) must be >= 0 and the spacing {tuple(spacing)} positive.")
    reach = np.floor(tolerance_mm / spacing + 1e-9).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), axis=-1).reshape(-1, len(reach))
    lengths = np.sqrt(((grid * spacing) ** 2).sum(axis=1))
    keep = lengths <= tolerance_mm + 1e-9
    order = np.argsort(lengths[keep], kind="stable")
    return grid[keep][order]


def count_within(sources: np.ndarray, target: np.ndarray, offsets: np.ndarray) -> int:
    """How many of the voxels ``sources`` (N, ndim) have a ``target`` voxel at one of the ``offsets``."""
    if len(sources) == 0 or not target.any():
        return 0
    reach = np.abs(offsets).max(axis=0)
    padded = np.pad(target, [(r, r) for r in reach], constant_values=False)
    strides = np.asarray(padded.strides, dtype=np.int64) // padded.itemsize
    flat = padded.ravel()
    unmatched = (sources + reach) @ strides
    for delta in offsets @ strides:
        unmatched = unmatched[~flat[unmatched + delta]]
        if unmatched.size == 0:
            break
    return len(sources) - unmatched.size


def normalised_surface_dice(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float], tolerance_mm: float = DEFAULT_TOLERANCE_MM
) -> float:
    """NSD of two boolean arrays at a tolerance in mm; spacing in mm along each array axis."""
    surface_p, surface_r = surface_voxels(prediction), surface_voxels(reference)
    total = int(surface_p.sum()) + int(surface_r.sum())
    if total == 0:
        return 1.0
    offsets = offsets_within(tolerance_mm, spacing)
    matched = count_within(np.argwhere(surface_p), surface_r, offsets)
    matched += count_within(np.argwhere(surface_r), surface_p, offsets)
    return matched / total


# -- per-label scores of label maps -----------------------------------------------------------------------


@dataclass
class LabelScore:
    """One row of the evaluation table (and CSV)."""

    case: str
    label: Optional[int]
    dice: float = math.nan
    nsd: float = math.nan
    reference_voxels: int = 0
    prediction_voxels: int = 0
    status: str = "ok"  # ok, or why there are no scores (missing prediction, shape mismatch, ...)


# The status of a pair with nothing to score: no failure (a scan without the structure, rightly found empty).
EMPTY_PAIR = "both maps are empty: no label to score (--labels scores chosen labels as absent in both)"


def present_labels(*label_maps: np.ndarray) -> List[int]:
    """The non-zero labels found in any of the maps, ascending."""
    found = set()
    for label_map in label_maps:
        found.update(int(value) for value in np.unique(label_map))
    found.discard(0)
    return sorted(found)


def score_labels(
    case: str,
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float],
    labels: Optional[Iterable[int]] = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> List[LabelScore]:
    """One :class:`LabelScore` per label (default: every label in either map); spacing per array axis."""
    scores = []
    for label in labels if labels is not None else present_labels(prediction, reference):
        predicted, expected = prediction == label, reference == label
        scores.append(LabelScore(
            case, int(label), dice(predicted, expected),
            normalised_surface_dice(predicted, expected, spacing, tolerance_mm),
            int(expected.sum()), int(predicted.sum()),
        ))
    return scores


# -- files and folders --------------------------------------------------------------------------------


def read_label_map(path: Path) -> Tuple[np.ndarray, Optional[Tuple[float, ...]]]:
    """An integer label map (D, H, W) and its spacing in mm per array axis (D, H, W order); the spacing is
    None for an .npz without one (``medsam2`` writes none: such a file takes its partner's spacing)."""
    if is_npz(path):
        label_map, spacing = _read_npz_labels(path)
    else:
        label_map, geometry = read_volume(path)
        spacing = tuple(geometry.spacing[::-1])
    if not np.issubdtype(label_map.dtype, np.integer) and not np.array_equal(label_map, np.round(label_map)):
        raise VolumeError(f"{path} holds non-integer values; a label map must hold whole numbers.")
    return label_map.astype(np.int64, copy=False), spacing


def _read_npz_labels(path: Path) -> Tuple[np.ndarray, Optional[Tuple[float, ...]]]:
    if not path.is_file():
        raise VolumeError(f"No label file at {path}.")
    check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as content:
            key = next((key for key in NPZ_LABEL_KEYS if key in content.files), None)
            if key is None:
                raise VolumeError(f"{path} has none of the label keys {', '.join(NPZ_LABEL_KEYS)}.")
            label_map = content[key]
            spacing = tuple(float(s) for s in content["spacing"]) if "spacing" in content.files else None
    except VolumeError:
        raise
    except NPZ_ERRORS as error:
        raise VolumeError(f"Cannot read {path} as an .npz file of labels: {reason(error)}.") from error
    return label_map, spacing


def is_volume_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(VOLUME_SUFFIXES)


def paired_files(prediction: Path, reference: Path) -> List[Tuple[str, Path, Path]]:
    """(case name, prediction file, reference file): the two files, or every volume file under the reference
    folder with the file of the same relative path under the prediction folder (which may be missing)."""
    for role, path in (("prediction", prediction), ("reference", reference)):
        if not path.exists():
            raise VolumeError(f"The {role} {path} does not exist.")
    if prediction.is_dir() != reference.is_dir():
        kinds = " and ".join(f"{path} is a {'folder' if path.is_dir() else 'file'}" for path in (prediction, reference))
        raise VolumeError(f"Give two files or two folders: {kinds}.")
    if not reference.is_dir():
        return [(reference.name, prediction, reference)]
    pairs = []
    for path in sorted(reference.rglob("*")):
        if is_volume_file(path):
            relative = path.relative_to(reference)
            pairs.append((relative.as_posix(), prediction / relative, path))
    if not pairs:
        raise VolumeError(f"No volume files ({', '.join(VOLUME_SUFFIXES)}) in {reference}.")
    return pairs


def score_pair(
    case: str,
    prediction_path: Path,
    reference_path: Path,
    labels: Optional[Sequence[int]] = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> List[LabelScore]:
    """Scores of one pair of files; a pair that cannot be compared gives one row whose status says why."""
    if not prediction_path.exists():
        return [LabelScore(case, None, status=f"no prediction at {prediction_path}")]
    try:
        reference, spacing = read_label_map(reference_path)
        prediction, prediction_spacing = read_label_map(prediction_path)
    except (ValueError, OSError) as error:
        return [LabelScore(case, None, status=str(error))]
    if prediction.shape != reference.shape:
        return [LabelScore(case, None, status=f"shapes differ: prediction {prediction.shape}, reference {reference.shape}")]
    if spacing and prediction_spacing and not np.allclose(prediction_spacing, spacing, rtol=1e-4, atol=1e-6):
        return [LabelScore(case, None, status=f"spacings differ: prediction {prediction_spacing}, reference {spacing}")]
    spacing = spacing or prediction_spacing or (1.0,) * reference.ndim
    if labels is None and not present_labels(prediction, reference):
        return [LabelScore(case, None, status=EMPTY_PAIR)]
    return score_labels(case, prediction, reference, spacing, labels, tolerance_mm)


def mean_scores(scores: Sequence[LabelScore]) -> List[LabelScore]:
    """Per label, the mean Dice and NSD over the cases that have scores (case ``mean``, voxel counts summed)."""
    means = []
    for label in sorted({score.label for score in scores if score.status == "ok"}):
        rows = [score for score in scores if score.status == "ok" and score.label == label]
        means.append(LabelScore(
            "mean", label, float(np.mean([row.dice for row in rows])), float(np.mean([row.nsd for row in rows])),
            sum(row.reference_voxels for row in rows), sum(row.prediction_voxels for row in rows),
            f"ok ({len(rows)} cases)",
        ))
    return means


SCORE_COLUMNS = [column.name for column in fields(LabelScore)]


def _cells(score: LabelScore) -> List[str]:
    def number(value: float) -> str:
        return "" if math.isnan(value) else f"{value:.4f}"

    return [score.case, "" if score.label is None else str(score.label), number(score.dice), number(score.nsd),
            str(score.reference_voxels), str(score.prediction_voxels), score.status]


def format_table(scores: Sequence[LabelScore]) -> str:
    """Aligned text columns, one line per row, header first (text left-aligned, numbers right-aligned)."""
    rows = [SCORE_COLUMNS] + [_cells(score) for score in scores]
    widths = [max(len(row[column]) for row in rows) for column in range(len(SCORE_COLUMNS))]
    left_aligned = {0, len(SCORE_COLUMNS) - 1}
    lines = []
    for row in rows:
        cells = [cell.ljust(width) if column in left_aligned else cell.rjust(width)
                 for column, (cell, width) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def write_scores_csv(path: Path, scores: Sequence[LabelScore]) -> None:
    """The scores as CSV, written atomically (an earlier file survives a failed write)."""
    write_csv_atomically(Path(path), SCORE_COLUMNS, [_cells(score) for score in scores])
