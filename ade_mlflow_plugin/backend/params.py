"""Check the entry point and `-P` params against the MLproject, as MLflow does not for plugin backends.

MLflow hands a plugin every value as a string and checks nothing (unknown `-P`, unknown `-e`, a
`float` that is not a number all arrive). Each problem here becomes one line naming the param and
the fix, raised before the run is created or AWS is called.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ade_mlflow_plugin.errors import ConfigError

REMOTE_PATH_SCHEMES = ("s3://", "models:/", "runs:/")
#: Entries whose script parses every TrainingConfig option (training/entry.py config_parser).
_TRAINING_SCRIPT = re.compile(r"entrypoints/(main|train)\.py\b")


@dataclass(frozen=True)
class ResolvedParams:
    """Params split by how they travel: plain values, and path params that become channels."""

    values: dict[str, str]
    paths: dict[str, str]  # param -> local path (absolute) or a remote URI


def _entry_point(project: Any, entry_point: str, project_dir: Path) -> Any:
    names = sorted(project._entry_points or {})
    if entry_point in (project._entry_points or {}):
        return project._entry_points[entry_point]
    if entry_point.endswith((".py", ".sh")):
        if not (project_dir / entry_point).is_file():
            raise ConfigError(f"entry point '{entry_point}': no such script in {project_dir}; "
                              f"use one of {', '.join(names)}")
        return project.get_entry_point(entry_point)
    hint = difflib.get_close_matches(entry_point, names, n=1)
    fix = f"did you mean '{hint[0]}'?" if hint else f"use one of: {', '.join(names) or '(none)'}"
    raise ConfigError(f"entry point '{entry_point}' is not in the MLproject ({fix})")


def _check_float(name: str, value: str) -> None:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"parameter '{name}': got '{value}', expected a number (-P {name}=0.5)") from None
    if not math.isfinite(number):
        raise ConfigError(f"parameter '{name}': got '{value}', expected a finite number")


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


def _training_options(entry: Any) -> dict[str, Any]:
    """Options an entry takes beyond its declared params: every TrainingConfig field, for the training
    entries (their scripts parse them all; MLflow appends an undeclared -P as `--name value`)."""
    if not _TRAINING_SCRIPT.search(str(getattr(entry, "command", ""))):
        return {}
    from ade_mlflow_plugin.training.config import PARSERS  # no torch: config checks only

    return PARSERS


def _undeclared(entry: Any, entry_point: str, params: dict[str, Any]) -> dict[str, str]:
    """The undeclared params the entry accepts (checked); any other is a one-line error."""
    declared, options = entry.parameters, _training_options(entry)
    extra: dict[str, str] = {}
    for name in sorted(set(params) - set(declared)):
        if name not in options:
            known = sorted({*declared, *options})
            hint = difflib.get_close_matches(name, known, n=1)
            fix = f"did you mean '{hint[0]}'?" if hint else f"declared: {', '.join(sorted(declared)) or '(none)'}"
            raise ConfigError(f"parameter '{name}' is not declared by entry point '{entry_point}' ({fix})")
        options[name](name, str(params[name]))  # raises ConfigError naming the param and the fix
        extra[name] = str(params[name])
    return extra


def resolve_params(project: Any, entry_point: str, params: dict[str, Any], project_dir: Path) -> ResolvedParams:
    """Validate ``params`` for ``entry_point`` and split plain values from path params."""
    entry = _entry_point(project, entry_point, Path(project_dir))
    declared = entry.parameters
    extra = _undeclared(entry, entry_point, params)
    values: dict[str, str] = dict(extra)
    paths: dict[str, str] = {}
    for name, spec in declared.items():
        raw = params.get(name, spec.default)
        if raw is None:
            raise ConfigError(f"parameter '{name}' of entry point '{entry_point}' has no default: "
                              f"pass -P {name}=...")
        value = str(raw)
        if spec.type == "float":
            _check_float(name, value)
        if spec.type == "path":
            paths[name] = _check_path(name, value, Path(project_dir))
        elif value.startswith("models:/"):
            # A registered model as input (base_model=models:/NAME@ALIAS): shipped as a channel.
            paths[name] = value
        elif spec.type == "uri" and "://" not in value and ":/" not in value and not Path(value).exists():
            raise ConfigError(f"parameter '{name}': got '{value}', expected a URI such as s3://bucket/key")
        else:
            values[name] = value
    return ResolvedParams(values, paths)
