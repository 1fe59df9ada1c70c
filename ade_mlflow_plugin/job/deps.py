"""Install what the project asks for (conda.yaml pip deps, python_env.yaml, requirements.txt) only
when the image lacks it: AWS's training images already carry torch and friends, and reinstalling them
would cost minutes of billed time (and a network-isolated job could not download them at all).

Only the standard library and pip are assumed: this runs before anything the project needs is
installed. Requirements are checked with the `packaging` distribution where the image has it (nearly
every image does); a bare image without it hands every declared requirement to pip, which skips the
satisfied ones itself ("Requirement already satisfied", no download), so no pip internals are needed.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from ade_mlflow_plugin.job.contract import ENV_SKIP_INSTALL

try:
    from packaging.requirements import InvalidRequirement, Requirement
except ImportError:  # a bare image: pip will tell satisfied requirements apart (see the docstring)
    Requirement = None  # type: ignore[assignment,misc]


def _load_yaml(path: Path) -> Any:
    """Parse a project env file; an image without PyYAML gets it first (it is needed to read the file)."""
    try:
        import yaml
    except ImportError:
        _pip_install(["pyyaml"])
        importlib.invalidate_caches()
        import yaml
    return yaml.safe_load(path.read_text()) or {}


def _expand(lines: list[str], base: Path, seen: set[Path]) -> list[str]:
    """Requirement lines, following `-r other.txt` (relative to base) and dropping comments and options."""
    found: list[str] = []
    for raw in lines:
        line = raw.split(" #", 1)[0].strip()
        if line.startswith(("-r ", "--requirement ")):
            found += _requirements_file(base / line.split(None, 1)[1].strip(), seen)
        elif line and not line.startswith(("#", "-")):
            found.append(line)
    return found


def _requirements_file(path: Path, seen: set[Path]) -> list[str]:
    if path.resolve() in seen or not path.is_file():
        return []
    seen.add(path.resolve())
    return _expand(path.read_text().splitlines(), path.parent, seen)


def declared_requirements(project_dir: Path) -> list[str]:
    """pip requirements of conda.yaml, python_env.yaml and requirements.txt, in that order, once each."""
    found: list[str] = []
    seen: set[Path] = set()
    conda = project_dir / "conda.yaml"
    if conda.is_file():
        for dep in _load_yaml(conda).get("dependencies", []):
            if isinstance(dep, dict):
                found += _expand([str(d) for d in dep.get("pip", [])], project_dir, seen)
    python_env = project_dir / "python_env.yaml"
    if python_env.is_file():
        found += _expand([str(d) for d in _load_yaml(python_env).get("dependencies", [])], project_dir, seen)
    found += _requirements_file(project_dir / "requirements.txt", seen)
    return list(dict.fromkeys(found))


def _satisfied(text: str) -> bool:
    if Requirement is None:
        return False  # cannot tell here: pip decides
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        return False  # pip will say what is wrong with it
    if requirement.marker is not None and not requirement.marker.evaluate():
        return True
    try:
        installed = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        return False
    return requirement.specifier.contains(installed, prereleases=True)


def missing_requirements(project_dir: Path) -> list[str]:
    return [req for req in declared_requirements(project_dir) if not _satisfied(req)]


def install_missing_requirements(project_dir: Path) -> list[str]:
    """pip-install the unsatisfied requirements; returns them. ADE_SKIP_INSTALL=1 turns this off."""
    missing = missing_requirements(project_dir)
    if not missing or os.environ.get(ENV_SKIP_INSTALL) == "1":
        return missing
    _pip_install(missing)
    return missing


def _pip_install(requirements: list[str]) -> None:
    wanted = " ".join(requirements)
    print(f"launcher: installing what the image lacks: {wanted}", flush=True)
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *requirements],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    if result.stdout:
        print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        last = (result.stdout.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"pip could not install {wanted} (exit {result.returncode}: {last}); fix the "
                           "project's conda.yaml/python_env.yaml/requirements.txt or use an image that has them")
