"""Dice and normalised surface Dice: hand-computed values, scipy's distance transform, and ``medsam2 evaluate``."""

from __future__ import annotations

import csv
import errno
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from MedSAM2Lib.apps.cli import main
from MedSAM2Lib.apps.evaluation import (
    dice,
    normalised_surface_dice,
    offsets_within,
    score_labels,
    surface_voxels,
)


def box_mask(shape, *ranges) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(start, stop) for start, stop in ranges)] = True
    return mask


def test_dice_by_hand():
    first = box_mask((2, 2, 3), (0, 2), (0, 2), (0, 2))
    second = box_mask((2, 2, 3), (0, 2), (0, 2), (1, 3))
    assert dice(first, second) == 2 * 4 / (8 + 8)
    assert dice(first, first) == 1.0 and dice(first, ~first) == 0.0


def test_surface_voxels_have_a_face_neighbour_outside():
    assert surface_voxels(box_mask((5, 5, 5), (1, 4), (1, 4), (1, 4))).sum() == 26  # all but the centre
    assert surface_voxels(np.ones((3, 3, 3), bool)).sum() == 26  # beyond the array is outside
    square = surface_voxels(box_mask((6, 6), (1, 5), (1, 5)))
    assert square.sum() == 12 and not square[2:4, 2:4].any()
    diagonal_only = np.zeros((3, 3, 3), bool)
    diagonal_only[0, 0, 0] = diagonal_only[1, 1, 1] = True
    assert surface_voxels(diagonal_only).sum() == 2


def test_offsets_within_a_tolerance_are_in_millimetres_and_nearest_first():
    offsets = offsets_within(1.0, (1.0, 1.0, 1.0))
    assert len(offsets) == 7 and offsets[0].tolist() == [0, 0, 0]
    assert len(offsets_within(1.0, (0.5, 1.0, 1.0))) == 9  # two steps along the 0.5 mm axis
    lengths = np.linalg.norm(offsets_within(3.0, (2.5, 0.7, 0.8)) * [2.5, 0.7, 0.8], axis=1)
    assert np.all(np.diff(lengths) >= 0) and lengths.max() <= 3.0
    with pytest.raises(ValueError):
        offsets_within(1.0, (0.0, 1.0, 1.0))


def test_surface_dice_by_hand_for_two_cubes_side_by_side():
    """Two 3x3x3 cubes touching along axis 2: 26 surface voxels each; the 9 of each touching face are 1 voxel
    from the other cube; the 8 surface voxels one layer further in are 2 voxels away."""
    left = box_mask((3, 3, 6), (0, 3), (0, 3), (0, 3))
    right = box_mask((3, 3, 6), (0, 3), (0, 3), (3, 6))
    assert normalised_surface_dice(left, right, (1.0, 1.0, 1.0), 1.0) == pytest.approx(18 / 52)
    assert normalised_surface_dice(left, right, (1.0, 1.0, 1.0), 0.99) == 0.0
    assert normalised_surface_dice(left, right, (1.0, 1.0, 0.5), 1.0) == pytest.approx((17 + 17) / 52)
    assert dice(left, right) == 0.0


def test_surface_dice_uses_the_spacing_of_each_axis():
    first, second = np.zeros((3, 1, 1), bool), np.zeros((3, 1, 1), bool)
    first[0], second[2] = True, True  # two slices apart
    assert normalised_surface_dice(first, second, (0.5, 1.0, 1.0), 1.0) == 1.0
    assert normalised_surface_dice(first, second, (0.5, 1.0, 1.0), 0.9) == 0.0
    assert normalised_surface_dice(first, second, (1.0, 9.0, 9.0), 1.5) == 0.0


def test_empty_masks():
    empty, full = np.zeros((2, 3, 3), bool), np.ones((2, 3, 3), bool)
    assert dice(empty, empty) == normalised_surface_dice(empty, empty, (1, 1, 1)) == 1.0
    assert dice(empty, full) == normalised_surface_dice(full, empty, (1, 1, 1)) == 0.0


def scipy_surface_dice(prediction, reference, spacing, tolerance):
    """Reference implementation: scipy's erosion and exact Euclidean distance transform."""
    structure = ndimage.generate_binary_structure(3, 1)
    surfaces = [mask & ~ndimage.binary_erosion(mask, structure, border_value=0) for mask in (prediction, reference)]
    distances = [ndimage.distance_transform_edt(~surface, sampling=spacing) for surface in surfaces]
    matched = (distances[1][surfaces[0]] <= tolerance).sum() + (distances[0][surfaces[1]] <= tolerance).sum()
    return matched / (surfaces[0].sum() + surfaces[1].sum())


@pytest.mark.parametrize("tolerance", [0.5, 1.0, 2.0, 3.3])
def test_surface_dice_equals_scipy_on_random_shapes(tolerance):
    rng = np.random.default_rng(7)
    spacing = (2.5, 0.7, 0.8)
    blobs = [ndimage.gaussian_filter(rng.random((12, 20, 24)), 2.0) for _ in range(2)]
    prediction, reference = (blob > np.quantile(blob, 0.7) for blob in blobs)
    ours = normalised_surface_dice(prediction, reference, spacing, tolerance)
    assert ours == pytest.approx(scipy_surface_dice(prediction, reference, spacing, tolerance), abs=1e-12)
    assert 0.0 < ours < 1.0


def test_scores_per_label_with_absent_labels():
    reference = np.zeros((2, 4, 4), np.uint8)
    prediction = np.zeros((2, 4, 4), np.uint8)
    reference[0, 0:2, 0:2], prediction[0, 0:2, 0:1] = 1, 1
    prediction[1, 3, 3] = 3
    scores = score_labels("case", prediction, reference, (1.0, 1.0, 1.0))
    assert [(s.label, s.dice, s.reference_voxels, s.prediction_voxels) for s in scores] == [(1, 2 * 2 / 6, 4, 2), (3, 0.0, 0, 1)]
    both_absent = score_labels("case", prediction, reference, (1.0, 1.0, 1.0), labels=[2])[0]
    assert (both_absent.dice, both_absent.nsd) == (1.0, 1.0)


# -- the command -----------------------------------------------------------------------------------------


def write_labels(path, label_map, spacing=(0.8, 0.7, 2.5)):
    image = sitk.GetImageFromArray(label_map.astype(np.uint8))
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def two_label_pair():
    """Reference: label 1 a 2x4x4 block, label 2 a 1x2x2 block; prediction: label 1 shifted by one slice
    (Dice 0.5), label 2 exact (Dice 1)."""
    reference = np.zeros((4, 8, 8), np.uint8)
    prediction = np.zeros_like(reference)
    reference[0:2, 0:4, 0:4] = prediction[1:3, 0:4, 0:4] = 1
    reference[3, 6:8, 6:8] = prediction[3, 6:8, 6:8] = 2
    return prediction, reference


def test_evaluate_folders_of_pairs(tmp_path, capsys):
    prediction, reference = two_label_pair()
    predictions, references = tmp_path / "pred", tmp_path / "gt"
    for name in ("case1.nii.gz", "sub/case2.nrrd"):
        write_labels(references / name, reference)
        write_labels(predictions / name, prediction)
    write_labels(references / "case3.nii.gz", reference)  # no prediction
    (predictions / "summary.csv").write_text("not a label map")
    csv_path = tmp_path / "scores.csv"
    code = main(["evaluate", str(predictions), str(references), "--tolerance", "1", "--csv", str(csv_path)])
    assert code == 1
    captured = capsys.readouterr()
    expected_nsd = score_labels("", prediction, reference, (2.5, 0.7, 0.8), tolerance_mm=1.0)[0].nsd
    with open(csv_path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [(row["case"], row["label"], row["dice"], row["status"]) for row in rows] == [
        ("case1.nii.gz", "1", "0.5000", "ok"), ("case1.nii.gz", "2", "1.0000", "ok"),
        ("case3.nii.gz", "", "", f"no prediction at {predictions / 'case3.nii.gz'}"),
        ("sub/case2.nrrd", "1", "0.5000", "ok"), ("sub/case2.nrrd", "2", "1.0000", "ok"),
    ]
    assert rows[0]["nsd"] == f"{expected_nsd:.4f}" and rows[0]["reference_voxels"] == "32"
    lines = captured.out.splitlines()
    assert lines[0] == "Dice and normalised surface Dice at 1 mm"
    assert lines[1].split() == ["case", "label", "dice", "nsd", "reference_voxels", "prediction_voxels", "status"]
    assert lines[7].split() == ["mean", "1", "0.5000", f"{expected_nsd:.4f}", "64", "64", "ok", "(2", "cases)"]
    assert "case3.nii.gz: no prediction at" in captured.err


def test_evaluate_two_files_with_labels_and_an_npz_prediction(tmp_path, capsys):
    prediction, reference = two_label_pair()
    write_labels(tmp_path / "gt.nrrd", reference)
    np.savez(tmp_path / "pred.npz", mask=prediction)  # as `medsam2 segment` writes it: no spacing
    assert main(["evaluate", str(tmp_path / "pred.npz"), str(tmp_path / "gt.nrrd"), "--labels", "2",
                 "--csv", str(tmp_path / "s.csv")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[2].split() == ["gt.nrrd", "2", "1.0000", "1.0000", "4", "4", "ok"]
    assert f"Wrote {tmp_path / 's.csv'}" in out


def test_evaluate_reports_pairs_it_cannot_compare(tmp_path, capsys):
    write_labels(tmp_path / "gt.nii.gz", np.zeros((2, 3, 3)))
    write_labels(tmp_path / "pred.nii.gz", np.zeros((2, 3, 4)))
    assert main(["evaluate", str(tmp_path / "pred.nii.gz"), str(tmp_path / "gt.nii.gz"), "--csv", str(tmp_path / "s.csv")]) == 1
    assert "shapes differ: prediction (2, 3, 4), reference (2, 3, 3)" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "pred.nii.gz"), str(tmp_path), "--csv", str(tmp_path / "s.csv")]) == 1
    assert f"Give two files or two folders: {tmp_path / 'pred.nii.gz'} is a file and {tmp_path} is a folder." in (
        capsys.readouterr().err)


@pytest.mark.parametrize("missing", ["prediction", "reference"])
def test_evaluate_says_which_path_is_missing(tmp_path, capsys, missing):
    write_labels(tmp_path / "present.nii.gz", np.zeros((2, 3, 3)))
    paths = {"prediction": tmp_path / "present.nii.gz", "reference": tmp_path / "present.nii.gz"}
    paths[missing] = tmp_path / "typo.nii.gz"
    assert main(["evaluate", str(paths["prediction"]), str(paths["reference"]), "--csv", str(tmp_path / "s.csv")]) == 1
    assert capsys.readouterr().err == f"medsam2: error: The {missing} {tmp_path / 'typo.nii.gz'} does not exist.\n"
    assert not (tmp_path / "s.csv").exists()


def test_an_unwritable_csv_is_refused_before_scoring_and_an_old_one_survives_a_failed_write(tmp_path, capsys, monkeypatch):
    write_labels(tmp_path / "gt.nii.gz", np.ones((2, 3, 3)))
    arguments = ["evaluate", str(tmp_path / "gt.nii.gz"), str(tmp_path / "gt.nii.gz")]
    (tmp_path / "folder").mkdir()
    assert main(arguments + ["--csv", str(tmp_path / "folder")]) == 1
    assert capsys.readouterr() == ("", f"medsam2: error: {tmp_path / 'folder'} is a folder; name a file to write.\n")
    old = tmp_path / "scores.csv"
    old.write_bytes(b"case,label\r\nearlier,1\r\n")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    assert main(arguments + ["--csv", str(old)]) == 1
    monkeypatch.undo()
    assert capsys.readouterr().err == (f"medsam2: error: Could not write {old}: no space left on device; the existing "
                                       "file was left unchanged.\n")
    assert old.read_bytes() == b"case,label\r\nearlier,1\r\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "folder", "gt.nii.gz", "scores.csv"]


def test_a_label_file_that_is_not_an_npz_is_one_sentence(tmp_path, capsys):
    write_labels(tmp_path / "gt.nii.gz", np.ones((2, 3, 3)))
    (tmp_path / "pred.npz").write_bytes(b"\x80\x04 a pickle, not an archive")
    assert main(["evaluate", str(tmp_path / "pred.npz"), str(tmp_path / "gt.nii.gz"), "--csv", str(tmp_path / "s.csv")]) == 1
    error = capsys.readouterr().err
    assert f"Cannot read {tmp_path / 'pred.npz'}: it is not an .npz file (not a zip archive of arrays)." in error
    assert "allow_pickle" not in error


def test_two_empty_maps_without_labels_say_so(tmp_path, capsys):
    """Nothing to score is not an empty table: the row says why, and the pair is no failure (a scan without the
    structure, rightly predicted empty)."""
    for name in ("pred.nii.gz", "gt.nii.gz"):
        write_labels(tmp_path / name, np.zeros((2, 3, 3)))
    assert main(["evaluate", str(tmp_path / "pred.nii.gz"), str(tmp_path / "gt.nii.gz"),
                 "--csv", str(tmp_path / "s.csv")]) == 0
    captured = capsys.readouterr()
    expected = "both maps are empty: no label to score (--labels scores chosen labels as absent in both)"
    assert captured.out.splitlines()[2].split(None, 3) == ["gt.nii.gz", "0", "0", expected]
    assert captured.err == f"medsam2: gt.nii.gz: {expected}\n"
    with open(tmp_path / "s.csv", newline="") as stream:
        assert [row["status"] for row in csv.DictReader(stream)] == [expected]
    assert main(["evaluate", str(tmp_path / "pred.nii.gz"), str(tmp_path / "gt.nii.gz"), "--labels", "1",
                 "--csv", str(tmp_path / "s.csv")]) == 0
    assert capsys.readouterr().out.splitlines()[2].split() == ["gt.nii.gz", "1", "1.0000", "1.0000", "0", "0", "ok"]


def test_a_csv_that_is_a_map_it_scores_is_refused_before_scoring(tmp_path, capsys):
    """``--csv ref.nii.gz`` replaced the reference with CSV text and exited 0."""
    prediction, reference = two_label_pair()
    predictions, references = tmp_path / "pred", tmp_path / "gt"
    write_labels(references / "case.nii.gz", reference)
    write_labels(predictions / "case.nii.gz", prediction)
    os.link(references / "case.nii.gz", tmp_path / "linked.nii.gz")
    files = {path: path.read_bytes() for path in (references / "case.nii.gz", predictions / "case.nii.gz")}
    cases = [
        (predictions / "case.nii.gz", references / "case.nii.gz", references / "case.nii.gz",
         "that is the reference"),
        (predictions / "case.nii.gz", references / "case.nii.gz", tmp_path / "gt" / ".." / "pred" / "case.nii.gz",
         "that is the prediction"),
        (predictions, references, references / "case.nii.gz", "that is the reference"),
        (predictions, references, tmp_path / "linked.nii.gz",
         f"that is the same file as {references / 'case.nii.gz'}, the reference"),
    ]
    for prediction_path, reference_path, csv_path, what in cases:
        assert main(["evaluate", str(prediction_path), str(reference_path), "--csv", str(csv_path)]) == 1
        assert capsys.readouterr() == ("", f"medsam2: error: Cannot write the scores to {csv_path}: {what}, which it "
                                           "would replace; choose another name.\n")
    assert all(path.read_bytes() == content for path, content in files.items())
