"""``medsam2 batch --ray``: the scans of a batch on Ray workers, on this machine or on an existing Ray cluster.

Ray schedules; the work is :meth:`BatchRunner.process_scan <MedSAM2Lib.apps.batch.BatchRunner.process_scan>`,
the same per-scan code as the single-process batch. A worker is a Ray actor holding one ``BatchRunner``, hence
one model, loaded once when the worker starts. The driver (the process running ``medsam2 batch``):

- plans the scans as the single-process batch does: a scan whose output exists is skipped (unless overwrite)
  and never sent, so a restarted job resumes where it stopped;
- starts the workers and refuses the batch, with a sentence, when a worker cannot see the images folder or
  the output folder or cannot load the model (on a cluster both folders must be on a file system that the
  driver and every worker share, at the same path), when one dies while starting (its node lacks
  medsam2-slicer, say), or when the cluster lacks the CPUs and GPUs asked for;
- gives each free worker the next scan. A worker that dies during a scan (its process killed, its node lost)
  is replaced and the scan is tried again on another worker, and so is a scan whose worker raised an error
  that is not a row's; after ``max_attempts`` tries the scan's rows are reported failed;
- collects every scan's report: ``outcomes`` feeds the summary CSV, written once, by the driver.

Exactly once: a worker writes a label map through a temporary file renamed into place, so an output that
exists is whole, and a killed worker leaves none. A worker killed after the rename but before it answered has
its scan segmented again, and the new label map replaces the first one (still atomically).
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

from .batch import BatchRunner, Outcome, ScanJob, ScanReport

LOCAL = "local"  # --ray without an address: start Ray on this machine
# Ray reads this when it is imported (ray/_private/ray_constants.py, ENABLE_RAY_CLUSTER): "0" makes a new node
# take 127.0.0.1 as its address (services.get_node_ip_address), and Ray's servers then listen on loopback only;
# a node on any other address listens on every interface (checked with `ss -ltnp` on Ray 2.60.0).
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = "127.0.0.1"
WORKER_ERRORS = (ValueError, OSError, RuntimeError)  # what loading a model raises with a sentence
ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception): ")


class RayBatchError(ValueError):
    """The batch cannot run on these Ray workers; one sentence says why."""


@dataclass(frozen=True)
class RayOptions:
    """How to run a batch on Ray.

    address: None starts Ray on this machine, listening on loopback only; ``auto``, ``HOST:PORT`` or
    ``ray://HOST:PORT`` joins an existing cluster (``ray.init(address=...)``). Each worker holds
    ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs (fractions share a GPU); a scan is tried at most
    ``max_attempts`` times; a worker that has not started (reached its node, loaded the model) after
    ``start_timeout`` seconds is given up."""

    address: Optional[str] = None
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_attempts: int = 3
    start_timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.workers < 1 or self.max_attempts < 1:
            raise ValueError("--workers and the number of attempts must be at least 1.")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ValueError("--cpus-per-worker must be above 0 and --gpus-per-worker at least 0.")


# -- Ray itself -------------------------------------------------------------------------------------------


def start_local_ray(**init_arguments) -> None:
    """Start Ray on this machine with its servers on loopback only, without the dashboard or usage reports.

    ``init_arguments`` go to ``ray.init`` (``num_cpus``, ``_temp_dir``...). Ray must not have been imported
    before with the cluster switch on: the started node is checked, and shut down when it is not on
    127.0.0.1."""
    os.environ[LOOPBACK_SWITCH] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(include_dashboard=False, **init_arguments)
    node = ray.util.get_node_ip_address()
    if node != LOOPBACK:
        ray.shutdown()
        raise RayBatchError(f"The local Ray took the address {node}, not {LOOPBACK} (Ray was imported before "
                            f"{LOOPBACK_SWITCH}=0 could keep it on loopback); start it with ray.init yourself.")


@contextmanager
def ray_connection(address: Optional[str]) -> Iterator[None]:
    """Ray for the length of a batch: an existing connection of this process as it is, else a local Ray
    (``address`` None) or the cluster at ``address``, shut down at the end."""
    connected = sys.modules.get("ray")  # not imported here: start_local_ray must come first
    if connected is not None and connected.is_initialized():
        yield
        return
    if address is None:
        start_local_ray()
    import ray

    if address is not None:
        ray.init(address=address)
    try:
        yield
    finally:
        ray.shutdown()


def resource_problem(options: RayOptions, available: Dict[str, float]) -> Optional[str]:
    """Why the cluster's resources (``ray.cluster_resources()``) cannot hold the workers asked for, or None."""
    cpus, gpus = options.workers * options.cpus_per_worker, options.workers * options.gpus_per_worker
    have_cpus, have_gpus = available.get("CPU", 0.0), available.get("GPU", 0.0)
    if cpus <= have_cpus and gpus <= have_gpus:
        return None
    return (f"{options.workers} worker(s) with {options.cpus_per_worker:g} CPU(s) and {options.gpus_per_worker:g} "
            f"GPU(s) each need {cpus:g} CPUs and {gpus:g} GPUs; the Ray cluster has {have_cpus:g} and {have_gpus:g} "
            f"(see --workers, --cpus-per-worker, --gpus-per-worker).")


# -- a worker ---------------------------------------------------------------------------------------------


def folder_problem(images: Path, output_folder: Path, probe: Optional[Path]) -> Optional[str]:
    """Why this process cannot work on a batch with these folders, or None. ``probe``: an image the driver
    sees, which the worker must see too (an empty folder of the same name elsewhere is not the images)."""
    if not images.is_dir():
        return f"it cannot see the images folder {images}"
    if probe is not None and not probe.is_file():
        return f"it sees a folder {images} but not {probe} in it, which the driver sees"
    if not output_folder.is_dir() or not os.access(output_folder, os.W_OK | os.X_OK):
        return f"it cannot write to the output folder {output_folder}"
    return None


@dataclass(frozen=True)
class WorkerStart:
    """What a worker says when it has started: where it runs and why it refuses the batch (None: it does not)."""

    node: str
    pid: int
    problem: Optional[str]


class ScanWorker:
    """A Ray actor's object: one BatchRunner, hence one model, for all the scans the worker is given."""

    def __init__(self, runner_arguments: dict) -> None:
        self.runner = BatchRunner(**runner_arguments)

    def start(self, probe: Optional[Path]) -> WorkerStart:
        """Check the folders and load the model."""
        import ray

        problem = folder_problem(self.runner.images, self.runner.output_folder, probe)
        if problem is not None:
            problem += (". The images and output folders must be on a file system that the driver and every worker "
                        "share, at the same path")
        else:
            try:
                self.runner.predictor()
            except WORKER_ERRORS as error:
                problem = f"it cannot load the model: {error} (the checkpoint must be at the same path on every node)"
        return WorkerStart(ray.util.get_node_ip_address(), os.getpid(), problem)

    def process(self, job: ScanJob) -> ScanReport:
        return self.runner.process_scan(job)


# -- the driver -------------------------------------------------------------------------------------------


@dataclass
class _Worker:
    """The driver's record of one worker."""

    number: int
    actor: object
    created: float  # time.perf_counter()
    start: Optional[WorkerStart] = None
    ready: float = 0.0  # when it had started
    lost: Optional[float] = None  # when it died
    scans: int = 0

    def __str__(self) -> str:
        where = f" (pid {self.start.pid} on {self.start.node})" if self.start else ""
        return f"worker {self.number}{where}"

    def pace(self) -> str:
        hours = max((self.lost or time.perf_counter()) - self.ready, 1e-9) / 3600
        return f"{self.scans / hours:.1f} scans/h"


class RayBatchRunner(BatchRunner):
    """``BatchRunner`` whose scans are processed by Ray workers (see the module docstring).

    ``predictor_factory`` is pickled to the workers and runs once on each. ``on_scan`` sees each scan's report,
    whose ``worker`` says which worker segmented it and that worker's pace; ``on_note`` gets a line for each lost
    worker and retry, and one per worker at the end (default: stderr)."""

    def __init__(self, predictor_factory: Callable[[], object], images: Path, output_folder: Path,
                 options: RayOptions = RayOptions(), on_note: Optional[Callable[[str], None]] = None,
                 **runner_arguments) -> None:
        """``runner_arguments``: BatchRunner's others (``on_prompt`` sees only the rows not sent to a worker)."""
        super().__init__(predictor_factory, images, output_folder, **runner_arguments)
        self.options = options
        self.on_note = on_note or (lambda line: print(line, file=sys.stderr))

    def run_plan(self, planned: Sequence[Tuple[ScanJob, Optional[ScanReport]]]) -> List[Outcome]:
        jobs = []
        for job, report in planned:
            if report is None:
                jobs.append(job)
            else:
                self.finish_planned(job, report)
        if jobs:  # a run that only skips needs no Ray
            self.output_folder.mkdir(parents=True, exist_ok=True)
            with ray_connection(self.options.address):
                _Schedule(self, jobs).run()
        return self.outcomes

    def worker_arguments(self) -> dict:
        """The BatchRunner of a ScanWorker: this one's, less what only the driver does."""
        return dict(predictor_factory=self._predictor_factory, images=self.images, output_folder=self.output_folder,
                    cache_slices=self.cache_slices, nan_as=self.nan_as)

    def give_up(self, job: ScanJob, reason: str) -> None:
        """Count a scan as done with every row failed for ``reason``."""
        outcomes = [self._outcome(prompt, "failed", reason) for prompt in job.prompts]
        self.finish(ScanReport(job.name, job.output, outcomes))


class _Schedule:
    """One batch's scans on a pool of workers: the driver's loop, its queue and its bookkeeping."""

    def __init__(self, runner: RayBatchRunner, jobs: List[ScanJob]) -> None:
        import ray

        self.ray, self.runner, self.options, self.jobs = ray, runner, runner.options, jobs
        self.actor_class = ray.remote(ScanWorker).options(num_cpus=self.options.cpus_per_worker,
                                                          num_gpus=self.options.gpus_per_worker)
        self.probe = next((job.image for job in jobs if job.image.is_file()), None)
        self.numbers = itertools.count(1)
        self.workers: List[_Worker] = []
        self.starting: Dict[object, _Worker] = {}  # start() reference -> worker
        self.running: Dict[object, Tuple[_Worker, int]] = {}  # process() reference -> (worker, job index)
        self.idle: Deque[_Worker] = deque()
        self.queue: Deque[int] = deque(range(len(jobs)))
        self.attempts: Dict[int, int] = {}
        self.last_failure: Dict[int, str] = {}

    def run(self) -> None:
        problem = resource_problem(self.options, self.ray.cluster_resources())
        if problem is not None:
            raise RayBatchError(problem)
        for _ in range(self.options.workers):
            self.add_worker()
        try:
            while self.queue or self.running:
                self.dispatch()
                if not (self.starting or self.running or self.idle):
                    for index in self.queue:
                        self.runner.give_up(self.jobs[index], "no Ray worker is left to segment it.")
                    return
                done, _ = self.ray.wait(list(self.starting) + list(self.running), num_returns=1,
                                        timeout=min(5.0, self.options.start_timeout))
                for reference in done:
                    if reference in self.starting:
                        self.started(self.starting.pop(reference), reference)
                    else:
                        self.processed(*self.running.pop(reference), reference)
                self.drop_slow_starts()
        finally:
            for worker in self.workers:
                self.ray.kill(worker.actor)
        for worker in self.workers:
            if worker.scans:
                self.runner.on_note(f"{worker}: {worker.scans} scans, {worker.pace()}")

    def add_worker(self) -> None:
        actor = self.actor_class.remote(self.runner.worker_arguments())
        worker = _Worker(next(self.numbers), actor, time.perf_counter())
        self.workers.append(worker)
        self.starting[actor.start.remote(self.probe)] = worker

    def dispatch(self) -> None:
        while self.queue and self.idle:
            worker, index = self.idle.popleft(), self.queue.popleft()
            self.attempts[index] = self.attempts.get(index, 0) + 1
            self.running[worker.actor.process.remote(self.jobs[index])] = (worker, index)

    def started(self, worker: _Worker, reference) -> None:
        try:
            worker.start = self.ray.get(reference)
        except self.ray.exceptions.RayActorError as error:
            raise RayBatchError(
                f"Ray {worker} died while starting ({_reason(error)}). Every node needs medsam2-slicer, "
                f"and the driver's versions of Python and Ray.") from None
        if worker.start.problem is not None:
            raise RayBatchError(f"Ray {worker} cannot work on this batch: {worker.start.problem}.")
        worker.ready = time.perf_counter()
        self.idle.append(worker)

    def processed(self, worker: _Worker, index: int, reference) -> None:
        try:
            report = self.ray.get(reference)
        except self.ray.exceptions.RayActorError as error:
            worker.lost = time.perf_counter()
            self.ray.kill(worker.actor)
            self.add_worker()
            self.retry_or_give_up(index, f"{worker} died during it ({_reason(error)})")
            return
        except self.ray.exceptions.RayTaskError as error:
            self.idle.append(worker)
            self.retry_or_give_up(index, f"{worker} raised {error.cause!r}")
            return
        self.idle.append(worker)
        worker.scans += 1
        report.worker = f"worker {worker.number}: {worker.pace()}"
        if self.attempts[index] > 1:
            note = f"attempt {self.attempts[index]}, after: {self.last_failure[index]}"
            for outcome in report.outcomes:
                outcome.message = "; ".join(filter(None, [outcome.message, note]))
        self.runner.finish(report)

    def retry_or_give_up(self, index: int, reason: str) -> None:
        self.last_failure[index] = reason
        tried = self.attempts[index]
        if tried < self.options.max_attempts:
            self.runner.on_note(f"medsam2: {self.jobs[index].name}: {reason}; trying it again "
                                f"(attempt {tried + 1} of {self.options.max_attempts}).")
            self.queue.appendleft(index)
        else:
            self.runner.give_up(self.jobs[index], f"{reason}; tried {tried} times, not again.")

    def drop_slow_starts(self) -> None:
        now = time.perf_counter()
        for reference, worker in list(self.starting.items()):
            if now - worker.created > self.options.start_timeout:
                del self.starting[reference]
                self.ray.kill(worker.actor)
                self.runner.on_note(f"medsam2: {worker} did not start within {self.options.start_timeout:g} s "
                                    f"(no node with the CPUs and GPUs asked for?); going on without it.")


def _reason(error: BaseException) -> str:
    """The line of a Ray error that says what went wrong: its last ``SomeError: ...`` line (the cause, below
    Ray's tracebacks), else its first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines if ERROR_LINE.match(line)]
    return (causes or lines or [type(error).__name__])[-1 if causes else 0]
