"""``medsam2 batch``: prompt tables (ours and DeepLesion's), label composition, running, CLI, geometry."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedSAM2Lib.apps import cli
from MedSAM2Lib.apps.batch import BatchRunner, TableError, read_deeplesion_table, read_prompt_table
from MedSAM2Lib.inference.objects import Region, TrackedObject, compose_labels
from MedSAM2Lib.inference.connected_components import largest_component
from MedSAM2Lib.inference.predictor import VolumePredictor, validate_prompt
from MedSAM2Lib.inference.preprocessing import Windowing, ct_preset_window, mr_percentile_window, window
from MedSAM2Lib.apps.volume_io import VolumeError

from MedSAM2Lib.apps import volume_io

from conftest import DATA
from interruptions import fill, small_filesystem
from test_segment_objects import alone_region

OBLIQUE = (0.8660254, -0.5, 0.0, 0.5, 0.8660254, 0.0, 0.0, 0.0, 1.0)  # 30 degrees about z
OBLIQUE_X = (1.0, 0.0, 0.0, 0.0, 0.8660254, -0.5, 0.0, 0.5, 0.8660254)  # 30 degrees about x
FIXTURE_BOX = [104, 70, 183, 131]


class BoxBlobPredictor:
    """Test double for VolumePredictor: the mask of a box row is its box on the key slice and the two slices
    either side, as if the model found exactly the boxed structure (logits 0: the earlier row wins an overlap).
    Records each row's key slice, box and feature cache."""

    def __init__(self, interrupt_on_call: int = 0) -> None:
        self.calls = []
        self.interrupt_on_call = interrupt_on_call

    def segment_objects(self, volume, objects, cache=None, on_result=None, errors=None):
        tracked = {}
        for key, steps in objects.items():
            (_, prompt), (_, propagate) = steps
            key_slice, box = prompt["slice"], prompt["box"]
            validate_prompt(volume, key_slice, box, propagate["propagate"], propagate.get("range"))
            self.calls.append((key_slice, tuple(box), cache))
            if len(self.calls) == self.interrupt_on_call:
                raise KeyboardInterrupt
            x0, y0, x1, y1 = (int(value) for value in box)
            mask = np.zeros(volume.shape, np.uint8)
            mask[max(key_slice - 2, 0):key_slice + 3, y0:y1, x0:x1] = 1
            tracked[key] = TrackedObject(Region.of(mask), [])
        return tracked


def write_table(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join((header,) + rows) + "\n")
    return path


def fixture_slab(first: int = 8, last: int = 16) -> np.ndarray:
    """Slices first..last-1 of the fixture volume, whose box (FIXTURE_BOX) is on slice 12."""
    return np.load(DATA / "input_volume.npz")["imgs"][first:last]


def write_scan(path: Path, volume: np.ndarray, direction=OBLIQUE) -> sitk.Image:
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-120.0, 33.5, 410.0))
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return image


@pytest.fixture
def model_arguments(checkpoints):
    return ["--checkpoint", str(checkpoints["tiny"]), "--config", str(DATA / "medsam2_tiny_test.yaml")]


# -- reading tables -----------------------------------------------------------------------------------


def test_table_rows_become_prompts(tmp_path):
    table = write_table(
        tmp_path / "prompts.csv",
        "Image,SLICE,x0,y0,x1,y1,window,label,direction,first_slice,last_slice",
        "a.nii.gz,3,1,2,10,12,,,,,",
        "a.nii.gz,4,1.5,2,10,12,none,,forward,,",
        "b.nrrd,5,1,2,10,12,lung,7,,2,9",
        "a.nii.gz,6,1,2,10,12,\"0, 200\",,backward,0,6",
    )
    default = Windowing.parse("-160 240")
    prompts, failures = read_prompt_table(table, tmp_path / "images", default)
    assert failures == []
    a, b = (tmp_path / "images" / "a.nii.gz").resolve(), (tmp_path / "images" / "b.nrrd").resolve()
    assert [(p.row, p.image, p.key_slice, p.label) for p in prompts] == [(2, a, 3, 1), (3, a, 4, 2), (4, b, 5, 7), (5, a, 6, 3)]
    assert prompts[1].box == (1.5, 2.0, 10.0, 12.0)
    assert [p.window for p in prompts] == [default, Windowing("none"), Windowing("lung"), Windowing("window", (0.0, 200.0))]
    assert [p.direction for p in prompts] == ["both", "forward", "both", "backward"]
    assert [p.slice_range for p in prompts] == [None, None, (2, 9), (0, 6)]


def test_malformed_rows_are_reported_and_the_others_kept(tmp_path):
    table = write_table(
        tmp_path / "prompts.csv",
        "image,slice,x0,y0,x1,y1,window,label,direction,first_slice",
        "a.nii,3,1,2,abc,12,,,,",
        "a.nii,2.5,1,2,10,12,,,,",
        "a.nii,3,1,2,10,12,,0,,",
        "a.nii,3,1,2,10,12,,256,,",
        "a.nii,3,1,2,10,12,,,up,",
        "a.nii,3,1,2,10,12,,,,1",
        "a.nii,3,1,2,10,12,lungs,,,",
        "a.nii,3,1,2,10,12,200 100,,,",
        ",3,1,2,10,12,,,,",
        "a.nii,3,1,2,10,12,,,,",
    )
    prompts, failures = read_prompt_table(table, tmp_path)
    assert [(p.row, p.label) for p in prompts] == [(11, 1)]
    messages = {failure.row: failure.message for failure in failures}
    assert all(failure.status == "failed" for failure in failures)
    assert messages == {
        2: "x1 'abc' is not a number.",
        3: "slice '2.5' is not a whole number.",
        4: "label 0 is outside 1..255.",
        5: "label 256 is outside 1..255.",
        6: "direction 'up' is not one of both, forward, backward.",
        7: "give both first_slice and last_slice, or neither.",
        8: "window 'lungs' is not 'LO HI', 'none', 'mr-percentiles' or a CT preset "
           "(soft-tissue, abdomen, liver, mediastinum, lung, bone, brain).",
        9: "window '200 100': LO must be below HI and both finite.",
        10: "the image cell is empty.",
    }


def test_a_table_without_its_columns_or_file_is_refused(tmp_path):
    table = write_table(tmp_path / "prompts.csv", "image,slice,x0,y0,x1", "a.nii,3,1,2,10")
    with pytest.raises(TableError, match="lacks the column.s. y1"):
        read_prompt_table(table, tmp_path)
    with pytest.raises(TableError, match="Cannot read the prompt table"):
        read_prompt_table(tmp_path / "none.csv", tmp_path)


def test_window_choices_apply_the_preprocessing_functions():
    volume = np.linspace(-1000, 1000, 2 * 3 * 4).reshape(2, 3, 4)
    np.testing.assert_array_equal(Windowing.parse(" -160, 240 ").apply(volume), window(volume, -160, 240))
    np.testing.assert_array_equal(Windowing.parse("Lung").apply(volume), ct_preset_window(volume, "lung"))
    np.testing.assert_array_equal(Windowing.parse("mr-percentiles").apply(volume), mr_percentile_window(volume))
    assert str(Windowing.parse("-160;240")) == "-160 240" and str(Windowing.parse("bone")) == "bone"
    with pytest.raises(ValueError, match="not whole numbers in 0..255"):
        Windowing.parse("none").apply(volume)


DEEPLESION_HEADER = "File_name,Patient_index,Key_slice_index,Bounding_boxes,DICOM_windows,Slice_range,Spacing_mm_px_"


def test_deeplesion_rows_are_read_as_the_official_script_reads_them(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("000001_01_01_008-023.nii.gz", "000002_02_01_100-110.nii.gz", "scan.nii.gz"):
        (images / name).touch()
    table = write_table(
        tmp_path / "DeepLesion_Dataset_Info.csv",
        DEEPLESION_HEADER,
        '000001_01_01_012.png,1,12,"70.9, 104.2, 131.5, 183.99","-175, 275","8, 23","0.8, 0.8, 5"',
        '000001_01_01_020.png,1,20,"10, 20, 30, 40","-1350, 150","8, 23","0.8, 0.8, 5"',
        '000001_01_01_019.png,1,19,"10, 20, 30, 40","-1350, 150","18, 23","0.8, 0.8, 5"',
        '000001_01_01_015.png,1,15,"10, 20, 30","-1350, 150","8, 23","0.8, 0.8, 5"',
        '000003_01_01_015.png,3,15,"10, 20, 30, 40","-1350, 150","8, 23","0.8, 0.8, 5"',
    )
    prompts, outcomes = read_deeplesion_table(table, images)
    volume = (images / "000001_01_01_008-023.nii.gz").resolve()
    assert [(p.row, p.image, p.key_slice, p.box, p.label) for p in prompts] == [
        (2, volume, 4, (104, 70, 183, 131), 1),  # y/x swapped and truncated; 12 - 8
        (3, volume, 12, (20, 10, 40, 30), 2),
    ]
    assert prompts[0].window == Windowing("window", (-175.0, 275.0))
    assert prompts[1].window == Windowing("window", (-1350.0, 150.0))
    assert prompts[0].direction == "both" and prompts[0].slice_range is None
    reported = {(outcome.image, outcome.row, outcome.label, outcome.status) for outcome in outcomes}
    assert reported == {
        ("scan.nii.gz", None, None, "failed"),  # not a DeepLesion name
        ("000001_01_01_008-023.nii.gz", 5, 3, "failed"),  # three numbers in Bounding_boxes; keeps lesion number 3
        ("000002_02_01_100-110.nii.gz", None, None, "skipped"),  # no row about it
    }


# -- label maps ---------------------------------------------------------------------------------------


def test_two_lesions_in_one_scan_each_keep_their_own_mask(tmp_path):
    """The official script keeps the largest component of the union of all lesions: the small one vanishes.
    Here each row is post-processed on its own and the small lesion survives whole."""
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    np.savez(images / "scan.npz", imgs=np.zeros((10, 40, 40), np.uint8))
    table = write_table(tmp_path / "prompts.csv", "image,slice,x0,y0,x1,y1", "scan.npz,5,2,2,20,20", "scan.npz,5,30,30,34,34")
    prompts, _ = read_prompt_table(table, images)
    predictor = BoxBlobPredictor()
    outcomes = BatchRunner(lambda: predictor, images, out).run(prompts)
    label_map = np.load(out / "scan.npz")["mask"]
    assert (label_map == 2).sum() == 5 * 4 * 4 and label_map[3:8, 30:34, 30:34].min() == 2
    assert (label_map == 1).sum() == 5 * 18 * 18
    assert [(o.status, o.voxels, o.slices) for o in outcomes] == [("ok", 5 * 18 * 18, 5), ("ok", 80, 5)]
    union = label_map > 0
    assert not largest_component(union)[3:8, 30:34, 30:34].any()  # what keeping one component per scan loses
    assert predictor.calls[0][2] is predictor.calls[1][2]  # one feature cache for the scan's window


def test_batch_matches_single_prompts_and_encodes_each_slice_once_per_window(tmp_path, tiny_model):
    images = tmp_path / "images"
    images.mkdir()
    np.savez(images / "slab.npz", imgs=fixture_slab())
    table = write_table(
        tmp_path / "prompts.csv", "image,slice,x0,y0,x1,y1,window",
        "slab.npz,4,104,70,183,131,", "slab.npz,4,20,20,90,60,", "slab.npz,2,104,70,183,131,0 200",
    )
    prompts, _ = read_prompt_table(table, images)
    predictor = VolumePredictor(tiny_model)
    BatchRunner(lambda: predictor, images, tmp_path / "out").run(prompts)
    assert predictor.encoder_calls == 2 * 8  # two windows, each slice encoded once per window
    volume = fixture_slab()
    singles = [alone_region(predictor, volume, 4, FIXTURE_BOX), alone_region(predictor, volume, 4, [20, 20, 90, 60]),
               alone_region(predictor, window(volume, 0, 200), 2, FIXTURE_BOX)]
    expected, _ = compose_labels(volume.shape, list(zip((1, 2, 3), singles)))
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "slab.npz")["mask"], expected)


def finished_output(tmp_path, out):
    """A batch run whose scan has a finished output in ``out``: (prompts, runner arguments, the output path)."""
    images = tmp_path / "images"
    images.mkdir()
    write_scan(images / "scan.nii.gz", fixture_slab(10, 14))
    prompts, _ = read_prompt_table(write_table(tmp_path / "p.csv", "image,slice,x0,y0,x1,y1", "scan.nii.gz,2,104,70,183,131"),
                                   images)
    assert BatchRunner(BoxBlobPredictor, images, out).run(prompts)[0].status == "ok"
    return prompts, images, out / "scan.nii.gz"


def test_a_silently_truncated_write_fails_the_rows_and_keeps_the_finished_output(tmp_path, monkeypatch):
    """SimpleITK reports no error when the disk fills during a compressed write; the read-back check must."""
    prompts, images, output = finished_output(tmp_path, tmp_path / "out")
    finished = output.read_bytes()
    real_write = volume_io._write_itk

    def truncating_write(path, mask, geometry):
        real_write(path, mask, geometry)
        with open(path, "r+b") as stream:
            stream.truncate(path.stat().st_size // 2)

    monkeypatch.setattr(volume_io, "_write_itk", truncating_write)
    outcome = BatchRunner(BoxBlobPredictor, images, tmp_path / "out", overwrite=True).run(prompts)[0]
    assert outcome.status == "failed" and outcome.output == ""
    assert outcome.message.startswith(f"Could not write {output}: the written file does not read back")
    assert outcome.message.endswith("the existing file was left unchanged.")
    assert output.read_bytes() == finished and sorted(p.name for p in output.parent.iterdir()) == ["scan.nii.gz"]


def test_a_full_disk_fails_the_rows_and_keeps_the_finished_output(tmp_path):
    with small_filesystem(tmp_path / "disk", kilobytes=256) as disk:
        prompts, images, output = finished_output(tmp_path, disk)
        finished = output.read_bytes()
        fill(disk)
        outcome = BatchRunner(BoxBlobPredictor, images, disk, overwrite=True).run(prompts)[0]
        assert outcome.status == "failed"
        assert outcome.message.startswith(f"Could not write {output}: no space left on device")
        assert outcome.message.endswith("; the existing file was left unchanged.")
        assert output.read_bytes() == finished and sorted(p.name for p in disk.iterdir()) == ["ballast", "scan.nii.gz"]


def test_nan_voxels_fail_the_scan_unless_replaced(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    volume = fixture_slab(10, 14).astype(np.float32)
    volume[0, :2, :13] = np.nan
    np.savez(images / "scan.npz", imgs=volume)
    prompts, _ = read_prompt_table(write_table(tmp_path / "p.csv", "image,slice,x0,y0,x1,y1,window",
                                               "scan.npz,2,104,70,183,131,0 255"), images)
    outcome = BatchRunner(BoxBlobPredictor, images, tmp_path / "out").run(prompts)[0]
    assert outcome.status == "failed" and not (tmp_path / "out" / "scan.npz").exists()
    assert outcome.message == (f"{images / 'scan.npz'} has 26 NaN voxels (of 229,376), which no window can map to an "
                               "intensity; give --nan-as VALUE to replace them with VALUE (for example the background's "
                               "intensity).")
    assert BatchRunner(BoxBlobPredictor, images, tmp_path / "out", nan_as=0.0).run(prompts)[0].status == "ok"


# -- the command -----------------------------------------------------------------------------------------


def read_summary(path: Path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_batch_command_keeps_geometry_reports_bad_rows_and_goes_on(tmp_path, model_arguments, capsys):
    images, out = tmp_path / "images", tmp_path / "out"
    (images / "sub").mkdir(parents=True)
    nifti = write_scan(images / "a.nii.gz", fixture_slab())
    nrrd = write_scan(images / "sub" / "b.nrrd", fixture_slab(10, 16), direction=OBLIQUE_X)
    (images / "broken.nii.gz").write_text("not a volume")
    table = write_table(
        tmp_path / "prompts.csv", "image,slice,x0,y0,x1,y1,label",
        "a.nii.gz,4,104,70,183,131,", "sub/b.nrrd,2,104,70,183,131,4", "a.nii.gz,4,20,x,90,60,",
        "broken.nii.gz,1,1,1,5,5,", "missing.nii.gz,1,1,1,5,5,", "sub/b.nrrd,2,104,70,300,131,",
    )
    code = cli.main(["batch", str(table), "--images", str(images), "--out", str(out)] + model_arguments)
    assert code == 1
    for source, name in ((nifti, "a.nii.gz"), (nrrd, "sub/b.nrrd")):
        result = sitk.ReadImage(str(out / name))
        assert result.GetSize() == source.GetSize()
        assert np.allclose(result.GetSpacing(), source.GetSpacing()) and np.allclose(result.GetOrigin(), source.GetOrigin())
        assert np.allclose(result.GetDirection(), source.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "sub/b.nrrd"))))) <= {0, 4}
    rows = read_summary(out / "summary.csv")
    assert [(row["row"], row["image"], row["label"], row["status"]) for row in rows] == [
        ("2", "a.nii.gz", "1", "ok"), ("3", "sub/b.nrrd", "4", "ok"), ("4", "a.nii.gz", "", "failed"),
        ("5", "broken.nii.gz", "1", "failed"), ("6", "missing.nii.gz", "1", "failed"), ("7", "sub/b.nrrd", "5", "failed"),
    ]
    assert "reaches outside the slice" in rows[5]["message"] and "No image file at" in rows[4]["message"]
    assert int(rows[0]["voxels"]) > 0 and rows[0]["output"] == str(out / "a.nii.gz") and float(rows[0]["scan_seconds"]) > 0
    captured = capsys.readouterr()
    assert "a.nii.gz, line 4: failed: y0 'x' is not a number." in captured.err
    assert "broken.nii.gz as an image: " in captured.err and "5/5" in captured.err and "s/prompt" in captured.err
    assert "sub/b.nrrd: 1/2 prompts in" in captured.err
    assert f"2 prompts segmented, 0 skipped, 4 failed. Summary: {out / 'summary.csv'}" in captured.out


def test_finished_outputs_are_skipped_unless_overwrite(tmp_path, model_arguments, capsys):
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    np.savez(images / "slab.npz", imgs=fixture_slab(10, 14))
    table = write_table(tmp_path / "prompts.csv", "image,slice,x0,y0,x1,y1", "slab.npz,2,104,70,183,131")
    arguments = ["batch", str(table), "--images", str(images), "--out", str(out)] + model_arguments
    assert cli.main(arguments) == 0
    written = (out / "slab.npz").stat().st_mtime_ns
    first_run = read_summary(out / "summary.csv")
    assert cli.main(arguments) == 0
    assert (out / "slab.npz").stat().st_mtime_ns == written
    assert read_summary(out / "summary.csv") == first_run  # the skipped scan keeps the figures of the run that made it
    assert "slab.npz: skipped" in capsys.readouterr().err
    assert cli.main(arguments + ["--overwrite", "--summary", str(tmp_path / "again.csv")]) == 0
    assert read_summary(tmp_path / "again.csv")[0]["status"] == "ok"


def test_an_output_folder_equal_to_the_images_folder_is_refused(tmp_path):
    np.savez(tmp_path / "scan.npz", imgs=np.zeros((4, 8, 8), np.uint8))
    prompts, _ = read_prompt_table(write_table(tmp_path / "p.csv", "image,slice,x0,y0,x1,y1", "scan.npz,1,1,1,5,5"), tmp_path)
    outcomes = BatchRunner(BoxBlobPredictor, tmp_path, tmp_path).run(prompts)
    assert outcomes[0].status == "failed" and outcomes[0].message == (
        f"Cannot write the label map of scan.npz to {tmp_path / 'scan.npz'}: that is the scan scan.npz, which it "
        "would replace; choose another output folder.")


def test_a_cancelled_batch_keeps_finished_scans_in_the_summary(tmp_path, monkeypatch, capsys):
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    for name in ("first.npz", "second.npz"):
        np.savez(images / name, imgs=np.zeros((6, 16, 16), np.uint8))
    table = write_table(tmp_path / "p.csv", "image,slice,x0,y0,x1,y1", "first.npz,2,1,1,9,9", "second.npz,2,1,1,9,9")
    monkeypatch.setattr(cli, "build_predictor", lambda args: BoxBlobPredictor(interrupt_on_call=2))
    assert cli.main(["batch", str(table), "--images", str(images), "--out", str(out)]) == 130
    assert [row["status"] for row in read_summary(out / "summary.csv")] == ["ok"]
    assert (out / "first.npz").exists() and not (out / "second.npz").exists()
    assert "cancelled; finished outputs are kept" in capsys.readouterr().err


def test_a_resumed_batch_keeps_the_first_runs_figures_in_the_summary(tmp_path, monkeypatch, capsys):
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    for name in ("first.npz", "second.npz"):
        np.savez(images / name, imgs=np.zeros((6, 16, 16), np.uint8))
    table = write_table(tmp_path / "p.csv", "image,slice,x0,y0,x1,y1", "first.npz,2,1,1,9,9", "second.npz,2,1,1,5,5",
                        "second.npz,2,x,1,5,5")
    arguments = ["batch", str(table), "--images", str(images), "--out", str(out)]
    monkeypatch.setattr(cli, "build_predictor", lambda args: BoxBlobPredictor(interrupt_on_call=2))
    assert cli.main(arguments) == 130
    (first_run,) = [row for row in read_summary(out / "summary.csv") if row["status"] == "ok"]
    assert first_run["image"] == "first.npz" and first_run["voxels"] == str(5 * 8 * 8)
    monkeypatch.setattr(cli, "build_predictor", lambda args: BoxBlobPredictor())
    assert cli.main(arguments) == 1  # the bad row fails again
    rows = read_summary(out / "summary.csv")
    assert rows[0] == first_run
    assert [(row["row"], row["image"], row["status"], row["voxels"]) for row in rows] == [
        ("2", "first.npz", "ok", str(5 * 8 * 8)), ("3", "second.npz", "ok", str(5 * 4 * 4)),
        ("4", "second.npz", "failed", "0")]
    assert "1 prompts segmented, 1 skipped, 1 failed." in capsys.readouterr().out  # what this run did


def test_a_summary_path_holding_another_file_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "build_predictor", lambda args: pytest.fail("the model was loaded"))
    images = tmp_path / "images"
    images.mkdir()
    np.savez(images / "scan.npz", imgs=np.zeros((4, 8, 8), np.uint8))
    table = write_table(tmp_path / "p.csv", "image,slice,x0,y0,x1,y1", "scan.npz,1,1,1,5,5")
    notes = tmp_path / "notes.csv"
    notes.write_text("patient,comment\n1,keep this\n")
    assert cli.main(["batch", str(table), "--images", str(images), "--out", str(tmp_path / "out"),
                     "--summary", str(notes)]) == 1
    assert capsys.readouterr().err == (
        f"medsam2: error: {notes} exists and is not the summary of a batch (its columns are patient, comment); the "
        "summary of a resumed batch is merged into it, so name another --summary or move that file.\n")
    assert notes.read_text() == "patient,comment\n1,keep this\n"


def test_unusable_folders_and_summary_are_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    def no_model(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli, "build_predictor", no_model)
    images = tmp_path / "images"
    images.mkdir()
    np.savez(images / "scan.npz", imgs=np.zeros((4, 8, 8), np.uint8))
    table = write_table(tmp_path / "p.csv", "image,slice,x0,y0,x1,y1", "scan.npz,1,1,1,5,5")
    (tmp_path / "file").write_text("")
    cases = [
        (["--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")],
         f"The images folder {tmp_path / 'nowhere'} does not exist or is not a folder."),
        (["--images", str(images), "--out", str(tmp_path / "file")],
         f"The output folder {tmp_path / 'file'} is a file; name a folder for the label maps."),
        (["--images", str(images), "--out", str(tmp_path / "out"), "--summary", str(images)],
         f"{images} is a folder; name a file to write."),
    ]
    for arguments, message in cases:
        assert cli.main(["batch", str(table)] + arguments) == 1
        assert capsys.readouterr().err == f"medsam2: error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_a_dicom_folder_in_the_table_is_read_as_its_largest_series(tmp_path):
    from dicom_support import SPACING, write_dicom_series

    images = tmp_path / "images"
    volume = fixture_slab(8, 16)
    write_dicom_series(images / "1.2.840.5", volume, "1.2.3.4.1", prefix="a")
    write_dicom_series(images / "1.2.840.5", volume[:2], "1.2.3.4.2", prefix="b")
    write_dicom_series(images / "1.2.840.6", volume[:3], "1.2.3.4.3")
    table = write_table(tmp_path / "p.csv", "image,slice,x0,y0,x1,y1", "1.2.840.5,4,104,70,183,131",
                        "1.2.840.6,1,104,70,183,131")
    prompts, _ = read_prompt_table(table, images)
    outcomes = BatchRunner(BoxBlobPredictor, images, tmp_path / "out").run(prompts)
    assert [outcome.status for outcome in outcomes] == ["ok", "ok"]
    assert outcomes[0].message.startswith(f"{images / '1.2.840.5'} holds 2 DICOM series: 1.2.3.4.1 (8 slices), "
                                          "1.2.3.4.2 (2 slices); reading 1.2.3.4.1")
    assert outcomes[1].message == ""
    written = sitk.ReadImage(str(tmp_path / "out" / "1.2.840.5.nii.gz"))  # the folder's whole name
    assert written.GetSize() == (256, 224, 8) and np.allclose(written.GetSpacing(), SPACING)
    assert (tmp_path / "out" / "1.2.840.6.nii.gz").exists()


def test_a_label_map_that_would_replace_another_scan_fails_its_rows_and_the_scan_survives(tmp_path, monkeypatch):
    """--out inside --images with --overwrite: a.npz's label map out/a.npz was the scan of the next row, which
    was then segmented (and its own label map written beside it)."""
    images = tmp_path / "images"
    (images / "out").mkdir(parents=True)
    np.savez(images / "a.npz", imgs=np.zeros((4, 8, 8), np.uint8))
    np.savez(images / "out" / "a.npz", imgs=np.ones((4, 8, 8), np.uint8))
    scan = (images / "out" / "a.npz").read_bytes()
    table = write_table(tmp_path / "p.csv", "image,slice,x0,y0,x1,y1", "a.npz,1,1,1,5,5", "out/a.npz,1,1,1,5,5")
    monkeypatch.setattr(cli, "build_predictor", lambda args: BoxBlobPredictor())
    assert cli.main(["batch", str(table), "--images", str(images), "--out", str(images / "out"), "--overwrite",
                     "--summary", str(tmp_path / "summary.csv")]) == 1
    assert (images / "out" / "a.npz").read_bytes() == scan
    rows = read_summary(tmp_path / "summary.csv")
    assert [(row["image"], row["status"]) for row in rows] == [("a.npz", "failed"), ("out/a.npz", "ok")]
    assert rows[0]["message"] == (f"Cannot write the label map of a.npz to {images / 'out' / 'a.npz'}: that is the "
                                  "scan out/a.npz, which it would replace; choose another output folder.")
    assert np.load(images / "out" / "out" / "a.npz")["mask"].any()


def test_a_summary_that_is_a_file_of_the_batch_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """--summary X replaced X when X was the prompt table, a scan, a session file or a label map of the batch."""
    def no_model(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli, "build_predictor", no_model)
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    out.mkdir()
    for name in ("scan.npz", "other.npz"):
        np.savez(images / name, imgs=np.zeros((4, 8, 8), np.uint8))
    np.savez(out / "scan.npz", mask=np.zeros((4, 8, 8), np.uint8))  # an earlier run's label map
    session = tmp_path / "session.json"
    session.write_text('{"steps": [{"slice": 1, "box": [1, 1, 5, 5]}, {"propagate": "both"}]}')
    table = write_table(tmp_path / "p.csv", "image,slice,x0,y0,x1,y1,session", "scan.npz,1,1,1,5,5,",
                        "other.npz,,,,,,session.json", "scan.npz,1,x,1,5,5,")  # an unusable row: not reported
    files = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    cases = [
        (table, "that is the prompt table, which it would replace"),
        (images / "scan.npz", "that is the scan scan.npz, which it would replace"),
        (tmp_path / "images" / ".." / "session.json", "that is the session file of line 3, which it would replace"),
        (out / "scan.npz", "that is also the label map of scan.npz, and one would replace the other"),
        (out / "other.npz", "that is also the label map of other.npz, and one would replace the other"),
    ]
    for summary, what in cases:
        arguments = ["batch", str(table), "--images", str(images), "--out", str(out), "--summary", str(summary)]
        assert cli.main(arguments) == 1
        assert capsys.readouterr().err == (f"medsam2: error: Cannot write the summary to {summary}: {what}; choose "
                                           "another name.\n")
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == files
