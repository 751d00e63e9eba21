"""Encoding the slices the user is looking at in the background, so that a box's preview needs only the decoder.

While the user finds the slice and drags the box, a worker thread encodes the slice shown (then its neighbours)
into the same :class:`~MedSAM2Lib.inference.predictor.FeatureCache` that the preview and the propagation read. The
preview after the mouse is released then finds the slice's image features and runs only the prompt and mask
decoders. Results never change: the worker calls the predictor's own :meth:`VolumePredictor.encode` on the same
stack, so the cache holds exactly what the run would have computed itself.

How the worker and the runs share the model, the cache and the cores (one rule): **the worker computes only
while no run holds** :meth:`PreEncoder.paused`. A run entering it drops the worker's pending slices and waits for
the slice in flight, if any (at most one encoder call, and it is the slice shown, encoded first), then has the
model and the cache to itself until it leaves. Hence one model call at a time (torch's intra-op threads, which a
new thread shares at the count set for the process, serve one caller at a time: no oversubscription of the cores
by two concurrent calls), one writer of the cache at a time, and no slice encoded twice: the slice in flight is
in the cache before the run looks for it. The device does not matter (CPU, CUDA or MPS: the worker calls the same
predictor), and the memory kept is bounded by the cache's own limit (the worker only adds to that cache).

No torch import here: the worker only calls the predictor it is given.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Iterator, List, Optional, Sequence, Tuple

LOG = logging.getLogger(__name__)
NEIGHBOURS = 1  # slices encoded on each side of the one shown, after it: the box may end up one slice off


def slices_to_encode(shown: int, num_slices: int, neighbours: int = NEIGHBOURS) -> List[int]:
    """The slice shown first, then its neighbours nearest first (next before previous), within 0..num_slices-1."""
    order = [shown]
    for distance in range(1, neighbours + 1):
        order += [shown + distance, shown - distance]
    return [index for index in order if 0 <= index < num_slices]


class PreEncoder:
    """One worker thread that encodes requested slices of a stack into its feature cache (see the module docstring
    for the rule that makes it safe). The thread exists only while there is work; :meth:`stop` ends it.

    predictor: the :class:`VolumePredictor` whose :meth:`encode` fills the cache (the one the runs use).
    """

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self._condition = threading.Condition()
        self._target: Optional[Tuple[object, object]] = None  # (uint8 (D, H, W) stack, its FeatureCache)
        self._pending: List[int] = []
        self._runs = 0  # runs inside paused()
        self._in_flight = False  # the worker is inside an encoder call
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._failure: Optional[BaseException] = None
        self.encoded: List[int] = []  # the slices the worker encoded, in order (what it saved the runs)

    # -- the UI thread's side -------------------------------------------------------------------------

    def request(self, stack, cache, indices: Sequence[int]) -> None:
        """Encode these slices of ``stack`` that ``cache`` lacks, in this order, in place of what was requested
        before; returns at once. Ignored while a run holds :meth:`paused` (the run has the model)."""
        with self._condition:
            if self._runs or self._stopping:
                return
            self._target = (stack, cache)
            self._pending = [index for index in indices if index not in cache]
            if self._pending and self._thread is None:
                # Not a daemon: at exit Python waits for the pending slices (three encoder calls at most) instead of
                # stopping the thread inside a torch call.
                self._thread = threading.Thread(target=self._work, name="MedSAM2 pre-encoder")
                self._thread.start()
            self._condition.notify_all()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Around a run's computation: the pending slices are dropped, the slice in flight (if any) is waited for,
        and the worker computes nothing until the run leaves. Runs may nest."""
        with self._condition:
            self._runs += 1
            self._pending.clear()
            while self._in_flight:
                self._condition.wait()
        try:
            yield
        finally:
            with self._condition:
                self._runs -= 1
                self._condition.notify_all()

    def stop(self) -> None:
        """Drop the pending slices and the stack (its features are released with the cache), wait for the slice
        in flight, and end the thread (the scene closed, the sessions ended, the model changed)."""
        with self._condition:
            self._stopping = True
            self._pending.clear()
            self._target = None
            self._condition.notify_all()
            thread = self._thread
        try:
            if thread is not None and thread is not threading.current_thread():
                thread.join()
        finally:
            with self._condition:
                self._stopping = False

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until nothing is pending or in flight; False if the timeout passed first (tests, benchmarks)."""
        with self._condition:
            return self._condition.wait_for(lambda: not self._pending and not self._in_flight, timeout)

    @property
    def idle(self) -> bool:
        with self._condition:
            return not self._pending and not self._in_flight

    def take_failure(self) -> Optional[str]:
        """A sentence about the last failure of the worker, once (then None); its traceback went to the log."""
        with self._condition:
            failure, self._failure = self._failure, None
        if failure is None:
            return None
        return (f"MedSAM2 could not encode slices in the background ({type(failure).__name__}: {failure}); each "
                "box computes its slice itself meanwhile (see the log).")

    # -- the worker's side ----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._condition:
                target = self._target
                while self._pending and (target is None or self._pending[0] in target[1]):
                    self._pending.pop(0)  # encoded meanwhile (by a run): never twice
                if self._runs or self._stopping or not self._pending or target is None:
                    self._thread = None  # a later request starts a new thread
                    self._condition.notify_all()
                    return
                index = self._pending.pop(0)
                self._in_flight = True
            try:
                stack, cache = target
                self.predictor.encode(stack, index, cache)
                self.encoded.append(index)
            except Exception as error:  # reported (log and take_failure), never raised into a run
                LOG.exception("MedSAM2 could not encode slice %d in the background", index)
                with self._condition:
                    self._failure = error
                    self._pending.clear()
            finally:
                with self._condition:
                    self._in_flight = False
                    self._condition.notify_all()
