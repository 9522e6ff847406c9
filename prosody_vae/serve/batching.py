"""Dynamic batching: one model worker thread serves a bounded queue of jobs, several at a time.

    worker = BatchWorker(run_batch, max_batch=8, max_wait_s=0.01, max_queue=32)
    job = worker.submit(key, payload, size=1)      # QueueFull when the queue is full
    result = job.future.result()                   # or worker.cancel(job) to give its slot back

The worker takes the oldest job, then waits up to `max_wait_s` for more jobs with the same `key`,
until the batch holds `max_batch` items. The wait counts from when the worker is free, not from the
job's arrival: clients answered by the previous batch send their next request within a few
milliseconds, and waiting for them is what lets closed-loop clients fill a batch (measured in
benchmarks/load_test.py: counted from arrival, 8 clients formed alternating batches of 4). Jobs whose key is None always run alone.
`run_batch(payloads)` returns one result per payload. When a batch of several jobs fails, each is
run again alone, so one bad request fails by itself and never takes its batch companions with it.

Only the model worker touches the model: PyTorch modules are not meant to be driven from several
threads at once, and a batch is the way to use more than one request's worth of compute.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional, Sequence


class QueueFull(Exception):
    """The queue holds `max_queue` jobs; `retry_after_s` estimates when a slot frees up."""

    def __init__(self, retry_after_s: int):
        super().__init__(f"the request queue is full; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class Job:
    key: Optional[Hashable]  # jobs with the same non-None key may share a batch
    payload: Any
    size: int = 1  # items it adds to a batch, counted against max_batch
    future: Future = field(default_factory=Future)
    batch_size: int = 0  # items in the batch that ran it (0 until it runs)


class BatchWorker:
    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int = 8,
                 max_wait_s: float = 0.01, max_queue: int = 32, name: str = "model-worker"):
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError(f"need max_batch >= 1, max_queue >= 1, max_wait_s >= 0; got "
                             f"{max_batch}, {max_queue}, {max_wait_s}")
        self.run_batch = run_batch
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.batch_sizes: Counter[int] = Counter()  # items per batch run -> how many batches
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._seconds_per_batch = 0.0  # running mean, for Retry-After
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------- client side
    def submit(self, key: Optional[Hashable], payload: Any, size: int = 1) -> Job:
        job = Job(key, payload, size)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batch worker is closed")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(self.retry_after_s())
            self._pending.append(job)
            self._cond.notify_all()
        return job

    def cancel(self, job: Job) -> bool:
        """Take a job that has not started out of the queue (True), freeing its slot. A running
        job finishes (a batch cannot drop one item midway) and its result is dropped."""
        with self._cond:
            try:
                self._pending.remove(job)
            except ValueError:
                return False
        job.future.cancel()
        return True

    @property
    def queue_length(self) -> int:
        with self._cond:
            return len(self._pending)

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely drained by one batch; at least 1."""
        batches_ahead = math.ceil(len(self._pending) / self.max_batch)
        return max(1, math.ceil(batches_ahead * self._seconds_per_batch))

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            while self._pending:
                self._pending.popleft().future.cancel()
            self._cond.notify_all()
        self._thread.join(timeout)

    # ----------------------------------------------------------------------------- worker side
    def _take_batch(self) -> list[Job]:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return []
            first = self._pending.popleft()
            batch, items = [first], first.size
            deadline = time.monotonic() + self.max_wait_s
            while first.key is not None and items < self.max_batch:
                companion = next((j for j in self._pending
                                  if j.key == first.key and items + j.size <= self.max_batch), None)
                if companion is not None:
                    self._pending.remove(companion)
                    batch.append(companion)
                    items += companion.size
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return
            batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            started = time.monotonic()
            self._run(batch)
            elapsed = time.monotonic() - started
            self._seconds_per_batch = elapsed if not self._seconds_per_batch else (
                0.8 * self._seconds_per_batch + 0.2 * elapsed)

    def _run(self, batch: list[Job]) -> None:
        items = sum(job.size for job in batch)
        try:
            results = self.run_batch([job.payload for job in batch])
        except Exception as exc:  # noqa: BLE001 - it goes to the waiting clients
            if len(batch) > 1:
                for job in batch:
                    self._run([job])
                return
            batch[0].future.set_exception(exc)
            return
        self.batch_sizes[items] += 1
        for job, result in zip(batch, results):
            job.batch_size = items
            job.future.set_result(result)
