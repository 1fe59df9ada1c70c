"""The launcher's word on the MLflow run: ended once (FINISHED, FAILED, KILLED with a stop reason) and
reopened when SageMaker restarts the same job (a managed-spot reclaim, a retried internal error).

A SIGTERM says nothing about why it came; the reason is found out here: the local runner writes it
(ContainerPaths.stop_reason_file) before it signals, and on SageMaker the job's own DescribeTrainingJob
tells a StopTrainingJob, a spot reclaim and MaxRuntimeInSeconds apart. What cannot be found out reads
"stopped", never FAILED. When the tracking server cannot be reached, the same words go to the relay.
"""
from __future__ import annotations

import datetime as dt
import sys
import threading
from pathlib import Path
from typing import Any, Mapping

from ade_mlflow_plugin.job import bootstrap, contract
from ade_mlflow_plugin.job.procs import stops_held

#: A SIGTERM this close to MaxRuntimeInSeconds is SageMaker's MaxRuntime stop.
MAX_RUNTIME_SLACK_S = 60.0
DESCRIBE_TIMEOUT_S = 5
ATTEMPT_TAG = "ade.attempt"
STOP_TAGS = (contract.STOP_REASON_TAG, contract.STOP_DETAIL_TAG)
#: How long a host waits to record its stop's reason on the run before it stops its entry anyway.
RECORD_STOP_TIMEOUT_S = 10.0
#: What a SIGTERM says when neither the local runner nor SageMaker can say why.
SIGTERM_DETAIL = "stopped: SIGTERM to the launcher"


# ---------------------------------------------------------------- why the SIGTERM came
def reason_from_description(description: Mapping[str, Any], now: dt.datetime | None = None) -> tuple[str, str]:
    """(reason, detail) for a SIGTERM, from the job's DescribeTrainingJob answer at that moment."""
    status = description.get("TrainingJobStatus", "")
    secondary = description.get("SecondaryStatus", "")
    if status in ("Stopping", "Stopped") or secondary in ("Stopping", "Stopped"):
        return "stopped", "stopped: StopTrainingJob (SageMaker stopped the job on request)"
    if secondary == "MaxRuntimeExceeded" or _past_max_runtime(description, now):
        limit = (description.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
        return _budget_cap(description, limit) or (
            "max_runtime", f"max_runtime: the job reached MaxRuntimeInSeconds={limit}")
    if secondary == "Interrupted" or (status == "InProgress" and description.get("EnableManagedSpotTraining")):
        # A SIGTERM to a managed-spot job that nobody stopped and that is within its runtime: the reclaim.
        return "spot_interrupted", "spot_interrupted: the spot instance was reclaimed; SageMaker restarts the job"
    return "stopped", f"stopped: SIGTERM while the job was {status or 'running'} ({secondary or 'no detail'})"


def _budget_cap(description: Mapping[str, Any], limit: Any) -> tuple[str, str] | None:
    """("budget", detail) when MaxRuntimeInSeconds is the budget's cap (spec.py caps it at the seconds the
    budget buys): SageMaker's clock starts before the launcher's, so its MaxRuntime stop beats the guard's."""
    hyper = {key: contract.decode_value(value) for key, value in (description.get("HyperParameters") or {}).items()}
    try:
        cost = contract.decode_hyperparameters(hyper).cost
    except contract.ContractError:
        return None
    count = int((description.get("ResourceConfig") or {}).get("InstanceCount") or 1)
    affordable = cost.affordable_s(count) if cost is not None and cost.on_budget == "stop" else None
    if affordable is None or not limit or int(limit) != affordable:
        return None
    return "budget", (f"budget: MaxRuntimeInSeconds={limit}, what max_cost_usd ${cost.max_cost_usd:.2f} buys at "
                      f"${cost.usd_per_hour:g}/h x {count} (on_budget=stop), was reached")


def _past_max_runtime(description: Mapping[str, Any], now: dt.datetime | None) -> bool:
    limit = (description.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
    started = description.get("TrainingStartTime")
    if not limit or not isinstance(started, dt.datetime) or description.get("EnableManagedSpotTraining"):
        return False  # a spot job's runtime spans its attempts: only SecondaryStatus can say
    now = now or dt.datetime.now(started.tzinfo or dt.timezone.utc)
    return (now - started).total_seconds() >= float(limit) - MAX_RUNTIME_SLACK_S


def sigterm_reason(paths: contract.ContainerPaths, env: Mapping[str, str], region: str | None) -> tuple[str, str]:
    """Why the launcher was sent SIGTERM: the local runner's word, else SageMaker's, else "stopped"."""
    try:
        written = paths.stop_reason_file.read_text().strip()
    except OSError:
        written = ""
    if written:
        reason, _, detail = written.partition("\n")
        if reason in contract.STOP_REASONS:
            return reason, detail.strip() or f"{reason}: the local runner stopped the job"
        if reason == contract.PEER_FAILED:  # not a stop: the launcher ends the run FAILED
            return reason, detail.strip() or "another host of the job failed"
    job_name = env.get(contract.ENV_JOB_NAME)
    if job_name and not env.get(contract.ENV_BASE_DIR):  # a real SageMaker container
        try:
            return reason_from_description(bootstrap.describe_training_job(job_name, region, DESCRIBE_TIMEOUT_S))
        except Exception as exc:  # noqa: BLE001 - no permission, no network: the stop is still a stop
            return "stopped", (f"stopped: SIGTERM; DescribeTrainingJob could not say why ({type(exc).__name__}); "
                               "give the job role sagemaker:DescribeTrainingJob to tell spot reclaims apart")
    return "stopped", SIGTERM_DETAIL


# ---------------------------------------------------------------- a stop seen from another host
def _multi_host_run(env: Mapping[str, str], resource: Mapping[str, Any]) -> str | None:
    """The run id of a multi-host job (every host may read and record its stop), else None."""
    hosts = resource.get("hosts") or ["algo-1"]
    return env.get(contract.ENV_RUN_ID) if len(hosts) > 1 else None


def record_stop(env: Mapping[str, str], resource: Mapping[str, Any], reason: str, detail: str,
                timeout_s: float = RECORD_STOP_TIMEOUT_S) -> None:
    """Before any host of a multi-host job stops its entry (its SIGTERM, its budget): the reason goes on the
    run first. The other hosts' entries end without a SIGTERM of their own (their ranks stop at the same
    step, or lose their collective's partner), and their launchers read it here to end as stopped, not
    failed. A reason already there stays: the first stop of the attempt is the job's. Waits timeout_s at
    most (MLflow's client retries for minutes; the stop's grace is 120 s): the stop goes on regardless."""
    run_id = _multi_host_run(env, resource)
    if run_id is None or reason not in contract.STOP_REASONS:
        return
    writer = threading.Thread(target=_record_stop, args=(env, run_id, reason, detail), daemon=True)
    writer.start()
    writer.join(timeout_s)
    if writer.is_alive():
        print(f"launcher: recording the stop on MLflow run {run_id} takes over {timeout_s:g} s; stopping without "
              "waiting (the other hosts may end the run FAILED)", file=sys.stderr, flush=True)


def _record_stop(env: Mapping[str, str], run_id: str, reason: str, detail: str) -> None:
    try:
        client = _client(env)
        if client is None:
            print("launcher: the tracking server cannot be reached; the other hosts cannot read this stop's "
                  "reason and may end the run FAILED", file=sys.stderr, flush=True)
            return
        if contract.STOP_REASON_TAG not in client.get_run(run_id).data.tags:
            client.set_tag(run_id, contract.STOP_DETAIL_TAG, detail)
            client.set_tag(run_id, contract.STOP_REASON_TAG, reason)  # last: a reader sees both or neither
    except Exception as exc:  # noqa: BLE001 - the stop goes on whether or not the run can say why
        print(f"launcher: cannot record the stop on MLflow run {run_id}: {type(exc).__name__}: {str(exc)[:200]}",
              file=sys.stderr, flush=True)


def recorded_stop(env: Mapping[str, str], resource: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, detail) of the stop another host (or the follower's budget guard) recorded on the run in this
    attempt (reopen_run clears an earlier attempt's), or None: for a host whose entry ended without a SIGTERM."""
    run_id = _multi_host_run(env, resource)
    if run_id is None:
        return None
    try:
        client = _client(env)
        tags = client.get_run(run_id).data.tags if client is not None else {}
    except Exception as exc:  # noqa: BLE001 - unreadable: the entry's own exit decides
        print(f"launcher: cannot read MLflow run {run_id}: {type(exc).__name__}: {str(exc)[:200]}",
              file=sys.stderr, flush=True)
        return None
    reason = tags.get(contract.STOP_REASON_TAG, "")
    if reason not in contract.STOP_REASONS:
        return None
    detail = tags.get(contract.STOP_DETAIL_TAG) or f"{reason}: another host of the job was stopped"
    return reason, detail if detail.startswith(reason) else f"{reason}: {detail}"


# ---------------------------------------------------------------- the run
def _client(env: Mapping[str, str]) -> Any:
    """An MlflowClient for the job's run, or None when the tracking server cannot be reached (checked
    with one short probe, so a server that is down costs seconds here, not MLflow's minutes of retries)."""
    from ade_mlflow_plugin.job import relay

    if relay.unreachable_reason(env.get(contract.ENV_TRACKING_URI), env):
        return None
    return _import_mlflow().MlflowClient(tracking_uri=env.get(contract.ENV_TRACKING_URI))


def _import_mlflow() -> Any:
    with stops_held():  # a stop mid-import would leave a half-imported mlflow that cannot end the run
        import mlflow
    return mlflow


def _relay(env: Mapping[str, str]) -> Any:
    from ade_mlflow_plugin.job import relay

    return relay.Relay(relay.relay_home(dict(env)))


def _lead_run(env: Mapping[str, str], resource: Mapping[str, Any]) -> str | None:
    """The run id when this host writes the run (node rank 0 of a job that has one), else None: so a
    multi-host job ends and reopens its run exactly once."""
    run_id = env.get(contract.ENV_RUN_ID)
    return run_id if run_id and contract.is_lead_host(dict(resource)) else None


def end_run(env: Mapping[str, str], status: str, resource: Mapping[str, Any],
            tags: Mapping[str, str] | None = None) -> None:
    """Mark the run ended (tags first); only the lead host does."""
    run_id = _lead_run(env, resource)
    if run_id is None:
        return
    try:
        client = _client(env)
        if client is not None:
            for key, value in _new_tags(client, run_id, tags or {}).items():
                client.set_tag(run_id, key, value)
            client.set_terminated(run_id, status)
            return
        why = "the tracking server cannot be reached"
    except Exception as exc:  # the job's outcome must not depend on the tracking server being up
        why = f"{type(exc).__name__}: {str(exc)[:200]}"
    print(f"launcher: could not mark MLflow run {run_id} {status} ({why}); the relay keeps it for "
          "`ade-mlflow sync-run`", file=sys.stderr)
    _relay_end(env, status, dict(tags or {}))


def _new_tags(client: Any, run_id: str, tags: Mapping[str, str]) -> dict[str, str]:
    """The end's tags, less a stop reason when the run already has one: it was set during this attempt
    (reopen_run clears earlier ones) by whoever stopped the job knowing why (the follower's budget guard tags
    ade.stop_reason=budget before its StopTrainingJob, which the launcher can only read as "stopped")."""
    if contract.STOP_REASON_TAG not in tags or contract.STOP_REASON_TAG not in client.get_run(run_id).data.tags:
        return dict(tags)
    return {key: value for key, value in tags.items() if key not in STOP_TAGS}


def _relay_end(env: Mapping[str, str], status: str, tags: dict[str, str]) -> None:
    from ade_mlflow_plugin.job import relay

    try:
        job_relay = _relay(env)
        if tags:
            job_relay.append(relay.TAGS, tags=tags)
        job_relay.append(relay.END, status=status)
    except OSError as exc:
        print(f"launcher: cannot write the relay either: {exc}", file=sys.stderr)


def reopen_run(env: Mapping[str, str], resource: Mapping[str, Any]) -> None:
    """A restart of the same job (same run id): the run that an earlier attempt ended goes on, RUNNING,
    without the earlier stop's tags; ade.attempt counts the attempts. Only the lead host does it."""
    run_id = _lead_run(env, resource)
    if run_id is None:
        return
    try:
        client = _client(env)
        if client is not None:
            _reopen_in_mlflow(client, run_id)
            return
    except Exception as exc:  # noqa: BLE001 - the restart trains whether or not the run can be reopened now
        print(f"launcher: cannot reopen MLflow run {run_id}: {type(exc).__name__}: {str(exc)[:200]}",
              file=sys.stderr)
    _reopen_in_relay(env)


def _reopen_in_mlflow(client: Any, run_id: str) -> None:
    run = client.get_run(run_id)
    if run.info.status == "RUNNING":
        return  # the first attempt: the backend created the run RUNNING
    attempt = int(run.data.tags.get(ATTEMPT_TAG, "1") or 1) + 1
    said = run.data.tags.get(contract.STOP_REASON_TAG) or run.info.status
    print(f"launcher: MLflow run {run_id} ended {run.info.status} ({said}) in an earlier attempt of this job; "
          f"attempt {attempt} continues it", flush=True)
    for key in STOP_TAGS:
        if key in run.data.tags:
            client.delete_tag(run_id, key)
    client.set_tag(run_id, ATTEMPT_TAG, str(attempt))
    client.update_run(run_id, status="RUNNING")


def _reopen_in_relay(env: Mapping[str, str]) -> None:
    """The relay of a restarted job already holds the earlier attempt's end: the replay must not keep its
    stop tags (the last end record wins the status)."""
    from ade_mlflow_plugin.job import relay

    relay_dir = relay.relay_home(dict(env)) / relay.RELAY_DIR
    if not any(record["kind"] == relay.END for record in relay.read_records(relay_dir)):
        return
    try:
        _relay(env).append(relay.TAGS, tags={}, deleted=list(STOP_TAGS))
    except OSError as exc:
        print(f"launcher: cannot write the relay: {exc}", file=sys.stderr)
