"""The fit check at submission (issue 21): will the training fit the chosen GPUs, sharded or not?

Before any run exists, for a training entry (`main`, `train`): the base model's shape (fit_models.py),
the workload its TrainingConfig trains per GPU, and the GPUs the job gets (the instance type's, times
the instance count; in local mode this machine's, from nvidia-smi, as local_hosts shares them among
`instance_count` hosts; more hosts than GPUs is refused) go through memory_estimate.decide().
The outcome is one line printed next to the cost estimate; `sharding=auto` is resolved to `none` or
`fsdp` for the job; a plan that cannot fit even sharded is refused (ConfigError, exit 2) with decide()'s
line. A plan that fits only with some decoder layers recomputed in backward gets the fewest that make it
fit when `checkpoint_layers` is auto (and gradient_checkpointing off). What cannot be checked is said on
the line and never refused: on a local machine without a GPU `auto` trains unsharded (`none`); for a model
or an instance type the estimate does not know, `auto` goes to the job as it is, and the job decides on
its own GPUs with the model it loaded (training/sharding.py).
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field, replace
from typing import Any

from ade_mlflow_plugin.backend.fit_models import FoundShape, find_shape
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.job import contract
from ade_mlflow_plugin.memory_estimate import GPU_MEMORY, Workload, decide_on, estimate, has_bf16, has_nvlink

PREFIX = "Memory estimate: "
#: Run tags the MLflow UI shows: the per-GPU GiB needed on the path the job takes, the card's, the outcome.
TAG_ESTIMATE, TAG_GPU, TAG_SHARDING, TAG_FIT = ("ade.memory_estimate_gib", "ade.memory_gpu_gib", "ade.sharding",
                                                "ade.memory_fit")
TAG_SHAPE = "ade.memory_model_shape"  # where the model's shape came from
TAG_CHECKPOINT_LAYERS = "ade.checkpoint_layers"  # checkpoint_layers=auto as resolved here, when it was


@dataclass(frozen=True)
class Gpus:
    """The GPUs one job trains on: how many in all (every host's), usable GiB on each, and their name."""

    count: int
    gib: float
    label: str


@dataclass(frozen=True)
class FitPlan:
    """The line printed before submission, the sharding value the job gets, the run's tags."""

    line: str
    sharding: str | None  # None: the entry's TrainingConfig has no sharding option (nothing to pass)
    tags: dict[str, str] = field(default_factory=dict)
    checkpoint_layers: str | None = None  # checkpoint_layers=auto resolved to a count (None: left as given)

    @property
    def options(self) -> dict[str, str]:
        """The training options decided here, for the job's params."""
        decided = {"sharding": self.sharding, "checkpoint_layers": self.checkpoint_layers}
        return {name: value for name, value in decided.items() if value is not None}


def local_gpus(environment: dict[str, str] | None = None) -> Gpus | None:
    """The GPUs local mode lends the job (local_hosts.visible_gpus: CUDA_VISIBLE_DEVICES, also from the backend
    config's environment, else every GPU nvidia-smi lists), the smallest card's memory; None without any."""
    from ade_mlflow_plugin.backend.local_hosts import visible_gpus

    if shutil.which("nvidia-smi") is None:
        return None
    ids = visible_gpus({"Environment": environment or {}})
    if not ids:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits",
                              f"--id={','.join(ids)}"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    mib = [float(line) for line in out.split() if line.replace(".", "", 1).isdigit()]
    return Gpus(len(ids), round(min(mib) / 1024, 1), "this machine's GPUs") if mib else None


def check_local_hosts(hosts: int, local: Gpus | None) -> None:
    """Local mode with more hosts than GPUs: local_hosts.host_devices gives no host a share, so every host's
    rank 0 loads a whole copy onto the first GPU, and NCCL refuses two ranks on one device ("Duplicate GPU
    detected"). Refused in one line before anything runs; on CPU (no GPU lent) the hosts train over gloo."""
    if local is not None and hosts > local.count:
        raise ConfigError(
            f"instance_count {hosts} in local mode needs a GPU for each host, and only {local.count} of "
            f"{local.label} are visible: "
            f"the hosts would share one card (a whole model copy each; NCCL refuses two ranks on one GPU); use "
            f"instance_count <= {local.count}, or train the hosts on CPU with \"environment\": "
            f"{{\"CUDA_VISIBLE_DEVICES\": \"\"}} in the backend config")


def job_gpus(config: Any, local: Gpus | None) -> tuple[Gpus | None, str]:
    """The GPUs the job gets, or None and why they cannot be checked. Local mode with several hosts: the GPUs
    local_hosts.host_devices hands them (len // hosts each; the rest stay idle), as the job trains on those."""
    if config.mode == "local":
        if not local:
            return None, "local mode on this machine's CPU: no GPU to check"
        hosts = max(config.instance_count, 1)
        if hosts == 1:
            return local, ""
        from ade_mlflow_plugin.backend.local_hosts import host_devices  # as local_gpus: only for local mode

        shares = host_devices(hosts, [str(i) for i in range(local.count)])  # what each host's job is lent
        each = [int(share.get(contract.ENV_NUM_GPUS, 0)) for share in shares]
        return Gpus(sum(each), local.gib, f"{local.label}, {min(each)} for each of {hosts} hosts"), ""
    if config.instance_type not in GPU_MEMORY:
        return None, f"{config.instance_type} is not a GPU instance type this plugin knows: not checked"
    gpus, gib = GPU_MEMORY[config.instance_type]
    return Gpus(gpus * config.instance_count, gib, config.instance_type), ""


def _resolved(asked: str | None, fsdp: bool | None) -> str | None:
    """The value the job gets; fsdp None: not decided here (auto stays auto: the job decides)."""
    if asked is None or asked != "auto" or fsdp is None:
        return asked
    return "fsdp" if fsdp else "none"


def _arrow(asked: str | None, resolved: str | None) -> str:
    if asked is None:
        return ""
    if asked != "auto":
        return f"; sharding={asked}"
    return f"; sharding=auto -> {resolved}" if resolved != "auto" else "; sharding=auto: the job decides on its GPUs"


def plan_fit(config: Any, training: Any, local: Gpus | None = None) -> FitPlan:
    """See the module docstring. ``training``: the entry's TrainingConfig; ``local``: this machine's GPUs
    (local mode; found with nvidia-smi when not given)."""
    asked = getattr(training, "sharding", None)  # None for a config without the option
    if config.mode == "local" and local is None:
        local = local_gpus(getattr(config, "environment", None))
    if config.mode == "local":
        check_local_hosts(config.instance_count, local)
    found = find_shape(training.base_model)
    on_cpu = config.mode == "local" and local is None  # nothing to shard over: unsharded
    if found.shape is None:
        resolved = _resolved(asked, False if on_cpu else None)
        return FitPlan(f"{PREFIX}skipped: {found.source}{_arrow(asked, resolved)}", resolved, _sharding_tag(resolved))
    gpus, why = job_gpus(config, local)
    if gpus is None:
        return _unchecked(found, training, why, asked, _resolved(asked, False if on_cpu else None))
    return _decided(config, found, training, gpus, asked)


def _unchecked(found: FoundShape, training: Any, why: str, asked: str | None, resolved: str | None) -> FitPlan:
    """The estimate of the plain path, with no GPU to hold it against."""
    plain = estimate(found.shape, Workload.from_training(training, found.shape.layers))
    tags = {TAG_ESTIMATE: f"{plain.needed_gib:.1f}", TAG_FIT: "not checked", TAG_SHAPE: found.source,
            **_sharding_tag(resolved)}
    line = f"{PREFIX}{_short(training.base_model)}: {plain.line()} unsharded; {why}{_arrow(asked, resolved)}"
    return FitPlan(line, resolved, tags)


def _decided(config: Any, found: FoundShape, training: Any, gpus: Gpus, asked: str | None) -> FitPlan:
    """decide() against the job's GPUs: the line, or the refusal (ConfigError)."""
    bf16 = has_bf16(config.instance_type) if config.mode == "sagemaker" else True
    work = Workload.from_training(training, found.shape.layers, bf16=bf16)
    name, mode, local = _short(training.base_model), asked or "none", config.mode == "local"
    decision = decide_on(mode, found.shape, work, gpus.count, gpus.gib, gpus.label, name, local=local)
    recomputed, order = None, _rescue_order(config, mode, decision) if _checkpointing_is_auto(training) else []
    if order:
        recomputed, rescued = _fewest_recomputed(order, found, work, gpus, name, local)
        if decision.refused:
            decision = rescued or _binding(mode, found, work, gpus, name, local) or decision
        elif rescued is not None:  # FSDP fitted as it is, but recomputing layers on one GPU costs less here
            decision = rescued
    if decision.refused:
        raise ConfigError(decision.message)
    resolved = _resolved(asked, decision.fsdp)
    chosen = decision.sharded if decision.fsdp else decision.plain
    tags = {TAG_ESTIMATE: f"{chosen.needed_gib:.1f}", TAG_GPU: f"{gpus.gib:g}",
            TAG_FIT: "sharded" if decision.fsdp else "unsharded", TAG_SHAPE: found.source, **_sharding_tag(resolved)}
    layers = f"; checkpoint_layers=auto -> {recomputed} of {found.shape.layers}" if recomputed else ""
    if recomputed:
        tags[TAG_CHECKPOINT_LAYERS] = str(recomputed)
    return FitPlan(f"{PREFIX}{decision.message}{_arrow(asked, resolved)}{layers}", resolved, tags,
                   str(recomputed) if recomputed else None)


def _checkpointing_is_auto(training: Any) -> bool:
    return getattr(training, "checkpoint_layers", None) == "auto" and not training.gradient_checkpointing


def _rescue_order(config: Any, mode: str, decision: Any) -> list[str]:
    """checkpoint_layers=auto: the sharding modes to try with more layers recomputed, in order ([]: none).
    Over PCIe (the g families), between hosts, or on local GPUs, FSDP's all-gather of the whole base every step
    costs more than recomputing layers, so `auto` trains unsharded when any count of recomputed layers fits
    one GPU, even where FSDP fits as it is; over NVLink (one p3/p4d/p5 instance) the all-gather is cheap:
    FSDP as it is stands, and a refused plan takes the fewest recomputed layers, sharded or not."""
    fast = config.mode == "sagemaker" and config.instance_count == 1 and has_nvlink(config.instance_type)
    if mode != "auto":
        return [mode] if decision.refused else []
    if decision.refused:
        return ["auto"] if fast else ["none", "auto"]
    return ["none"] if decision.fsdp and not fast else []


def _fewest_recomputed(order: list[str], found: FoundShape, work: Workload, gpus: Gpus,
                       name: str, local: bool) -> tuple[int | None, Any]:
    """The fewest decoder layers recomputed in backward (least speed lost) with which the plan fits, trying
    each sharding mode of ``order`` in turn; (None, None) when even all of them are not enough."""
    for mode in order:
        for layers in range(work.checkpointed_layers + 1, found.shape.layers + 1):
            decision = decide_on(mode, found.shape, replace(work, checkpointed_layers=layers), gpus.count,
                                 gpus.gib, gpus.label, name, local=local)
            if not decision.refused:
                return layers, decision
    return None, None


def _binding(sharding: str, found: FoundShape, work: Workload, gpus: Gpus, name: str, local: bool) -> Any:
    """When no count of recomputed layers rescues the plan: the refusal with every layer recomputed, if its
    training fits there (the evals after it are then what cannot fit, and its line says so); else None."""
    full = decide_on(sharding, found.shape, replace(work, checkpointed_layers=found.shape.layers), gpus.count,
                     gpus.gib, gpus.label, name, local=local)
    trained = full.sharded if full.sharded is not None and sharding != "none" else full.plain
    return full if trained.needed_gib <= gpus.gib else None


def _sharding_tag(resolved: str | None) -> dict[str, str]:
    return {TAG_SHARDING: resolved} if resolved else {}


def _short(base_model: str) -> str:
    """How the line names the model: a hub or models:/ name as given, a local folder by its name."""
    return base_model if "://" in base_model or ":/" in base_model or not base_model.startswith(("/", ".", "~")) \
        else (base_model.rstrip("/").rsplit("/", 1)[-1] or base_model)
