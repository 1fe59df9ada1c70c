"""The job's work, end to end: data -> LoRA training -> eval -> logged model -> registered version.

`run_main` (MLproject `main`) mines the codebase first; `run_train` (`train`) reads a prepared dataset;
`run_evaluate` (`evaluate`) scores a logged model. All attach to the run in MLFLOW_RUN_ID and only
rank 0 talks to MLflow.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ade_mlflow_plugin.errors import ConfigError, first_line
from ade_mlflow_plugin.job import contract
from ade_mlflow_plugin.training.checkpoints import (SIGTERM_EXIT_CODE, best_checkpoint,
                                                    check_adapter_matches, checkpoint_dir, finished_checkpoint,
                                                    latest_checkpoint, load_adapter_weights)
from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.job import relay as job_relay
from ade_mlflow_plugin.training.session import LISTING_FLUSH_S, CheckpointListing, Session
from ade_mlflow_plugin.training.tracking import attach_run, is_main_process, log_params_once

logger = logging.getLogger(__name__)


class Stopped(SystemExit):
    """SIGTERM: a checkpoint is saved; the entry exits 143."""

    def __init__(self) -> None:
        super().__init__(SIGTERM_EXIT_CODE)


@dataclass
class Outcome:
    run_id: str | None
    global_step: int
    metrics: dict[str, float] = field(default_factory=dict)
    model_uri: str | None = None
    version: str | None = None
    best_step: int | None = None  # the checkpoint load_best chose, when it chose one


def run_main(config: TrainingConfig) -> Outcome:
    """MLproject `main`: codebase (and your dataset, by dataset_ratio) -> dataset -> train -> eval -> log
    model -> register."""
    from ade_mlflow_plugin.training.model import check_quantization

    if not config.codebase and not (config.dataset and config.dataset_ratio >= 1):
        raise ConfigError("parameter 'codebase' is required: pass the folder of code to train on "
                          "(or dataset=... with dataset_ratio=1 to train on your data alone)")
    check_quantization(config.quantization)
    return _run(config, lambda session: _main_data(config, session))


def run_train(config: TrainingConfig) -> Outcome:
    """MLproject `train`: a prepared dataset (from `prepare_data`) or your own data -> train -> eval -> log
    -> register."""
    from ade_mlflow_plugin.training.model import check_quantization

    if not config.dataset:
        raise ConfigError("parameter 'dataset' is required: pass the folder `ade-mlflow prepare-data` wrote, or "
                          "a JSON Lines/Parquet file or saved Hugging Face dataset of prompt/completion rows")
    check_quantization(config.quantization)
    return _run(config, lambda session: _given_data(config, session))


def _main_data(config: TrainingConfig, session: "Session") -> Any:
    """The mined codebase, your dataset, or both mixed by dataset_ratio."""
    from ade_mlflow_plugin.training.model import load_tokenizer

    user = _given_data(config, session) if config.dataset and config.dataset_ratio > 0 else None
    if user is not None and config.dataset_ratio >= 1:
        return user
    mined = _mine(config, load_tokenizer(config.base_model), session)
    if user is None:
        return mined
    from ade_mlflow_plugin.dataset.user import mix

    mixed = mix(mined, user, config.dataset_ratio, config.seed)
    logger.info("dataset: %s", mixed.stats["mix"]["line"])
    return mixed


def _given_data(config: TrainingConfig, session: "Session") -> Any:
    """`dataset=`: a folder prepare-data wrote as it is; your own rows loaded and logged as a run input."""
    from ade_mlflow_plugin.dataset import load_prepared
    from ade_mlflow_plugin.dataset.user import DATASET_NAME, is_prepared, load_user_dataset

    if is_prepared(config.dataset):
        return load_prepared(config.dataset)
    prepared = load_user_dataset(config.dataset, eval_fraction=config.eval_fraction, seed=config.seed)
    logger.info("dataset %s: %d train and %d eval examples of yours", config.dataset,
                len(prepared.dataset["train"]), len(prepared.dataset["eval"]))
    if session.main and session.offline:
        _relay_dataset(session.relay, prepared, Path(config.dataset), DATASET_NAME)
    elif session.main:
        from ade_mlflow_plugin.dataset.tracking import log_to_active_run

        log_to_active_run(prepared, Path(config.dataset), name=DATASET_NAME)
    return prepared


def _mine(config: TrainingConfig, tokenizer: Any, session: "Session") -> Any:
    from ade_mlflow_plugin.dataset import build_dataset

    prepared = build_dataset(config.codebase, None, num_examples=config.num_examples,
                             synthetic_ratio=config.synthetic_ratio, eval_fraction=config.eval_fraction,
                             seed=config.seed, tokenizer=tokenizer, max_tokens=config.max_seq_len,
                             log_to_mlflow=session.main and not session.offline, progress=False)
    if session.main and session.offline:
        _relay_dataset(session.relay, prepared, Path(config.codebase))
    return prepared


def _relay_dataset(relay: job_relay.Relay, prepared: Any, codebase: Path, name: str | None = None) -> None:
    """What dataset/tracking.py logs to a reachable run (the dataset input with its digest, stats.json and
    the digest tag), kept in the relay."""
    import json
    import tempfile
    import warnings

    import mlflow
    import pandas as pd

    from ade_mlflow_plugin.dataset import tracking as dataset_tracking

    name = name or dataset_tracking.DATASET_NAME
    frames = [prepared.dataset[split].to_pandas().assign(split=split) for split in ("train", "eval")]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        data = mlflow.data.from_pandas(pd.concat(frames, ignore_index=True), source=str(codebase.resolve()),
                                       name=name, digest=prepared.digest)
    relay.append(job_relay.DATASET, dataset=data.to_dict(), context=dataset_tracking.CONTEXT)
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / dataset_tracking.stats_file_name(name)
        stats.write_text(json.dumps(prepared.stats, indent=2, sort_keys=True, default=str))
        relay.add_files(job_relay.ARTIFACTS, stats, artifact_path="")
    relay.append(job_relay.TAGS, tags={dataset_tracking.DIGEST_TAG: prepared.digest})


def _run(config: TrainingConfig, get_data) -> Outcome:
    # Here, not at the top: torch and transformers come with it, and their import is the job's start-up.
    from ade_mlflow_plugin.training import phases

    clock = phases.PhaseClock()
    with clock.phase("setup"):
        session = Session(config)
    try:
        with clock.phase("dataset"):
            data = get_data(session)
        outcome = _train_and_log(config, session, data, clock)
        if session.main:
            _log_phases(session, clock, outcome.global_step)
    except SystemExit as exc:  # SIGTERM (Stopped, or the handler itself before training began)
        session.close("KILLED" if exc.code == SIGTERM_EXIT_CODE else "FAILED")
        raise
    except BaseException:
        session.close("FAILED")
        raise
    session.close("FINISHED")
    return outcome


def _rows(config: TrainingConfig, tokenizer: Any, prepared: Any) -> tuple[list, list, list]:
    """Train rows (shuffled by seed, so a restart sees the same order), eval rows, exact-match samples."""
    from ade_mlflow_plugin.training.packing import build_rows

    rows, stats = build_rows(tokenizer, prepared.dataset["train"].shuffle(seed=config.seed), config.max_seq_len,
                             config.packing)
    if not rows:
        raise ConfigError(f"no training example fits max_seq_len={config.max_seq_len} "
                          f"({stats.dropped_too_long} too long): raise max_seq_len")
    eval_split = prepared.dataset["eval"]
    eval_rows, _ = build_rows(tokenizer, eval_split, config.max_seq_len, config.packing)
    samples = [eval_split[i] for i in range(min(config.eval_samples, len(eval_split)))]
    logger.info("train: %d examples in %d rows (%.0f%% full), %d completion tokens; eval: %d rows",
                stats.examples, stats.rows, 100 * stats.fill, stats.completion_tokens, len(eval_rows))
    return rows, eval_rows, samples


def _train_and_log(config: TrainingConfig, session: Session, prepared: Any, clock: Any) -> Outcome:
    """Load, (resume and) train, evaluate and publish, each phase booked on ``clock`` (a PhaseClock)."""
    from transformers import set_seed

    from ade_mlflow_plugin.training import evaluation, phases
    from ade_mlflow_plugin.training.model import local_model_dir
    from ade_mlflow_plugin.training.sharding import is_sharded, load_for_training, publishable_model
    from ade_mlflow_plugin.training.trainer import train

    out_dir = checkpoint_dir()
    check_adapter_matches(latest_checkpoint(out_dir), config)  # before the model load: one line, not a trace
    set_seed(config.seed)  # LoRA's A matrices are drawn at random: same seed, same start
    with clock.phase("model_load"):
        model, tokenizer, device = load_for_training(config)
    with clock.phase("dataset"):
        rows, eval_rows, samples = _rows(config, tokenizer, prepared)
    # A sharded model evaluates on every rank at once (each forward gathers the shards together) and does not
    # generate: the ranks could stop decoding at different steps and wait for each other for ever.
    sharded = is_sharded(model)
    if latest_checkpoint(out_dir) is None and (session.main or sharded):  # the "before" figures, once per run
        with clock.phase("eval"):
            before = evaluation.eval_metrics(model, tokenizer, eval_rows, [] if sharded else samples,
                                             config.max_new_tokens)
        session.metrics.log(before, step=0)
    finished = finished_checkpoint(out_dir, config.max_steps)
    if finished is not None:
        folder, state = finished
        best = best_checkpoint(out_dir, state) if config.load_best else None
        logger.info("%s is at the last step (%d): nothing left to train; evaluating and publishing %s",
                    folder, state.global_step, best or folder)
        load_adapter_weights(model, best or folder)
        stopped = False
    else:
        from ade_mlflow_plugin.training.callbacks import checkpoint_listener

        listing, steps = CheckpointListing(session), phases.StepClock()
        started = time.perf_counter()
        try:
            with checkpoint_listener(listing.update):
                state, stopped = train(config, model, tokenizer, rows, output_dir=out_dir, device=device,
                                       metric_logger=session.metrics, stop=session.stop, eval_rows=eval_rows,
                                       callbacks=[steps])
        finally:
            listing.close(timeout=LISTING_FLUSH_S)
        phases.book_training(clock, steps, time.perf_counter() - started)
    if stopped:
        logger.warning("SIGTERM: checkpoint saved at step %d in %s; exiting", state.global_step, out_dir)
        raise Stopped()
    after = None
    if sharded:  # evaluated while sharded, on every rank: rank 0's publishable copy is in host memory
        with clock.phase("eval"):
            after = evaluation.eval_metrics(model, tokenizer, eval_rows, [], config.max_new_tokens)
        if session.main and samples:
            logger.info("exact_match skipped: a sharded model does not generate (its ranks could stop decoding "
                        "at different steps)")
    with clock.phase("model_load"):  # every rank: sharded, rank 0 gets an unsharded copy with the full adapter
        model = publishable_model(model, config)
    outcome = Outcome(session.run_id, state.global_step, best_step=_best_step(config, state))
    if not session.main:
        return outcome
    with clock.phase("eval"):
        outcome.metrics = after if after is not None else \
            evaluation.eval_metrics(model, tokenizer, eval_rows, samples, config.max_new_tokens)
    session.metrics.log(outcome.metrics, step=state.global_step)
    # Metrics land before the model: a server that is down now is waited for here, with nothing lost.
    session.metrics.flush(timeout=float(os.environ.get("ADE_METRICS_FLUSH_TIMEOUT_S", "300")))
    with clock.phase("model_logging"):
        _publish(config, session, model, tokenizer, prepared, outcome, local_model_dir(config.base_model))
    return outcome


def _log_phases(session: Session, clock: Any, step: int) -> None:
    """The job's phase times into the run (metrics and phases.json) and the table into the job log."""
    import json
    import tempfile

    from ade_mlflow_plugin.training import phases

    summary = clock.summary()
    session.metrics.log(phases.metrics(summary), step=step)
    print(phases.table(summary), flush=True)
    if session.offline:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / phases.ARTIFACT
            path.write_text(json.dumps(summary, indent=2))
            session.relay.add_files(job_relay.ARTIFACTS, path, artifact_path="")
        return
    from mlflow import MlflowClient

    try:
        MlflowClient().log_dict(session.run_id, summary, phases.ARTIFACT)
    except Exception as exc:  # noqa: BLE001 - a view of the job (its metrics carry the same figures)
        from ade_mlflow_plugin.errors import describe

        logger.warning("%s not logged to the run: %s", phases.ARTIFACT, describe(exc))


def _best_step(config: TrainingConfig, state: Any) -> int | None:
    """The step whose checkpoint the model now is (load_best), said in the job log."""
    folder = state.best_model_checkpoint if config.load_best else None
    if not folder:
        return None
    step = int(Path(folder).name.rsplit("-", 1)[-1])
    logger.info("load_best: the model is step %d's (eval_loss %.6g, the lowest of the periodic evals), of %d "
                "steps trained", step, state.best_metric, state.global_step)
    return step


def _publish(config: TrainingConfig, session: Session, model: Any, tokenizer: Any, prepared: Any,
             outcome: Outcome, base_dir: Path | None) -> None:
    """Model files to SM_MODEL_DIR, the same model into the run, a registered version."""
    import mlflow

    from ade_mlflow_plugin.training import modelio

    # Decided (and merged, if at all) once: the job's model.tar.gz is exactly the logged model.
    chosen = modelio.publishable(model, base_dir, merge_adapter=config.merge_adapter, base_model=config.base_model)
    if os.environ.get(contract.ENV_MODEL_DIR):
        modelio.save_publishable(chosen, tokenizer, Path(os.environ[contract.ENV_MODEL_DIR]))
    if session.offline:
        _relay_publish(config, session, chosen, tokenizer, prepared, outcome, base_dir)
        return
    try:
        info = modelio.log_publishable(chosen, tokenizer, base_dir=base_dir,
                                       quantized=config.quantization != "none", max_new_tokens=config.max_new_tokens)
    except mlflow.exceptions.MlflowException:
        reason = job_relay.unreachable_reason(mlflow.get_tracking_uri())
        if reason is None:  # the server answered and refused: a real error
            raise
        logger.warning("%s while logging the model: the model and its registration go to the relay %s",
                       reason, session.relay.dir)
        session.offline = True
        _relay_publish(config, session, chosen, tokenizer, prepared, outcome, base_dir)
        return
    outcome.model_uri = info.model_uri
    digest = getattr(prepared, "digest", None)
    commit = modelio.git_commit(session.run.data.tags if session.run else {})
    run_tags = {**_run_tags(config, commit, digest), **_best_tags(outcome)}
    version_tags = {**modelio.version_tags(base_model=config.base_model, digest=digest, commit=commit,
                                           metrics=outcome.metrics), **_best_tags(outcome)} \
        if config.registered_model_name else None
    try:
        mlflow.set_tags(run_tags)
        if version_tags is not None:
            outcome.version = registered_version(mlflow.MlflowClient(), config.registered_model_name, session.run_id) \
                or str(modelio.register(info.model_uri, config.registered_model_name, version_tags).version)
    except mlflow.exceptions.MlflowException:
        if job_relay.unreachable_reason(mlflow.get_tracking_uri()) is None:
            raise
        # The model is in the run; the server left before its tags and version: sync-run adds them.
        logger.warning("the tracking server went away after the model was logged: its tags and registration "
                       "go to the relay %s", session.relay.dir)
        session.offline = True
        session.relay.append(job_relay.TAGS, tags=run_tags)
        if version_tags is not None:
            session.relay.append(job_relay.REGISTER, name=config.registered_model_name, model_id=info.model_id,
                                 tags={k: str(v) for k, v in version_tags.items()})


def registered_version(client: Any, name: str, run_id: str | None) -> str | None:
    """The version of ``name`` this run registered already, if any: a job restarted after it registered
    (reclaimed while it logged or exited) must not add a second version of the same training."""
    if not run_id:
        return None
    found = [v for v in client.search_model_versions(f"run_id = '{run_id}'") if v.name == name]
    if not found:
        return None
    version = str(min(int(v.version) for v in found))
    logger.info("'%s' version %s was registered by this run before a restart: kept, no second version", name,
                version)
    return version


BEST_STEP_TAG = "ade.best_step"


def _best_tags(outcome: Outcome) -> dict[str, str]:
    return {BEST_STEP_TAG: str(outcome.best_step)} if outcome.best_step is not None else {}


def _run_tags(config: TrainingConfig, commit: str, digest: str | None) -> dict[str, str]:
    """The run's provenance tags. With base_model=models:/NAME@ALIAS the job's base_model is the input
    channel's folder: the tags name the registered version (and the parent) the way the version's do."""
    from ade_mlflow_plugin.training.base_model import parent_tags, resolve

    return {"ade.base_model": resolve(config.base_model).description, **parent_tags(config.base_model),
            "ade.git_commit": commit, **({"ade.dataset_digest": digest} if digest else {})}


def _relay_publish(config: TrainingConfig, session: Session, chosen: Any, tokenizer: Any, prepared: Any,
                   outcome: Outcome, base_dir: Path | None) -> None:
    """_publish for a job without a tracking server: the model saved into the relay, its tags and the
    registration request recorded, all replayed into the run by `ade-mlflow sync-run`."""
    from ade_mlflow_plugin.training import modelio

    folder = session.relay.files_dir()
    modelio.save_publishable_model(chosen, tokenizer, folder / modelio.MODEL_NAME, base_dir=base_dir,
                                   quantized=config.quantization != "none", max_new_tokens=config.max_new_tokens)
    relay = session.relay
    relay.append(job_relay.MODEL, name=modelio.MODEL_NAME,
                 files=str((folder / modelio.MODEL_NAME).relative_to(relay.dir)))
    digest = getattr(prepared, "digest", None)
    commit = modelio.git_commit({})
    relay.append(job_relay.TAGS, tags={**_run_tags(config, commit, digest), **_best_tags(outcome)})
    if config.registered_model_name:
        tags = {**modelio.version_tags(base_model=config.base_model, digest=digest, commit=commit,
                                       metrics=outcome.metrics), **_best_tags(outcome)}
        relay.append(job_relay.REGISTER, name=config.registered_model_name, model=modelio.MODEL_NAME,
                     tags={k: str(v) for k, v in tags.items()})
    logger.warning("model and registration of '%s' kept in the relay %s", config.registered_model_name or "-",
                   relay.dir)


def run_evaluate(model_uri: str, dataset: str, max_new_tokens: int, num_samples: int,
                 max_seq_len: int = 2048) -> dict[str, float]:
    """MLproject `evaluate`: eval_loss, perplexity and exact_match of a logged model on a prepared dataset."""
    import mlflow

    from ade_mlflow_plugin.dataset import load_prepared
    from ade_mlflow_plugin.training import evaluation
    from ade_mlflow_plugin.training.packing import build_rows

    prepared = load_prepared(dataset)
    try:
        parts = mlflow.transformers.load_model(model_uri, return_type="components")
    except mlflow.exceptions.MlflowException as exc:
        raise ConfigError(f"model_uri '{model_uri}' could not be loaded ({first_line(exc, 200)}): "
                          "pass runs:/<run_id>/model or models:/<name>/<version>") from None
    model, tokenizer = parts["model"], parts["tokenizer"]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    split = prepared.dataset["eval"]
    rows, _ = build_rows(tokenizer, split, max_seq_len)
    samples = [split[i] for i in range(min(num_samples, len(split)))]
    metrics = evaluation.eval_metrics(model, tokenizer, rows, samples, max_new_tokens)
    if is_main_process():
        with attach_run(system_metrics=False) as run:
            mlflow.log_metrics(metrics)
            log_params_once(mlflow.MlflowClient(), run.info.run_id,
                            {"model_uri": model_uri, "num_samples": str(num_samples)})
    return metrics
