"""Property (issue 19 item 5): for any backend config and any `-P` params, the backend either builds a
CreateTrainingJob request that validates against botocore's SageMaker service model, or refuses the input
with one line that names the key (a ConfigError: exit 2 through the CLI); never anything else.

The examples go through the backend's own checks in this process, in the order project_backend._run runs
them (config, params, tracking URI, image, job name, then the pure request builder), with no server and no
AWS call: the uploads are content-addressed S3 URIs of the shape the packager makes. botocore's
ParamValidator checks required members, types and minimums; SageMaker's model also states maximums and
patterns, which botocore leaves to the service: ``strict_problems`` checks those too, so a request that
passes here is one SageMaker's own validation would take.
"""
from __future__ import annotations

import functools
import os
import string
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import regex  # SageMaker's patterns are Java regexes (\p{L}...): the `regex` module reads them
from botocore.validate import ParamValidator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ade_mlflow_plugin.backend import packaging, spec
from ade_mlflow_plugin.backend.images import resolve_image_uri
from ade_mlflow_plugin.backend.params import resolve_params
from ade_mlflow_plugin.cli import _one_line
from ade_mlflow_plugin.config.cloud import CloudTrainingConfig
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.job import contract
from ade_mlflow_plugin.launch import PROJECT_DIR
from ade_mlflow_plugin.options import options_of

#: 200 in CI (issue 19: at least 200, quickly); ADE_PROPERTY_EXAMPLES=3000 explores more, at random.
EXAMPLES = int(os.environ.get("ADE_PROPERTY_EXAMPLES", "200"))
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
CONFIG_KEYS = sorted(options_of(CloudTrainingConfig))
PARAM_NAMES = ["base_model", "num_examples", "synthetic_ratio", "registered_model_name", "lora_r", "lora_alpha",
               "lora_dropout", "target_modules", "quantization", "learning_rate", "epochs", "max_steps",
               "batch_size", "grad_accumulation", "max_seq_len", "eval_fraction", "seed", "merge_adapter",
               "gradient_checkpointing", "dataset_ratio", "warmup_ratio", "scheduler", "eval_steps"]

# ---- strategies -----------------------------------------------------------------------------------------

junk = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                 st.text(max_size=40), st.lists(st.text(max_size=8), max_size=3),
                 st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3))
env_name = st.from_regex(r"[A-Z_][A-Z0-9_]{0,15}", fullmatch=True)
s3_uri = st.from_regex(r"s3://[a-z0-9][a-z0-9.-]{1,20}[a-z0-9](/[A-Za-z0-9._/-]{0,40})?", fullmatch=True)

VALID: dict[str, st.SearchStrategy[Any]] = {
    "mode": st.sampled_from(["sagemaker", "sagemaker", "local"]),
    # few regions, instance types and versions: each set of them is an image lookup (~0.5 s, cached)
    "region": st.sampled_from(["us-east-1", "eu-west-1"]),
    "role_arn": st.just(ROLE) | st.from_regex(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]{1,40}", fullmatch=True),
    "bucket": st.from_regex(r"[a-z0-9][a-z0-9-]{1,30}[a-z0-9]", fullmatch=True),
    "prefix": st.from_regex(r"[A-Za-z0-9!_.*'()/-]{0,60}", fullmatch=True),
    "instance_type": st.sampled_from(["ml.g5.2xlarge", "ml.m5.large"]),
    "instance_count": st.integers(1, 100),
    "volume_size_gb": st.integers(1, 16384),
    "max_runtime_s": st.integers(1, 28 * 24 * 3600),
    "use_spot": st.booleans(),
    "max_wait_s": st.integers(1, 28 * 24 * 3600),
    "checkpoint_s3_uri": s3_uri,
    "image_uri": st.from_regex(r"\d{12}\.dkr\.ecr\.us-east-1\.amazonaws\.com/[a-z][a-z0-9-]{0,20}:[a-z0-9.]{1,10}",
                               fullmatch=True),
    "framework_version": st.just("2.5"),
    "py_version": st.just("py311"),
    "environment": st.dictionaries(env_name, st.text(string.ascii_letters + string.digits + " -_.=/", max_size=30),
                                   max_size=4),
    "allow_secret_files": st.lists(st.from_regex(r"[a-z]{1,8}/", fullmatch=True), max_size=2),
    "tags": st.dictionaries(st.from_regex(r"[a-zA-Z][a-zA-Z0-9 _.:/=+@-]{0,30}", fullmatch=True),
                            st.from_regex(r"[a-zA-Z0-9 _.:/=+@-]{0,40}", fullmatch=True), max_size=4),
    "subnets": st.lists(st.from_regex(r"subnet-[0-9a-f]{8,17}", fullmatch=True), min_size=1, max_size=3),
    "security_group_ids": st.lists(st.from_regex(r"sg-[0-9a-f]{8,17}", fullmatch=True), min_size=1, max_size=3),
    "volume_kms_key_id": st.just("alias/ade"),
    "output_kms_key_id": st.just("arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
    "enable_network_isolation": st.booleans(),
    "wheelhouse": st.sampled_from(["auto", "never"]),
    "enable_inter_container_traffic_encryption": st.booleans(),
    "keep_alive_period_s": st.integers(0, 3600),
    "max_retry_attempts": st.integers(1, 30),
    "max_cost_usd": st.floats(0.001, 10_000),
    "on_budget": st.sampled_from(["stop", "alert"]),
    "tracking_uri": st.sampled_from(["https://mlflow.example.com", "http://10.0.0.5:5000", "arn:aws:sagemaker:"
                                     "us-east-1:123456789012:mlflow-tracking-server/ade"]),
    "wait": st.booleans(),
    "poll_interval_s": st.integers(1, 600),
    "base_job_name": st.from_regex(r"[a-zA-Z0-9](-?[a-zA-Z0-9]){0,30}", fullmatch=True),
    "aws_profile": st.sampled_from(["default", "ml-team"]),
}
FOLDER_KEYS = ("job_root", "output_dir", "sync_checkpoints")  # filled with real folders (or unwritable ones)


@st.composite
def backend_configs(draw: st.DrawFn, folders: dict[str, str]) -> dict[str, Any]:
    """A backend config: each key absent, valid or junk (mostly valid, so that many requests get built)."""
    config: dict[str, Any] = {"role_arn": ROLE, "bucket": "ade-bucket", "region": "us-east-1"}
    # Half the examples are clean (every key absent or valid, so that requests get built), half dirty.
    dirty = draw(st.booleans())
    kinds = ["absent"] * 12 + ["valid"] * 3 + (["junk"] * 2 if dirty else [])
    for key in CONFIG_KEYS:
        kind = draw(st.sampled_from(kinds))
        if kind == "absent":
            continue
        if key in FOLDER_KEYS:
            config[key] = draw(st.sampled_from([folders["ok"], folders["under_file"], folders["odd"]])) \
                if kind == "valid" else draw(junk)
        elif key in VALID:
            config[key] = draw(VALID[key]) if kind == "valid" else draw(junk)
        else:
            config[key] = draw(junk)
    if not dirty:  # keys that go together, together
        if config.get("subnets") or config.get("security_group_ids"):
            config["subnets"], config["security_group_ids"] = ["subnet-0abc1234"], ["sg-0def5678"]
        if "max_wait_s" in config or "keep_alive_period_s" in config:
            config["use_spot"] = "max_wait_s" in config and "keep_alive_period_s" not in config
        return config
    if draw(st.integers(0, 3)) == 0:
        config[draw(st.from_regex(r"[a-z_]{3,16}", fullmatch=True))] = draw(junk)  # an unknown key
    for key in draw(st.lists(st.sampled_from(["role_arn", "bucket", "region"]), max_size=1)):
        config.pop(key, None)
    return config


GOOD_PARAMS = {"num_examples": "50", "synthetic_ratio": "0.5", "lora_r": "8", "learning_rate": "2e-4",
               "epochs": "1", "max_steps": "10", "batch_size": "2", "seed": "7", "merge_adapter": "true",
               "quantization": "4bit", "registered_model_name": "ade-model", "max_seq_len": "512"}
param_value = st.one_of(st.sampled_from(["0", "1", "4", "16", "0.5", "2e-4", "true", "false", "none", "4bit",
                                         "cosine", "-1", "1e9", "nan", "", "all-linear", "ade-model"]),
                        st.text(max_size=20), st.text(min_size=2400, max_size=2600, alphabet="ab"))


@st.composite
def cli_params(draw: st.DrawFn) -> dict[str, str]:
    if draw(st.booleans()):  # clean: declared names, values they take
        return {name: GOOD_PARAMS[name] for name in draw(st.lists(st.sampled_from(sorted(GOOD_PARAMS)), max_size=5))}
    params = draw(st.dictionaries(st.sampled_from(PARAM_NAMES), param_value, max_size=6))
    if draw(st.integers(0, 7)) == 0:
        params[draw(st.from_regex(r"[a-z_]{2,12}", fullmatch=True))] = draw(param_value)  # maybe undeclared
    return params


# ---- the backend's checks and the request, in process ---------------------------------------------------


@functools.lru_cache(maxsize=1)
def request_shape() -> Any:
    """CreateTrainingJob's input shape in botocore's SageMaker model (loaded when the property runs)."""
    return botocore.session.get_session().get_service_model("sagemaker").operation_model(
        "CreateTrainingJob").input_shape


@functools.lru_cache(maxsize=1)
def project() -> Any:
    """The packaged MLproject, read once (MLflow parses its YAML on each load)."""
    from mlflow.projects.utils import load_project

    return load_project(str(PROJECT_DIR))


@functools.lru_cache(maxsize=None)
def image_for(framework_version: str, py_version: str, instance_type: str, image_uri: str | None, mode: str,
              region: str) -> str:
    """resolve_image_uri for what it reads (sagemaker-core reads its JSON tables on each call: ~0.1 s)."""
    config = CloudTrainingConfig(framework_version=framework_version, py_version=py_version, mode=mode,
                                 instance_type=instance_type, image_uri=image_uri)
    return resolve_image_uri(config, region)


def build_request(raw_config: dict[str, Any], params: dict[str, str], codebase: Path) -> dict[str, Any]:
    """What project_backend._run does before its first run or AWS call, then spec's request builder."""
    config = CloudTrainingConfig.from_backend_config(raw_config)
    resolved = resolve_params(project(), "main", {"codebase": str(codebase), **params}, PROJECT_DIR)
    tracking = config.tracking_uri or "https://mlflow.example.com"
    spec.check_tracking_uri(tracking)
    region = config.region or "us-east-1"
    image = image_for(config.framework_version, config.py_version, config.instance_type, config.image_uri,
                      config.mode, region)
    job_name = spec.make_job_name("ade-coder" if config.base_job_name == "ade" else config.base_job_name)
    base = f"s3://{config.bucket or 'local'}/{config.prefix.strip('/')}".rstrip("/")
    channels = {name: spec.Channel(packaging.channel_name(name), f"{base}/data/{'0' * 64}/")
                for name in resolved.paths}
    cost = contract.Cost(1.212, "test", config.max_cost_usd, config.on_budget) if config.max_cost_usd else None
    inputs = spec.JobInputs(job_name=job_name, entry_point="main", image_uri=image,
                            code_uri=f"{base}/code/{'0' * 64}.tar.gz", output_uri=f"{base}/output",
                            checkpoint_uri=config.checkpoint_s3_uri or f"{base}/checkpoints/{job_name}",
                            run=spec.RunInfo("0123456789abcdef0123456789abcdef", "1", tracking),
                            params=resolved.values, channel_params=channels, cost=cost)
    return spec.build_training_job_request(config, inputs, region)


def strict_problems(value: Any, shape: Any, where: str = "") -> list[str]:
    """The maximums and patterns of SageMaker's model, which botocore's ParamValidator does not check."""
    meta, problems = shape.metadata, []
    if shape.type_name == "structure":
        for name, member in shape.members.items():
            if name in value:
                problems += strict_problems(value[name], member, f"{where}.{name}")
    elif shape.type_name == "list":
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{where}: {len(value)} items > {meta['max']}")
        for i, item in enumerate(value):
            problems += strict_problems(item, shape.member, f"{where}[{i}]")
    elif shape.type_name == "map":
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{where}: {len(value)} entries > {meta['max']}")
        for key, item in value.items():
            problems += strict_problems(key, shape.key, f"{where} key {key!r}")
            problems += strict_problems(item, shape.value, f"{where}[{key!r}]")
    elif shape.type_name == "string":
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{where}: {len(value)} chars > {meta['max']}")
        if "pattern" in meta and not regex.fullmatch(meta["pattern"], value):  # Java matches(): the whole string
            problems.append(f"{where}: {value[:80]!r} does not match {meta['pattern']}")
    elif shape.type_name in ("integer", "long") and "max" in meta and value > meta["max"]:
        problems.append(f"{where}: {value} > {meta['max']}")
    return problems


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("property")
    (root / "a-file").write_text("x")
    (root / "code base ü").mkdir()
    (root / "code base ü" / "app.py").write_text("def f():\n    return 1\n")
    return {"ok": str(root / "jobs"), "under_file": str(root / "a-file" / "jobs"), "odd": str(root / "dossier ü x"),
            "codebase": str(root / "code base ü")}


def check_one(raw_config: dict[str, Any], params: dict[str, str], codebase: Path) -> str:
    try:
        request = build_request(raw_config, params, codebase)
    except ConfigError as exc:
        line, code = _one_line(exc)
        assert code == 2 and line and "\n" not in line, line
        named = set(raw_config) | set(params) | {"role_arn", "bucket", "codebase", "region"}
        assert any(name in line for name in named), f"{line!r} names none of {sorted(named)}"
        return "refused"
    report = ParamValidator().validate(request, request_shape())
    assert not report.has_errors(), report.generate_report()
    problems = strict_problems(request, request_shape())
    assert not problems, problems
    return "built"


# slow: 200 examples take ~5 s of CPU (hypothesis' own drawing is half of it), more than a fast test may.
@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("ADE_PROPERTY_EXAMPLES"),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_any_config_and_params_give_a_valid_request_or_one_line_naming_the_key(data: st.DataObject,
                                                                               folders: dict[str, str]) -> None:
    raw_config = data.draw(backend_configs(folders), "backend config")
    params = data.draw(cli_params(), "-P params")
    outcome = check_one(raw_config, params, Path(folders["codebase"]))
    OUTCOMES[outcome] = OUTCOMES.get(outcome, 0) + 1


OUTCOMES: dict[str, int] = {}


@pytest.mark.slow
def test_the_examples_built_requests_and_refused_inputs_both(folders: dict[str, str]) -> None:
    """A property whose examples all fail early proves nothing. Runs after the property (file order) and
    reads its tally; run alone (-k), it runs the property itself first."""
    if not OUTCOMES:
        test_any_config_and_params_give_a_valid_request_or_one_line_naming_the_key(folders=folders)
    assert OUTCOMES.get("built", 0) >= EXAMPLES // 10, OUTCOMES
    assert OUTCOMES.get("refused", 0) >= EXAMPLES // 10, OUTCOMES
