"""``medsam2 batch --ray``: the same label maps as one process, workers killed mid-scan, retries, refusals.

One local Ray (2 CPUs, loopback only) serves the whole module; its workers run the tiny test model on a few
3-slice scans. Each test is bounded in time (``time_limit``)."""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import pytest
import torch

from MedSAM2Lib.apps import cli
from MedSAM2Lib.apps.batch import BatchRunner, read_prompt_table
from MedSAM2Lib.inference.predictor import VolumePredictor
from MedSAM2Lib.model.checkpoint import load_model
from MedSAM2Lib.model.config import load_config

from conftest import DATA

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="Ray is not installed (pip install -e '.[ray]')")

TESTING = Path(__file__).resolve().parent
TIME_LIMIT_S = 120
FIXTURE_BOX = (104.0, 70.0, 183.0, 131.0)
SECOND_BOX = (20.0, 20.0, 90.0, 60.0)
C_BOX = (100.0, 66.0, 180.0, 128.0)
SCANS = ("a.npz", "b.npz", "c.npz", "d.npz")
TABLE = [  # b.npz has two rows with two windows: its label map composes two masks
    "a.npz,1,104,70,183,131,",
    "b.npz,1,104,70,183,131,",
    "b.npz,1,20,20,90,60,0 200",
    "c.npz,1,100,66,180,128,",
    "d.npz,1,104,70,183,131,",
]


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for this module, shut down after it. Its workers get the repository and Testing/ on their
    path (for the test doubles below) through the environment Ray's processes inherit when it starts."""
    from MedSAM2Lib.apps.ray_batch import start_local_ray

    temp_dir = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must fit in 107 characters
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTING.parent), str(TESTING), saved]))
    try:
        start_local_ray(num_cpus=2, _temp_dir=temp_dir)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    import ray

    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def time_limit():
    """Fail a test that runs past TIME_LIMIT_S instead of hanging: SIGALRM raises in it (Ray's waits let
    signal handlers run; the exception then surfaces chained in Ray's SystemError)."""

    def expire(signum, frame):
        raise TimeoutError(f"the test ran past {TIME_LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TIME_LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class TinyPredictorFactory:
    """Makes a VolumePredictor of the tiny test model, on a Ray worker.

    Test double hook: the predictor kills its own worker process (SIGKILL, as the kernel's out-of-memory killer
    would) when asked to segment rows one of whose boxes is ``kill_once`` (the first time only; ``marker``, a file,
    records that it happened) or ``kill_always`` (every time)."""

    checkpoint: Path
    kill_once: Optional[Tuple[float, ...]] = None
    kill_always: Optional[Tuple[float, ...]] = None
    marker: Optional[Path] = None

    def __call__(self):
        predictor = VolumePredictor(load_model(self.checkpoint, load_config(DATA / "medsam2_tiny_test.yaml")))
        return predictor if self.kill_once is self.kill_always is None else KillingPredictor(predictor, self)


class KillingPredictor:
    """Test double around a VolumePredictor: see TinyPredictorFactory."""

    def __init__(self, predictor: VolumePredictor, factory: TinyPredictorFactory) -> None:
        self.predictor, self.factory = predictor, factory

    def segment_objects(self, volume, objects, *args, **kwargs):
        boxes = {tuple(step["box"]) for steps in objects.values() for _, step in steps if "box" in step}
        if self.factory.kill_once in boxes and not self.factory.marker.exists():
            self.factory.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        if self.factory.kill_always in boxes:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.predictor.segment_objects(volume, objects, *args, **kwargs)


class NeverLoadingFactory:
    """Test double: a model that takes longer to load than any start timeout of these tests."""

    def __call__(self):
        time.sleep(TIME_LIMIT_S)


@dataclass(frozen=True)
class Scans:
    images: Path
    table: Path
    expected: dict  # scan name -> label map of the single-process batch


@pytest.fixture(scope="module")
def scans(tmp_path_factory, tiny_model):
    """Four 3-slice scans, a table of five rows, and the label maps the single-process batch makes of them."""
    folder = tmp_path_factory.mktemp("ray_scans")
    images = folder / "images"
    images.mkdir()
    volume = np.load(DATA / "input_volume.npz")["imgs"]
    for offset, name in enumerate(SCANS):
        np.savez(images / name, imgs=volume[10 + offset:13 + offset])
    table = folder / "prompts.csv"
    table.write_text("\n".join(["image,slice,x0,y0,x1,y1,window"] + TABLE) + "\n")
    prompts, _ = read_prompt_table(table, images)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker (1 CPU): float sums on a CPU depend on the thread count
    try:
        BatchRunner(lambda: VolumePredictor(tiny_model), images, folder / "expected").run(prompts)
    finally:
        torch.set_num_threads(threads)
    expected = {name: np.load(folder / "expected" / name)["mask"] for name in SCANS}
    assert all(label_map.any() for label_map in expected.values()) and set(np.unique(expected["b.npz"])) == {0, 1, 2}
    return Scans(images, table, expected)


def read_summary(path: Path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def assert_outputs_are_the_expected_ones(out: Path, scans: Scans, names=SCANS) -> None:
    """Exactly the expected label maps, once each, and nothing else (no temporary file left behind)."""
    assert sorted(path.name for path in out.iterdir() if path.name != "summary.csv") == sorted(names)
    for name in names:
        np.testing.assert_array_equal(np.load(out / name)["mask"], scans.expected[name], err_msg=name)


def ray_runner(scans: Scans, out: Path, factory: TinyPredictorFactory, **options):
    from MedSAM2Lib.apps.ray_batch import RayBatchRunner, RayOptions

    notes = []
    runner = RayBatchRunner(factory, scans.images, out, options=RayOptions(**options), on_note=notes.append)
    prompts, _ = read_prompt_table(scans.table, scans.images)
    return runner, prompts, notes


def test_ray_gives_the_label_maps_of_one_process_and_a_second_run_skips_everything(
        local_ray, scans, checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    arguments = ["batch", str(scans.table), "--images", str(scans.images), "--out", str(out),
                 "--precision", "float32", "--no-early-stop",  # as the one-process reference maps
                 "--checkpoint", str(checkpoints["tiny"]), "--config", str(DATA / "medsam2_tiny_test.yaml")]
    assert cli.main(arguments + ["--ray", "--workers", "2"]) == 0
    assert_outputs_are_the_expected_ones(out, scans)
    rows = read_summary(out / "summary.csv")
    assert [(row["row"], row["image"], row["status"]) for row in rows] == [
        (str(line), text.split(",")[0], "ok") for line, text in enumerate(TABLE, start=2)]
    assert all(int(row["voxels"]) > 0 and float(row["scan_seconds"]) > 0 for row in rows)
    err = capsys.readouterr().err
    assert "Scans 4/4 (100%, " in err and "s/scan" in err  # stderr is no terminal here: a line per tenth
    assert "b.npz: 2/2 prompts in" in err and "scans/h]" in err  # each scan names its worker and that worker's pace
    per_worker = re.findall(r"worker \d \(pid \d+ on 127\.0\.0\.1\): (\d) scans, [\d.]+ scans/h", err)
    assert sum(int(count) for count in per_worker) == len(SCANS)  # a line per worker that did any scan

    written = {name: (out / name).stat().st_mtime_ns for name in SCANS}
    assert cli.main(arguments + ["--ray", "--workers", "2", "--summary", str(tmp_path / "again.csv")]) == 0
    assert {name: (out / name).stat().st_mtime_ns for name in SCANS} == written
    assert [row["status"] for row in read_summary(tmp_path / "again.csv")] == ["skipped"] * len(TABLE)
    assert capsys.readouterr().err.count("skipped, ") == len(SCANS)


def test_killed_workers_a_scan_is_retried_on_another_and_one_that_always_kills_is_reported_after_the_limit(
        local_ray, scans, checkpoints, tmp_path):
    """b.npz kills its worker once, mid-scan (its first row is done, its second is not), and is segmented again
    on another worker; c.npz kills its worker on every attempt and is reported after the second."""
    factory = TinyPredictorFactory(checkpoints["tiny"], kill_once=SECOND_BOX, kill_always=C_BOX,
                                   marker=tmp_path / "killed-once")
    runner, prompts, notes = ray_runner(scans, tmp_path / "out", factory, workers=2, max_attempts=2)
    outcomes = runner.run(prompts)
    assert factory.marker.exists()
    assert_outputs_are_the_expected_ones(tmp_path / "out", scans, names=("a.npz", "b.npz", "d.npz"))
    by_image = {}
    for outcome in sorted(outcomes, key=lambda outcome: outcome.row):
        by_image.setdefault(outcome.image, []).append(outcome)
    assert [outcome.status for outcome in by_image["b.npz"]] == ["ok", "ok"]
    assert all("attempt 2, after: worker" in outcome.message and "died during it" in outcome.message
               for outcome in by_image["b.npz"])
    assert [outcome.status for outcome in by_image["c.npz"]] == ["failed"]
    assert "died during it" in by_image["c.npz"][0].message
    assert by_image["c.npz"][0].message.endswith("tried 2 times, not again.")
    assert [outcome.status for outcome in by_image["a.npz"] + by_image["d.npz"]] == ["ok", "ok"]
    assert sorted(note.split(":")[1].strip() for note in notes if "trying it again (attempt 2 of 2)" in note) == \
        ["b.npz", "c.npz"]


def test_workers_that_do_not_start_in_time_are_given_up_and_their_scans_reported(local_ray, scans, tmp_path):
    runner, prompts, notes = ray_runner(scans, tmp_path / "out", NeverLoadingFactory(), workers=2, start_timeout=1)
    outcomes = runner.run(prompts)
    assert [(outcome.status, outcome.message) for outcome in outcomes] == \
        [("failed", "no Ray worker is left to segment it.")] * len(TABLE)
    assert sum("did not start within 1 s" in note for note in notes) == 2
    assert list((tmp_path / "out").iterdir()) == []


def test_a_worker_that_cannot_see_the_images_folder_is_refused(local_ray, scans, checkpoints, tmp_path):
    from MedSAM2Lib.apps.ray_batch import RayBatchError, RayBatchRunner

    elsewhere = tmp_path / "not-shared"  # the driver reads the table; no worker can see this folder
    prompts, _ = read_prompt_table(scans.table, elsewhere)
    runner = RayBatchRunner(TinyPredictorFactory(checkpoints["tiny"]), elsewhere, tmp_path / "out")
    with pytest.raises(RayBatchError, match=f"cannot see the images folder {elsewhere}.*file system that the "
                                            "driver and every worker share"):
        runner.run(prompts)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_worker_that_cannot_import_the_model_factory_is_refused(local_ray, scans, tmp_path, monkeypatch):
    """As on a node without medsam2-slicer: the factory's module is on the driver's path only."""
    from MedSAM2Lib.apps.ray_batch import RayBatchError, RayBatchRunner

    (tmp_path / "driver_only_factory.py").write_text("class Factory:\n    def __call__(self):\n        pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from driver_only_factory import Factory

    prompts, _ = read_prompt_table(scans.table, scans.images)
    with pytest.raises(RayBatchError, match="worker 1 died while starting .ModuleNotFoundError: No module named "
                                            "'driver_only_factory'.. Every node needs medsam2-slicer"):
        RayBatchRunner(Factory(), scans.images, tmp_path / "out").run(prompts)


def test_more_workers_than_the_cluster_holds_are_refused(local_ray, scans, checkpoints, tmp_path):
    from MedSAM2Lib.apps.ray_batch import RayBatchError

    runner, prompts, _ = ray_runner(scans, tmp_path / "out", TinyPredictorFactory(checkpoints["tiny"]), workers=3)
    with pytest.raises(RayBatchError, match="3 worker.s. with 1 CPU.s. and 0 GPU.s. each need 3 CPUs and 0 GPUs; "
                                            "the Ray cluster has 2 and 0"):
        runner.run(prompts)


def test_the_local_ray_listens_on_loopback_only(local_ray):
    assert local_ray.util.get_node_ip_address() == "127.0.0.1"
    assert {node["NodeManagerAddress"] for node in local_ray.nodes()} == {"127.0.0.1"}
