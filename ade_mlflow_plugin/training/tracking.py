"""MLflow side of training: attach to the launcher's run and log metrics without ever blocking a step.

MLflow's own async logging drops a batch when the server does not answer, so metrics go through
MetricLogger instead: the training loop only appends to a queue; one thread sends batches with
log_batch and, when the tracking server is down, keeps the batch and retries with backoff until it
answers. Steps already in the run (a resumed job) are skipped so that no step is logged twice.
When the server stays down past `retry_for_s`, the batch and every later one go to the job's relay
(job/relay.py) instead of being dropped; RelayLogger is the same sink for a job that found no server
at start. `ade-mlflow sync-run` replays the relay into the run.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Any

from ade_mlflow_plugin.job import contract

logger = logging.getLogger(__name__)
BATCH_LIMIT = 1000  # MLflow's log_batch accepts at most 1000 metrics per call
MAX_BACKOFF_S = 5.0  # a server back from an outage is noticed within seconds


def is_main_process() -> bool:
    """Rank 0 (or no torchrun at all): the only process that talks to MLflow."""
    return int(os.environ.get("RANK", "0")) == 0


def new_records(last_step: dict[str, int], metrics: dict[str, float], step: int) -> list[dict[str, Any]]:
    """Metric records for ``step``, leaving out keys already logged at this step or later (a resumed job
    replays steps); ``last_step`` is updated in place."""
    now = int(time.time() * 1000)
    records = []
    for key, value in metrics.items():
        if value is None or step <= last_step.get(key, -1):
            continue
        last_step[key] = step
        records.append({"key": key, "value": float(value), "timestamp": now, "step": int(step)})
    return records


class MetricLogger:
    """Non-blocking, retrying metric sink for one run."""

    def __init__(self, client: Any, run_id: str, logged_steps: dict[str, int] | None = None,
                 retry_for_s: float | None = None, relay: Any = None) -> None:
        self.client, self.run_id = client, run_id
        self.relay = relay  # a job/relay.Relay: where batches go once the server is given up on
        self._relaying = False
        self._last_step = dict(logged_steps or {})
        self._queue: deque = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._retry_for_s = float(os.environ.get(contract.ENV_METRICS_RETRY_S, "3600")) if retry_for_s is None \
            else retry_for_s
        self._inflight = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="ade-metric-logger", daemon=True)
        self._thread.start()

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Queue metrics for `step`; keys already logged at this step or later are left out."""
        from mlflow.entities import Metric

        items = [Metric(**record) for record in new_records(self._last_step, metrics, step)]
        if items:
            with self._cond:
                self._queue.extend(items)
                self._cond.notify()

    def _take(self) -> list:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait(timeout=1.0)
            batch = [self._queue.popleft() for _ in range(min(BATCH_LIMIT, len(self._queue)))]
            self._inflight = len(batch)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                if self._closed:
                    return
                continue
            self._send(batch)
            with self._cond:
                self._inflight = 0
                self._cond.notify_all()

    def _send(self, batch: list) -> None:
        backoff, deadline = 0.5, time.monotonic() + self._retry_for_s
        while True:
            if self._relaying:
                self.relay.metrics([_as_record(m) for m in batch])
                return
            try:
                self.client.log_batch(self.run_id, metrics=batch, synchronous=True)
                return
            except Exception as exc:  # noqa: BLE001 - any transport error: keep the batch and retry
                self.failures += 1
                if _rejected(exc):  # the server answered "no": retrying cannot help
                    logger.error("tracking server rejected %d metrics: %s", len(batch), str(exc)[:300])
                    return
                if time.monotonic() > deadline and self.relay is not None:
                    logger.warning("tracking server unreachable for %.0f s: metrics go to the relay in %s "
                                   "from now on (replay them with `ade-mlflow sync-run`)",
                                   self._retry_for_s, self.relay.dir)
                    self._relaying = True
                    continue
                if time.monotonic() > deadline:
                    logger.error("dropping %d metrics after %.0f s of failed logging: %s",
                                 len(batch), self._retry_for_s, exc)
                    return
                if self.failures == 1 or self.failures % 20 == 0:
                    logger.warning("tracking server unreachable (%s); keeping %d metrics and retrying",
                                   type(exc).__name__, len(batch))
                time.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    @property
    def relaying(self) -> bool:
        """True once metrics go to the relay (the server was given up on)."""
        return self._relaying

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._inflight

    def flush(self, timeout: float = 120.0) -> bool:
        """Wait until everything queued has reached the server; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while self._queue or self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(timeout=min(left, 0.5))
        return True

    def close(self, timeout: float = 120.0) -> bool:
        done = self.flush(timeout)
        if not done and self.relay is not None:  # the job is ending: what is left goes to the relay
            logger.warning("tracking server still unreachable at exit: %d metrics go to the relay in %s",
                           self.pending(), self.relay.dir)
            self._relaying = True
            done = self.flush(max(timeout, 2 * MAX_BACKOFF_S))  # the sender notices at its next retry
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=1.0)
        return done


def _as_record(metric: Any) -> dict[str, Any]:
    return {"key": metric.key, "value": metric.value, "timestamp": metric.timestamp, "step": metric.step}


class NullLogger:
    """What non-zero ranks get: logging is rank 0's job."""

    failures = 0
    relaying = False

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def flush(self, timeout: float = 0.0) -> bool:
        return True

    def close(self, timeout: float = 0.0) -> bool:
        return True

    def pending(self) -> int:
        return 0


class RelayLogger(NullLogger):
    """The metric sink of a job that cannot reach its tracking server: each call appends to the relay
    (a local file append; nothing waits for a network, so flush/close/pending are NullLogger's)."""

    relaying = True

    def __init__(self, relay: Any) -> None:
        self.relay = relay
        self._last_step: dict[str, int] = {}

    def log(self, metrics: dict[str, float], step: int) -> None:
        items = new_records(self._last_step, metrics, step)
        if items:
            self.relay.metrics(items)


def _rejected(exc: Exception) -> bool:
    """A 4xx answer (bad value, run deleted); 429 and 5xx and no answer at all are worth retrying."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return False
    status = exc.get_http_status_code()
    return 400 <= status < 500 and status != 429


def logged_steps(client: Any, run_id: str, keys: list[str]) -> dict[str, int]:
    """Highest step already logged for each key (a resumed job continues after it)."""
    steps = {}
    for key in keys:
        history = client.get_metric_history(run_id, key)
        if history:
            steps[key] = max(m.step for m in history)
    return steps


def log_params_once(client: Any, run_id: str, params: dict[str, str]) -> dict[str, str]:
    """Log params the run does not have yet (the launcher may have logged the MLproject ones as given)."""
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    new = {k: str(v)[:6000] for k, v in params.items() if k not in existing}
    items = [Param(k, v) for k, v in sorted(new.items())]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])
    return new


def attach_run(system_metrics: bool = True):
    """The launcher's run (MLFLOW_RUN_ID) as the active run; a new run only when started standalone."""
    import mlflow

    run_id = os.environ.get("MLFLOW_RUN_ID") or None
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(float(os.environ.get("ADE_SYSTEM_METRICS_INTERVAL_S", "10")))
    return mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics)
