"""The `ade-sagemaker` MLflow project backend: MLproject entry point -> SageMaker (or local) training job.

Order matters: everything the user can get wrong is checked first (config, entry point, params,
tracking URI, image) with no run created and no AWS call made; then the run is created, code and
data are shipped content-addressed, the job is submitted and, from the `mlflow run` CLI (which never
waits for plugin backends), followed to its end unless `"wait": false`.
"""
from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO
from urllib.parse import urlsplit

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.projects.backend.abstract_backend import AbstractBackend
from mlflow.projects.utils import fetch_and_validate_project, get_or_create_run, load_project

from ade_mlflow_plugin.adapters.mlflow_projects import synchronous as is_synchronous
from ade_mlflow_plugin.adapters.mlflow_projects import under_mlflow_run_cli
from ade_mlflow_plugin.backend import packaging, spec, wheelhouse
from ade_mlflow_plugin.backend.aws import AwsClients, aws_call
from ade_mlflow_plugin.backend.images import resolve_image_uri
from ade_mlflow_plugin.backend.params import ResolvedParams, resolve_params
from ade_mlflow_plugin.backend.submitted_run import AdeSubmittedRun, Guarded, JobFollower, SageMakerJob
from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.errors import (AdeError, AwsError, ConfigError, JobFailedError, mlflow_error,
                                     registry_error)
from ade_mlflow_plugin.job import contract

_logger = logging.getLogger(__name__)
BACKEND_NAME = "ade-sagemaker"
#: ade.submit_error of a run whose submission a Ctrl-C ended before any job existed (the run ends KILLED).
INTERRUPTED_BEFORE_JOB = "interrupted (Ctrl-C) before the training job was created"


@dataclass
class Submission:
    """What a submission produced, for the caller and for benchmarks."""

    job_name: str
    request: dict[str, Any]
    code: packaging.Upload
    bytes_uploaded: int  # code, data channels and wheels together
    wheels: wheelhouse.Shipped | None = None  # its bytes_uploaded: the wheels' share
    interrupted: bool = False  # a Ctrl-C landed once the job existed: the backend stops it


def _fetch_project(project_uri: str, version: str | None, entry_point: str, params: dict[str, Any]) -> Path:
    """A local project directory as it is; a git or zip URI fetched by MLflow's public
    ``fetch_and_validate_project``, which also checks the entry point and required params as MLflow
    does for its own backends (local directories get params.py's finer one-line checks instead)."""
    local = contract.local_path(project_uri)  # a file:// URI percent-decoded
    if local.is_dir():
        return local.resolve()
    try:
        return Path(fetch_and_validate_project(project_uri, version, entry_point, params))
    except MlflowException as exc:
        raise mlflow_error(f"fetching project {project_uri}", exc, "check the project URI, the version "
                           "(-v) and the entry point and params it declares", ConfigError) from exc


def _materialise_registry_uri(name: str, value: str, scratch: Path) -> str:
    """A models:/ or runs:/ param value downloaded under ``scratch``; any other value as it is."""
    if not value.startswith(("models:/", "runs:/")):
        return value
    target = scratch / name
    target.mkdir(parents=True, exist_ok=True)
    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=value, dst_path=str(target))
    except MlflowException as exc:
        raise registry_error(f"parameter '{name}': cannot resolve {value}", exc,
                             "check the registered model name and its alias or version") from exc


def job_tracking_uri(uri: str, mode: str) -> str:
    """The URI the job logs to: file stores made absolute (the job runs elsewhere)."""
    parts = urlsplit(uri)
    if parts.scheme == "sqlite" and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if parts.scheme in ("", "file"):
        return Path(parts.path if parts.scheme else uri).resolve().as_uri()
    return uri


def warn_unreachable(uri: str, console: TextIO) -> None:
    parts = urlsplit(uri)
    host = (parts.hostname or "").lower()
    if parts.scheme in ("", "file", "sqlite") or host in {"localhost", "127.0.0.1", "::1", "0.0.0.0"}:
        console.write(
            f"WARNING: the job will log to '{uri}', which a SageMaker job cannot reach. Use a tracking "
            "server reachable from the job (set \"tracking_uri\" in the backend config or "
            "MLFLOW_TRACKING_URI), or a SageMaker managed MLflow ARN (pip install "
            "'ade-mlflow-plugin[sagemaker-mlflow]').\n"
        )


class _FollowedLogCopy:
    """The follower's CloudWatch log observer (guarded: a refused call is one warning). Its local copy
    (an ``ade-logs-*`` temp dir, uploaded into the run's logs/ when the job ends) is made on the first
    poll, so a job nobody follows (``"wait": false``) leaves none; and removed when this object or the
    process goes, should the follower never finish."""

    def __init__(self, logs_client: Any, job_name: str, pause: Callable[[float], None]) -> None:
        from ade_mlflow_plugin.backend.logs import LogTailer

        self.tailer = LogTailer(logs_client, job_name, out_dir=None, console=sys.stdout, pause=pause)
        self.dirs: list[Path] = []  # shared with the follower: log_files and scratch_dirs

    def _local_copy(self) -> None:
        if self.tailer.out_dir is None:
            path = Path(tempfile.mkdtemp(prefix="ade-logs-"))
            weakref.finalize(self, shutil.rmtree, path, ignore_errors=True)
            self.tailer.out_dir = path
            self.dirs.append(path)

    def on_poll(self, description: dict[str, Any]) -> None:
        self._local_copy()
        self.tailer.on_poll(description)

    def on_end(self, description: dict[str, Any]) -> None:
        self._local_copy()
        self.tailer.on_end(description)


class AdeSageMakerBackend(AbstractBackend):
    """MLflow project backend plugin; see the module docstring."""

    def __init__(self, clients_factory: Callable[..., AwsClients] = AwsClients,
                 console: TextIO | None = None) -> None:
        self.clients_factory = clients_factory
        self.console = console or sys.stderr
        self.last_submission: Submission | None = None
        self._started: Any = None  # the job being started, set by _start as soon as it may exist

    def run(self, project_uri: str, entry_point: str, params: dict[str, Any], version: str | None,
            backend_config: dict[str, Any] | str | None, tracking_uri: str | None,
            experiment_id: str) -> AdeSubmittedRun:
        try:
            return self._run(project_uri, entry_point, params, version, backend_config or {},
                             tracking_uri, experiment_id)
        except AdeError as exc:
            if not under_mlflow_run_cli():
                raise
            self.console.write(f"ade-sagemaker: error: {exc.message}\n")
            sys.exit(exc.exit_code)

    def _run(self, project_uri: str, entry_point: str, params: dict[str, Any], version: str | None,
             backend_config: dict[str, Any] | str, tracking_uri: str | None,
             experiment_id: str) -> AdeSubmittedRun:
        config = CloudTrainingConfig.from_backend_config(backend_config)
        synchronous = is_synchronous(backend_config)
        project_dir = _fetch_project(project_uri, version, entry_point, params or {})
        project = load_project(str(project_dir))
        resolved = resolve_params(project, entry_point, params or {}, project_dir)
        job_uri = job_tracking_uri(config.tracking_uri or tracking_uri or mlflow.get_tracking_uri(), config.mode)
        spec.check_tracking_uri(job_uri)
        clients = self.clients_factory(region=config.region, profile=config.aws_profile)
        region = self._region(config, clients, resolved)
        image = resolve_image_uri(config, region)
        job_name = spec.make_job_name(self._job_stem(config, project.name))
        if config.mode == "sagemaker":
            warn_unreachable(job_uri, self.console)
        cost = self._plan_cost(config, clients)  # refuses a budget too small for a useful run
        fit = self._plan_fit(config, resolved)  # refuses a model that cannot fit the GPUs even sharded
        wheels = self._wheelhouse(config, project_dir, resolved)  # a requirement with no wheel is refused here
        with tempfile.TemporaryDirectory(prefix="ade-pack-") as pack_dir:
            # Packed and secret-scanned before the run exists: a refused file leaves no FAILED run behind.
            tarball = packaging.build_project_tarball(project_dir, Path(pack_dir),
                                                      allow_secret_files=config.allow_secret_files)
            # ---- everything checked: from here on a run exists and AWS is called ----
            active = get_or_create_run(None, project_uri, experiment_id, str(project_dir), version,
                                       entry_point, params or {})
            run_id = active.info.run_id
            client = mlflow.MlflowClient()
            self._started = None
            try:
                submission, job = self._submit(config, clients, tarball, entry_point, resolved, job_name,
                                               image, spec.RunInfo(run_id, experiment_id, job_uri), region, cost,
                                               wheels)
            except BaseException as exc:
                # A Ctrl-C before the job existed: nothing runs, the user ended it (no failure to look into).
                interrupted = isinstance(exc, KeyboardInterrupt)
                error = INTERRUPTED_BEFORE_JOB if interrupted else str(getattr(exc, "message", exc)) or repr(exc)
                client.set_tag(run_id, "ade.submit_error", error[:5000])
                status = RunStatus.KILLED if interrupted else RunStatus.FAILED
                client.set_terminated(run_id, RunStatus.to_string(status))
                raise
        self.last_submission = submission
        fit_tags = fit.tags if fit else {}
        try:
            if submission.interrupted:
                raise KeyboardInterrupt
            self._tag_run(client, run_id, submission, config, region, job, fit_tags)
            submitted = AdeSubmittedRun(run_id, job_name, self._follower(config, clients, client, run_id, job,
                                                                        job_name))
        except KeyboardInterrupt:  # Ctrl-C as the job starts, before anyone follows it: never leave it running
            self._stop_unfollowed(config, clients, client, run_id, submission, region, job, fit_tags)
            raise
        if config.wait and not synchronous:
            self._follow_from_cli(submitted)
        elif not synchronous:
            self.console.write(f"Submitted {job_name} (run {run_id}); follow it with: "
                               f"ade-mlflow logs {run_id} --follow\n")
        return submitted

    def _stop_unfollowed(self, config: CloudTrainingConfig, clients: AwsClients, client: Any, run_id: str,
                         submission: Submission, region: str, job: Any, fit_tags: dict[str, str]) -> None:
        """The job a Ctrl-C interrupted the submission of is stopped and followed to its end: its run is
        tagged (status and reconcile find the job) and ends as the job does, KILLED. The interrupt then goes on:
        nothing was submitted to follow. A second Ctrl-C leaves the job stopping (StopTrainingJob already sent)."""
        self.console.write(f"\nInterrupted: stopping {submission.job_name} ...\n")
        try:
            job.stop()
        except AdeError as exc:  # it runs on: the run stays RUNNING, tagged, for status and reconcile to end
            self.console.write(f"WARNING: {exc.message}; {submission.job_name} runs on: stop it with aws sagemaker "
                               f"stop-training-job --training-job-name {submission.job_name}; `ade-mlflow status "
                               f"{run_id}` ends its run once it ends\n")
            self._tag_run(client, run_id, submission, config, region, job, fit_tags)
            return
        self._tag_run(client, run_id, submission, config, region, job, fit_tags)
        submitted = AdeSubmittedRun(run_id, submission.job_name,
                                    self._follower(config, clients, client, run_id, job, submission.job_name))
        submitted.wait_stopped()

    @staticmethod
    def _job_stem(config: CloudTrainingConfig, project_name: str | None) -> str:
        if config.base_job_name != "ade":
            return config.base_job_name
        name = project_name or "project"
        return name if name.startswith("ade") else f"ade-{name}"

    def _plan_cost(self, config: CloudTrainingConfig, clients: AwsClients) -> Any:
        """The price and budget the job carries (it logs cost_usd and keeps the budget itself; SageMaker's
        MaxRuntime is capped by it), printed on one line."""
        from ade_mlflow_plugin.backend.cost import plan_cost

        plan = plan_cost(config, clients)
        if plan.line:
            self.console.write(plan.line + "\n")
        return plan.cost

    def _plan_fit(self, config: CloudTrainingConfig, resolved: ResolvedParams) -> Any:
        """A training entry's memory estimate for the chosen GPUs, printed under the cost line; `sharding`
        resolved for the job (backend/fit.py). None for entries that do not train."""
        if resolved.training is None:
            return None
        from ade_mlflow_plugin.backend.fit import plan_fit

        plan = plan_fit(config, resolved.training)
        self.console.write(plan.line + "\n")
        for name, value in plan.options.items():  # sharding (and checkpoint_layers) as decided for the job
            resolved.resolve_option(name, value)
        return plan

    def _wheelhouse(self, config: CloudTrainingConfig, project_dir: Path,
                    resolved: ResolvedParams) -> wheelhouse.Wheelhouse | None:
        """The job's requirements as wheels (backend/wheelhouse.py), built before any run exists."""
        if not wheelhouse.wanted(config):
            return None
        for param in resolved.paths:
            if packaging.channel_name(param) == contract.WHEELHOUSE_CHANNEL:
                raise ConfigError(f"parameter '{param}': its input channel name is the wheelhouse's; rename "
                                  "the parameter or set \"wheelhouse\": \"never\"")
        house = wheelhouse.prepare(config, project_dir)
        if house is None:
            self.console.write("wheelhouse: nothing to ship (the image has every requirement)\n")
        return house

    def _region(self, config: CloudTrainingConfig, clients: AwsClients, resolved: ResolvedParams) -> str:
        region = config.region or clients.session.region_name
        needs_aws = config.mode == "sagemaker" or any(p.startswith("s3://") for p in resolved.paths.values())
        if region is None and needs_aws:
            raise ConfigError("no AWS region: set \"region\" in the backend config or AWS_DEFAULT_REGION")
        return region or "us-east-1"

    def _submit(self, config: CloudTrainingConfig, clients: AwsClients, tarball: packaging.Artifact,
                entry_point: str, resolved: ResolvedParams, job_name: str, image: str, run: spec.RunInfo,
                region: str, cost: Any = None,
                wheels: wheelhouse.Wheelhouse | None = None) -> tuple[Submission, Any]:
        store, output_uri, checkpoint_uri = self._locations(config, clients, job_name)
        code = store.put_file(f"code/{tarball.sha256}.tar.gz", tarball.path)
        shipped = None
        if wheels is not None:
            ship = wheelhouse.ship if config.mode == "local" else aws_call("Uploading the wheelhouse to S3")(
                wheelhouse.ship)
            shipped = ship(wheels, store, self.console)
        with tempfile.TemporaryDirectory(prefix="ade-inputs-") as tmp:
            # A registered model given as a param is downloaded once: a local job reads it in place for
            # its whole life (kept beside the job), a SageMaker job from S3 (the download goes after upload).
            scratch = Path(config.job_root or ".ade").resolve() / "inputs" / job_name \
                if config.mode == "local" else Path(tmp)
            channels, sent = self._channels(config, clients, resolved, scratch)
        inputs = spec.JobInputs(job_name=job_name, entry_point=entry_point, image_uri=image, code_uri=code.uri,
                                output_uri=output_uri, checkpoint_uri=checkpoint_uri, run=run,
                                params=resolved.values, channel_params=channels, cost=cost,
                                wheelhouse_uri=shipped.uri if shipped else None)
        request = spec.build_training_job_request(config, inputs, region)
        interrupted = False
        try:
            job = self._start(config, clients, request)
        except KeyboardInterrupt:  # handed back when the job exists: the caller stops it, tags and ends its run
            job = self._started
            if job is None or not self._left_behind(job):
                raise
            interrupted = True
        wheel_bytes = shipped.bytes_uploaded if shipped else 0
        return Submission(job_name, request, code, code.bytes_uploaded + sent + wheel_bytes, shipped,
                          interrupted), job

    def _left_behind(self, job: Any) -> bool:
        """Whether a start that a Ctrl-C cut short left a job behind: a local job once its launcher started;
        a SageMaker job once CreateTrainingJob reached SageMaker (asked: its answer may never have come
        back). When SageMaker cannot say, one line names the job to check."""
        if not isinstance(job, SageMakerJob):
            return getattr(job, "launched", True)  # a detached job is handed over only once its runner started
        from ade_mlflow_plugin.backend.reconcile import JOB_NOT_FOUND

        try:
            job.describe()
        except AwsError as exc:
            if exc.code not in JOB_NOT_FOUND:
                self.console.write(f"WARNING: cannot tell whether {job.name} was created ({exc.message}); if it "
                                   f"was, stop it: aws sagemaker stop-training-job --training-job-name {job.name}\n")
            return False
        return True

    def _locations(self, config: CloudTrainingConfig, clients: AwsClients,
                   job_name: str) -> tuple[Any, str, str]:
        if config.mode == "local":
            root = Path(config.job_root or ".ade").resolve()
            checkpoint = config.checkpoint_s3_uri or (root / "checkpoints" / job_name).as_uri()
            if checkpoint.startswith("/"):
                checkpoint = Path(checkpoint).as_uri()
            return packaging.LocalStore(root / "cache"), (root / "output").as_uri(), checkpoint
        base = f"s3://{config.bucket}/{config.prefix.strip('/')}".rstrip("/")
        store = packaging.S3Store(clients.s3, config.bucket, config.prefix, config.output_kms_key_id)
        store.put_file = aws_call("Uploading the project to S3")(store.put_file)  # type: ignore[method-assign]
        return store, f"{base}/output", config.checkpoint_s3_uri or f"{base}/checkpoints/{job_name}"

    def _channels(self, config: CloudTrainingConfig, clients: AwsClients, resolved: ResolvedParams,
                  scratch: Path) -> tuple[dict[str, spec.Channel], int]:
        channels: dict[str, spec.Channel] = {}
        sent = 0
        for name, path in resolved.paths.items():
            path = _materialise_registry_uri(name, path, scratch)
            if config.mode == "local" and not path.startswith("s3://"):
                channels[name] = packaging.local_channel(name, path)
                continue
            if path.startswith("s3://"):
                channels[name] = spec.Channel(packaging.channel_name(name), path)
                continue
            store = packaging.S3Store(clients.s3, config.bucket, config.prefix, config.output_kms_key_id)
            channel, uploaded = aws_call(f"Uploading parameter '{name}' to S3")(packaging.s3_channel)(
                name, path, store)
            channels[name], sent = channel, sent + uploaded
        return channels, sent

    def _start(self, config: CloudTrainingConfig, clients: AwsClients, request: dict[str, Any]) -> Any:
        if config.mode == "local":
            from ade_mlflow_plugin.backend.local import LocalJob, start_detached

            root = Path(config.job_root or ".ade").resolve() / "jobs" / request["TrainingJobName"]
            if not config.wait:  # nobody follows it from here: it must outlive this process
                self._started = start_detached(request, root, clients)
                return self._started
            job = self._started = LocalJob(request, job_root=root, clients=clients, stream=sys.stdout)
            job.start()
            return job
        # Named before the call: CreateTrainingJob may create the job though a Ctrl-C beats its answer back.
        job = self._started = SageMakerJob(clients.sagemaker, request["TrainingJobName"])
        aws_call("CreateTrainingJob")(clients.sagemaker.create_training_job)(**request)
        return job

    def _tag_run(self, client: Any, run_id: str, submission: Submission, config: CloudTrainingConfig,
                 region: str, job: Any, fit_tags: dict[str, str] | None = None) -> None:
        description = job.describe()
        tags = {
            **(fit_tags or {}),  # the memory estimate and the sharding the job was given
            "sagemaker.job_name": submission.job_name,
            "sagemaker.job_arn": description.get("TrainingJobArn", ""),
            "sagemaker.region": region,
            "sagemaker.instance_type": config.instance_type,
            "sagemaker.instance_count": str(config.instance_count),
            "sagemaker.spot": str(config.use_spot).lower(),
            "sagemaker.mode": config.mode,
            "sagemaker.code_uri": submission.code.uri,
            # MLflow sets this itself only after run() returns, which a failed followed job never does.
            "mlflow.project.backend": BACKEND_NAME,
        }
        checkpoint_uri = (submission.request.get("CheckpointConfig") or {}).get("S3Uri")
        if checkpoint_uri:  # where the job's kept checkpoints live (its checkpoints.json listing names them)
            tags["ade.checkpoint_uri"] = checkpoint_uri
        if config.mode == "sagemaker":
            tags["sagemaker.console_url"] = spec.console_url(region, submission.job_name)
        else:
            tags["ade.local_log"] = str(job.log_path)
        from mlflow.entities import RunTag

        client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])  # one round trip
        client.log_dict(run_id, submission.request, "sagemaker/create_training_job.json")

    def _follower(self, config: CloudTrainingConfig, clients: AwsClients, client: Any, run_id: str, job: Any,
                  job_name: str) -> JobFollower:
        follower = JobFollower(job=job, run_id=run_id, mlflow_client=client, console=self.console,
                               poll_interval_s=config.poll_interval_s)
        observers = self._observers(config, clients, client, run_id, job)
        if config.mode == "sagemaker":
            # The follower's own sleep paces the final drain (tests replace it); first, so the drain is
            # in the log files before they are uploaded. The CloudWatch copy is ours: removed once
            # uploaded. Its list fills only if the job is followed.
            logs = _FollowedLogCopy(clients.logs, job_name, pause=lambda s: follower.sleep(s))
            observers.insert(0, Guarded(logs, self.console, "CloudWatch logs"))
            follower.log_files, follower.scratch_dirs = logs.dirs, logs.dirs
        else:
            follower.log_files = list(job.log_files)  # a multi-host local job: the merged log and each host's
        follower.observers = observers
        return follower

    @staticmethod
    def _observers(config: CloudTrainingConfig, clients: AwsClients, client: Any, run_id: str,
                   job: Any) -> list[Any]:
        try:
            from ade_mlflow_plugin.backend.monitor import build_observers
        except ImportError:
            return []
        return build_observers(config=config, clients=clients, mlflow_client=client, run_id=run_id, job=job)

    def _follow_from_cli(self, submitted: AdeSubmittedRun) -> None:
        if submitted.wait():
            self.console.write(f"{submitted.job_name} completed; run {submitted.run_id} FINISHED\n")
            return
        status = submitted.get_status()
        raise JobFailedError(f"job {submitted.job_name} ended {status}; run {submitted.run_id} marked "
                             f"{status} (see its sagemaker.failure_reason tag and logs/ artifacts)")
