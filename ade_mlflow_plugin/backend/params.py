"""Check the entry point and `-P` params against the MLproject, as MLflow does not for plugin backends.

MLflow hands a plugin every value as a string and checks nothing (unknown `-P`, unknown `-e`, a
`float` that is not a number all arrive). The training entries (`main`, `train`) are checked with
TrainingConfig's own parsers and combination checks, every training parameter, declared in the
MLproject or passed undeclared with `-P`: a bad value fails here, not inside the paid job. Each
problem is one line naming the param and the fix, raised before the run is created or AWS is called.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ade_mlflow_plugin.config.dataset import DatasetConfig
from ade_mlflow_plugin.config.training import STYLE, EvaluateConfig, TrainingConfig
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.options import from_mapping, number, options_of, parse_as, suggest

REMOTE_PATH_SCHEMES = ("s3://", "models:/", "runs:/")
#: The project's entry scripts and the config whose fields each one parses (all of them, from the fields).
_SCRIPT = re.compile(r"entrypoints/(\w+)\.py\b")
_ENTRY_CONFIGS: dict[str, type] = {"main": TrainingConfig, "train": TrainingConfig,
                                   "prepare_data": DatasetConfig, "evaluate": EvaluateConfig}
#: Entries that take any of their config's options undeclared (MLflow appends an undeclared -P as
#: `--name value`): the training entries, whose long tail of speed and bookkeeping options the
#: MLproject does not list.
_OPEN_ENTRIES = {"main", "train"}
#: Training options whose value is data to ship: passed undeclared (main's `-P dataset=`) they travel as
#: input channels like a declared `path` param, not as a string naming a file on this machine.
_DATA_OPTIONS = ("dataset",)


@dataclass(frozen=True)
class ResolvedParams:
    """Params split by how they travel: plain values, and path params that become channels."""

    values: dict[str, str]
    paths: dict[str, str]  # param -> local path (absolute) or a remote URI
    training: Any = None  # the training entries' parsed TrainingConfig (the fit check reads it)

    def resolve_option(self, name: str, value: str) -> None:
        """An option the backend decided for the job (sharding=auto -> fsdp): the job gets the decided value,
        declared in the MLproject or not (MLflow appends an undeclared one as --name value)."""
        self.values[name] = value


def entry_point_names(project_dir: Path) -> list[str]:
    """The entry points the MLproject declares. It is a YAML file of the project: read it as MLflow
    finds it (the first file named MLproject in any case), rather than through the Project's private
    entry-point table."""
    for path in sorted(Path(project_dir).iterdir()):
        if path.name.lower() == "mlproject" and path.is_file():
            data = yaml.safe_load(path.read_text()) or {}
            return sorted(data.get("entry_points") or {})
    return []


def _entry_point(project: Any, entry_point: str, project_dir: Path) -> Any:
    names = entry_point_names(project_dir)
    if entry_point in names:
        return project.get_entry_point(entry_point)
    if entry_point.endswith((".py", ".sh")):
        if not (project_dir / entry_point).is_file():
            raise ConfigError(f"entry point '{entry_point}': no such script in {project_dir}; "
                              f"use one of {', '.join(names)}")
        return project.get_entry_point(entry_point)
    hint = suggest(entry_point, names)
    fix = f"did you mean '{hint}'?" if hint else f"use one of: {', '.join(names) or '(none)'}"
    raise ConfigError(f"entry point '{entry_point}' is not in the MLproject ({fix})")


def _check_path(name: str, value: str, project_dir: Path) -> str:
    if value.startswith(REMOTE_PATH_SCHEMES):
        return value
    if "://" in value:
        raise ConfigError(f"parameter '{name}': '{value}' is not a local path or an s3:// or models:/ URI")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (Path.cwd() / path) if (Path.cwd() / path).exists() else project_dir / path
    if not path.exists():
        raise ConfigError(f"parameter '{name}': path '{value}' does not exist; pass an existing file or "
                          "directory, or an s3:// URI")
    return str(path.resolve())


def _entry_config(entry: Any) -> tuple[type | None, set[str]]:
    """The config an entry's script parses, and the options it accepts undeclared."""
    found = _SCRIPT.search(str(getattr(entry, "command", "")))
    script = found.group(1) if found else ""
    config = _ENTRY_CONFIGS.get(script)
    open_options = set(options_of(config)) if config is not None and script in _OPEN_ENTRIES else set()
    return config, open_options


def _undeclared(entry: Any, entry_point: str, params: dict[str, Any], training: set[str]) -> dict[str, str]:
    """The undeclared params the entry accepts; any other is a one-line error."""
    declared = entry.parameters
    extra: dict[str, str] = {}
    for name in sorted(set(params) - set(declared)):
        if name not in training:
            hint = suggest(name, {*declared, *training})
            fix = f"did you mean '{hint}'?" if hint else f"declared: {', '.join(sorted(declared)) or '(none)'}"
            raise ConfigError(f"parameter '{name}' is not declared by entry point '{entry_point}' ({fix})")
        extra[name] = str(params[name])
    return extra


def _declared_value(entry_point: str, name: str, spec: Any, params: dict[str, Any]) -> str:
    raw = params.get(name, spec.default)
    if raw is None:
        raise ConfigError(f"parameter '{name}' of entry point '{entry_point}' has no default: pass -P {name}=...")
    return str(raw)


def _split(name: str, value: str, spec: Any, project_dir: Path, resolved: ResolvedParams) -> None:
    """Route one declared param to the values or to the paths (channels)."""
    if spec.type == "path":
        resolved.paths[name] = _check_path(name, value, project_dir)
    elif value.startswith("models:/"):
        # A registered model as input (base_model=models:/NAME@ALIAS): shipped as a channel.
        resolved.paths[name] = value
    elif spec.type == "uri" and "://" not in value and ":/" not in value and not Path(value).exists():
        raise ConfigError(f"parameter '{name}': got '{value}', expected a URI such as s3://bucket/key")
    else:
        resolved.values[name] = value


def resolve_params(project: Any, entry_point: str, params: dict[str, Any], project_dir: Path) -> ResolvedParams:
    """Validate ``params`` for ``entry_point`` and split plain values from path params."""
    project_dir = Path(project_dir)
    entry = _entry_point(project, entry_point, project_dir)
    config, training = _entry_config(entry)
    extra = _undeclared(entry, entry_point, params, training)
    resolved = ResolvedParams({k: v for k, v in extra.items() if k not in _DATA_OPTIONS},
                              {k: _check_path(k, v, project_dir) for k, v in extra.items() if k in _DATA_OPTIONS})
    given: dict[str, str] = dict(extra)
    for name, spec in entry.parameters.items():
        given[name] = value = _declared_value(entry_point, name, spec, params)
        if spec.type == "float" and config is None:
            parse_as(number, name, value, STYLE)
        _split(name, value, spec, project_dir, resolved)
    if config is not None:
        # Every value the entry's script parses, with the job's own parsers and combination checks.
        fields = options_of(config)
        parsed = from_mapping(config, {k: v for k, v in given.items() if k in fields})
    if config is TrainingConfig:
        _check_datasets(resolved)
        return ResolvedParams(resolved.values, resolved.paths, training=parsed)
    return resolved


def _check_datasets(resolved: ResolvedParams) -> None:
    """A local `dataset` of the user's own (not a folder prepare-data wrote) is read here: wrong columns or
    no rows is one line before anything is submitted, not a failed job. s3:// and models:/ data is checked
    in the job, where it lands."""
    # The core's reader, the one the job uses (pyarrow and json only; imported lazily, like ship_scan).
    from ade_mlflow_plugin.dataset_format import inspect, is_prepared

    for name in _DATA_OPTIONS:
        path = resolved.paths.get(name)
        if path and not path.startswith(REMOTE_PATH_SCHEMES) and not is_prepared(path):
            inspect(path, name)
