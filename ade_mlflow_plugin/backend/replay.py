"""Replay a job's relay (job/relay.py) into its MLflow run, idempotently.

Each kind of record is compared with what the run already has before anything is written: params the
run lacks, metric (key, step) pairs not in its history, tags whose value differs, artifact files not in
its listing, a logged model of that name from this run (else one is created and its files uploaded), a
model version of this run under the requested name (else one is registered). Replaying twice, or a
relay that partly reached the run before the server went away, writes each thing once.

Where the relay is: local mode, `<job root>/output/data/ade-relay`; SageMaker uploads /opt/ml/output/data
as `<S3OutputPath>/<job>/output/output.tar.gz` when the job ends, so the relay is fetched from that archive
(:func:`fetch_sagemaker_relay`).
"""
from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from ade_mlflow_plugin.errors import AdeError, ConfigError, aws_error, aws_error_code, mlflow_error
from ade_mlflow_plugin.job import relay as job_relay

METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
PARAMS_PER_BATCH = 100


@dataclass
class ReplaySummary:
    """What a replay wrote (all zero / None on a second replay)."""

    params: int = 0
    metrics: int = 0
    tags: int = 0
    datasets: int = 0
    artifacts: int = 0
    model_id: str | None = None
    versions: list[str] = field(default_factory=list)
    status: str | None = None
    skipped_kinds: set[str] = field(default_factory=set)

    @property
    def changed(self) -> bool:
        return bool(self.params or self.metrics or self.tags or self.datasets or self.artifacts or self.model_id
                    or self.versions or self.status)

    def line(self) -> str:
        return self._what() + self._skipped()

    def _skipped(self) -> str:
        # A relay written by a newer job may hold kinds this client cannot replay: say so, never drop silently.
        if not self.skipped_kinds:
            return ""
        return (f"; skipped records of unknown kind {', '.join(sorted(self.skipped_kinds))} "
                "(written by a newer job: upgrade ade-mlflow-plugin and run sync-run again)")

    def _what(self) -> str:
        if not self.changed:
            return "relay: nothing new (the run already has everything in it)"
        parts = [f"{self.params} params", f"{self.metrics} metric steps", f"{self.tags} tags",
                 f"{self.datasets} dataset inputs", f"{self.artifacts} artifact files"]
        if self.model_id:
            parts.append(f"model {self.model_id}")
        parts += [f"registered version {v}" for v in self.versions]
        if self.status:
            parts.append(f"run ended {self.status}")
        return "relay replayed: " + ", ".join(parts)


def local_relay_dir(job_root: Path) -> Path:
    """The relay of a local-mode job (the job root plays /opt/ml)."""
    from ade_mlflow_plugin.job.contract import ContainerPaths

    return ContainerPaths(job_root).output_data_dir / job_relay.RELAY_DIR


def fetch_sagemaker_relay(s3: Any, description: dict[str, Any], dest: Path) -> Path | None:
    """The relay of an ended SageMaker job, copied into dest; None when the job wrote none.

    SageMaker uploads /opt/ml/output/data as `<S3OutputPath>/<job>/output/output.tar.gz`, or file by file
    under `<job>/output/data/` when OutputDataConfig.CompressionType is NONE."""
    output = description["OutputDataConfig"]
    bucket, _, prefix = output["S3OutputPath"].rstrip("/")[5:].partition("/")
    base = "/".join(p for p in (prefix, description["TrainingJobName"], "output") if p)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if output.get("CompressionType") == "NONE":
            _download_prefix(s3, bucket, f"{base}/data/{job_relay.RELAY_DIR}/", dest / job_relay.RELAY_DIR)
        else:
            _unpack_relay(s3, bucket, f"{base}/output.tar.gz", dest)
    except Exception as exc:  # botocore's ClientError (404, 403) and transport errors
        if aws_error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None  # no output archive: the job wrote nothing there
        raise aws_error(f"downloading the relay of {description['TrainingJobName']} from s3://{bucket}/{base}",
                        exc) from exc
    relay = dest / job_relay.RELAY_DIR
    return relay if (relay / job_relay.RECORDS_FILE).is_file() else None


def _unpack_relay(s3: Any, bucket: str, key: str, dest: Path) -> None:
    archive = dest / "output.tar.gz"
    s3.download_file(bucket, key, str(archive))
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.removeprefix("./").startswith(job_relay.RELAY_DIR + "/")]
        tar.extractall(dest, members=members, filter="data")  # the filter refuses paths leaving dest


def _download_prefix(s3: Any, bucket: str, prefix: str, dest: Path) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            target = dest / item["Key"][len(prefix):]
            if dest.resolve() not in target.resolve().parents:
                continue  # a key with ../ in it is no file of the relay
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(target))


@contextmanager
def relay_of_job(job: Any, description: dict[str, Any]) -> Iterator[Path | None]:
    """The relay of a followed job that has ended (None: it wrote none): a LocalJob's is in its root, a
    SageMaker job's in its output archive (downloaded to a temporary folder for the caller's block)."""
    root = getattr(job, "root", None)
    if isinstance(root, Path):
        relay = local_relay_dir(root)
        yield relay if (relay / job_relay.RECORDS_FILE).is_file() else None
        return
    if "OutputDataConfig" not in description:
        yield None
        return
    from ade_mlflow_plugin.backend.aws import AwsClients

    region = description.get("TrainingJobArn", "::::").split(":")[3] or None
    with tempfile.TemporaryDirectory(prefix="ade-relay-") as tmp:
        yield fetch_sagemaker_relay(AwsClients(region=region, interactive=True).s3, description, Path(tmp))


def replay(client: Any, run_id: str, relay_dir: Path, end_status: str | None = None) -> ReplaySummary:
    """Write into the run what the relay holds and the run lacks; end the run with `end_status` (the
    job's status; default the status the job recorded in the relay) unless it already has it."""
    records = list(job_relay.read_records(relay_dir))
    summary = ReplaySummary()
    try:
        run = client.get_run(run_id)
        summary.params = _params(client, run, records)
        summary.metrics = _metrics(client, run_id, records)
        summary.tags = _tags(client, run, records)
        summary.datasets = _datasets(client, run, records)
        summary.artifacts = _artifacts(client, run_id, relay_dir, records)
        model_ids = _models(client, run, relay_dir, records, summary)
        summary.versions = _register(client, run_id, model_ids, records)
        summary.status = _end(client, run, records, end_status)
    except MlflowException as exc:
        if isinstance(exc, AdeError):
            raise
        raise mlflow_error(f"replaying the relay {relay_dir} into run {run_id}", exc) from exc
    known = {job_relay.PARAMS, job_relay.METRICS, job_relay.TAGS, job_relay.ARTIFACTS, job_relay.MODEL,
             job_relay.REGISTER, job_relay.END, job_relay.DATASET}
    summary.skipped_kinds = {r["kind"] for r in records} - known
    return summary


def _of(records: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r["kind"] == kind]


def _params(client: Any, run: Any, records: list[dict[str, Any]]) -> int:
    from mlflow.entities import Param

    wanted: dict[str, str] = {}
    for record in _of(records, job_relay.PARAMS):
        wanted.update({k: str(v) for k, v in record["params"].items()})
    new = [Param(k, v) for k, v in sorted(wanted.items()) if k not in run.data.params]  # params are immutable
    for start in range(0, len(new), PARAMS_PER_BATCH):
        client.log_batch(run.info.run_id, params=new[start:start + PARAMS_PER_BATCH])
    return len(new)


def _metrics(client: Any, run_id: str, records: list[dict[str, Any]]) -> int:
    """(key, step) pairs the run's history lacks; the first relayed value of a pair wins."""
    from mlflow.entities import Metric

    relayed: dict[tuple[str, int], dict[str, Any]] = {}
    for record in _of(records, job_relay.METRICS):
        for item in record["metrics"]:
            relayed.setdefault((item["key"], int(item["step"])), item)
    have = {key: {m.step for m in client.get_metric_history(run_id, key)} for key in {k for k, _ in relayed}}
    new = [Metric(key, float(item["value"]), int(item["timestamp"]), step)
           for (key, step), item in sorted(relayed.items(), key=lambda kv: (kv[1]["timestamp"], kv[0]))
           if step not in have[key]]
    for start in range(0, len(new), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=new[start:start + METRICS_PER_BATCH])
    return len(new)


def _tags(client: Any, run: Any, records: list[dict[str, Any]]) -> int:
    """The tags as the records leave them, in order: a restarted job's relay deletes the stop tags that
    its earlier attempt recorded (job/run_state.py), so a finished run does not keep them."""
    from mlflow.entities import RunTag

    wanted: dict[str, str] = {}
    deleted: set[str] = set()
    for record in _of(records, job_relay.TAGS):
        for key in record.get("deleted", []):
            wanted.pop(key, None)
            deleted.add(key)
        for key, value in record["tags"].items():
            wanted[key] = str(value)
            deleted.discard(key)
    new = [RunTag(k, v) for k, v in sorted(wanted.items()) if run.data.tags.get(k) != v]
    if new:
        client.log_batch(run.info.run_id, tags=new)
    gone = sorted(key for key in deleted if key in run.data.tags)
    for key in gone:
        client.delete_tag(run.info.run_id, key)
    return len(new) + len(gone)


def _datasets(client: Any, run: Any, records: list[dict[str, Any]]) -> int:
    """Dataset inputs the run lacks (same name and digest)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    have = {(d.dataset.name, d.dataset.digest) for d in (run.inputs.dataset_inputs if run.inputs else [])}
    new = []
    for record in _of(records, job_relay.DATASET):
        fields = record["dataset"]
        if (fields["name"], fields["digest"]) in have:
            continue
        have.add((fields["name"], fields["digest"]))
        dataset = Dataset(fields["name"], fields["digest"], fields["source_type"], fields["source"],
                          fields.get("schema"), fields.get("profile"))
        new.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", record.get("context", "training"))]))
    if new:
        client.log_inputs(run.info.run_id, datasets=new)
    return len(new)


def _listing(client: Any, run_id: str, path: str | None) -> set[str]:
    """Every file path in the run's artifacts under `path`."""
    found: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        found |= _listing(client, run_id, info.path) if info.is_dir else {info.path}
    return found


def _artifacts(client: Any, run_id: str, relay_dir: Path, records: list[dict[str, Any]]) -> int:
    """Relayed artifact files the run's listing lacks (a file's relay copy is named by its record)."""
    sent = 0
    for record in _of(records, job_relay.ARTIFACTS):
        source = relay_dir / record["files"]
        base = record.get("artifact_path") or None
        have = _listing(client, run_id, base)
        files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        for path in files:
            relative = path.name if source.is_file() else path.relative_to(source).as_posix()
            target = "/".join(p for p in (base, relative) if p)
            if target in have:
                continue
            client.log_artifact(run_id, str(path), target.rpartition("/")[0] or None)
            sent += 1
    return sent


def _models(client: Any, run: Any, relay_dir: Path, records: list[dict[str, Any]],
            summary: ReplaySummary) -> dict[str, str]:
    """Logged-model name -> model id, for each relayed model: the run's own if it has one, else a new one."""
    from mlflow.entities import LoggedModelOutput

    ids: dict[str, str] = {}
    run_id, experiment_id = run.info.run_id, run.info.experiment_id
    for record in _of(records, job_relay.MODEL):
        name = record["name"]
        found = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}' "
                                                                            f"AND name = '{name}'")
        ready = [m for m in found if str(m.status) == "READY"]
        if ready:
            ids[name] = ready[0].model_id
            continue
        # A replay cut short after creating the model (PENDING) finishes that one instead of adding another.
        model = found[0] if found else client.create_logged_model(experiment_id, name=name, source_run_id=run_id)
        client.log_model_artifacts(model.model_id, str(relay_dir / record["files"]))
        client.finalize_logged_model(model.model_id, "READY")
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        ids[name] = summary.model_id = model.model_id
    return ids


def _register(client: Any, run_id: str, model_ids: dict[str, str], records: list[dict[str, Any]]) -> list[str]:
    """A version for each registration request unless this run already has one under that name."""
    versions = []
    for record in _of(records, job_relay.REGISTER):
        # model_id: a model the job logged before the server went away; else one from the relay.
        name = record["name"]
        model_id = record.get("model_id") or model_ids.get(record.get("model", "model"))
        if model_id is None:
            raise ConfigError(f"the relay asks to register '{name}' but holds no model to register: "
                              "the job ended before saving it; rerun the job")
        if client.search_model_versions(f"name = '{name}' AND run_id = '{run_id}'"):
            continue
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        version = client.create_model_version(name, f"models:/{model_id}", run_id=run_id,
                                              tags=record.get("tags") or {}, model_id=model_id)
        versions.append(str(version.version))
    return versions


def _end(client: Any, run: Any, records: list[dict[str, Any]], end_status: str | None) -> str | None:
    """End the run: as the job recorded it when that is KILLED with a stop reason (a budget stop exits
    143, which SageMaker calls Failed), else with `end_status`, else as recorded; a run that already
    ended KILLED with a stop reason keeps it (submitted_run.kept_end, the rule every path uses)."""
    from ade_mlflow_plugin.backend.submitted_run import kept_end

    run = client.get_run(run.info.run_id)  # with the tags just replayed (the stop reason among them)
    ends = _of(records, job_relay.END)
    recorded = ends[-1]["status"] if ends else None
    if kept_end(run.info.status, run.data.tags):
        return None
    status = recorded if kept_end(recorded, run.data.tags) else (end_status or recorded)
    if status is None or run.info.status == status:
        return None
    client.set_terminated(run.info.run_id, status)
    return status
