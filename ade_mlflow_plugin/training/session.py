"""One entry invocation's MLflow side: the run (rank 0) or the relay when no server answers, the metric sink
and the stop flag (Session), and the run's listing of kept checkpoints (CheckpointListing)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.job import contract
from ade_mlflow_plugin.job import relay as job_relay
from ade_mlflow_plugin.training.checkpoints import StopFlag
from ade_mlflow_plugin.training.tracking import (MetricLogger, NullLogger, RelayLogger, attach_run,
                                                 is_main_process, log_params_once, logged_steps)

logger = logging.getLogger(__name__)
# The last checkpoint listing's upload is waited for this long: a SIGTERM leaves 120 s for everything.
LISTING_FLUSH_S = 30.0
METRIC_KEYS = ["train_loss", "learning_rate", "grad_norm", "epoch", "tokens_per_second", "eval_loss",
               "perplexity", "exact_match"]


class Session:
    """The MLflow run (rank 0), the metric sink and the stop flag for one entry invocation."""

    def __init__(self, config: TrainingConfig) -> None:
        self.config = config
        self.stop = StopFlag().install()
        self.main = is_main_process()
        self.run = None
        self.metrics: Any = NullLogger()
        self.relay = job_relay.Relay()
        self.offline = False  # True: everything for MLflow goes to the relay (no server at start)
        if self.main:
            import mlflow
            from mlflow import MlflowClient

            reason = job_relay.unreachable_reason(mlflow.get_tracking_uri())
            if reason:
                self._go_offline(reason)
                return
            self.run = attach_run()
            client = MlflowClient()
            log_params_once(client, self.run.info.run_id, config.to_params())
            self.metrics = MetricLogger(client, self.run.info.run_id,
                                        logged_steps(client, self.run.info.run_id, METRIC_KEYS), relay=self.relay)

    def _go_offline(self, reason: str) -> None:
        """No tracking server for this job: params, metrics, model and registration go to the relay."""
        self.offline = True
        logger.warning("%s: logging to the relay in %s instead; the run gets it all with "
                       "`ade-mlflow sync-run %s`", reason, self.relay.dir, self.run_id or "RUN_ID")
        self.relay.append(job_relay.PARAMS, params={k: str(v)[:6000] for k, v in self.config.to_params().items()})
        self.metrics = RelayLogger(self.relay)

    @property
    def run_id(self) -> str | None:
        if self.run:
            return self.run.info.run_id
        return os.environ.get(contract.ENV_RUN_ID) if self.offline else None

    def close(self, status: str = "FINISHED") -> None:
        import mlflow

        if not self.metrics.close(timeout=float(os.environ.get("ADE_METRICS_FLUSH_TIMEOUT_S", "300"))):
            logger.error("some metrics could not reach the tracking server before exit")
        self.offline = self.offline or self.metrics.relaying  # the relay then needs the run's end too
        if self.offline:
            self.relay.append(job_relay.END, status=status)
        if self.run is not None:
            try:
                mlflow.end_run(status)
            except mlflow.exceptions.MlflowException:
                if not self.offline:
                    raise
                # The server went away mid-run: the relay's end record carries the status to sync-run.
                logger.warning("run %s not ended (the tracking server is gone); its relay says %s",
                               self.run_id, status)


class CheckpointListing:
    """Keeps the run's list of kept checkpoints (the checkpoints.json artifact, the ade.checkpoints tag) in
    step with the checkpoint folder, as checkpoints appear and rotate.

    An artifact, not a tag per checkpoint: the MLflow UI shows a JSON artifact as a readable tree on the
    run's page, it has room for every field (step, eval_loss, best, size, URI), and a new save replaces
    it whole; the one short tag ("4,8,12") is what the runs table can show and search. The listing is read
    at each save (the Trainer has rotated by then); its upload runs on one background thread, the newest
    listing wins, so a slow or absent tracking server never holds up training.
    """

    def __init__(self, session: Session) -> None:
        import threading

        self.session = session
        self._pending: dict[str, Any] | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._send_loop, name="ade-checkpoint-listing", daemon=True)
        self._thread.start()

    def update(self, root: Path, state: Any) -> None:  # noqa: ARG002 - the listener signature
        from ade_mlflow_plugin.training.checkpoints import checkpoint_index

        if self.session.main and self.session.offline:
            self._relay(checkpoint_index(root, None))
            return
        if self.session.run is None:
            return  # not rank 0: nothing to list
        with self._cond:
            self._pending = checkpoint_index(root, None)
            self._cond.notify()

    def _relay(self, index: dict[str, Any]) -> None:
        """No tracking server: the listing goes to the relay (sync-run replays them in order: the last wins)."""
        import json
        import tempfile

        from ade_mlflow_plugin.training.checkpoints import INDEX_ARTIFACT, STEPS_TAG

        relay = self.session.relay
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / INDEX_ARTIFACT
            path.write_text(json.dumps(index, indent=2))
            relay.add_files(job_relay.ARTIFACTS, path, artifact_path="")
        relay.append(job_relay.TAGS, tags={STEPS_TAG: ",".join(str(e["step"]) for e in index["checkpoints"]) or "-"})

    def close(self, timeout: float) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                index, self._pending = self._pending, None
            try:
                self._send(index)
            except Exception as exc:  # noqa: BLE001 - the listing is a view: training goes on without it
                from ade_mlflow_plugin.errors import describe

                logger.warning("checkpoint listing not updated in the run: %s", describe(exc))

    def _send(self, index: dict[str, Any]) -> None:
        from mlflow import MlflowClient

        from ade_mlflow_plugin.training.checkpoints import CHECKPOINT_URI_TAG, INDEX_ARTIFACT, STEPS_TAG

        client, run_id = MlflowClient(), self.session.run_id
        # The backend tags the location when it submits the job; the job itself is not told it.
        location = client.get_run(run_id).data.tags.get(CHECKPOINT_URI_TAG)
        if location:
            index["location"] = location
            for entry in index["checkpoints"]:
                entry["uri"] = f"{location.rstrip('/')}/{entry['path']}"
        client.log_dict(run_id, index, INDEX_ARTIFACT)
        client.set_tag(run_id, STEPS_TAG, ",".join(str(e["step"]) for e in index["checkpoints"]) or "-")
