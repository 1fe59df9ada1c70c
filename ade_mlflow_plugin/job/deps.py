"""Install what the project asks for (conda.yaml pip deps, python_env.yaml, requirements.txt) only
when the image lacks it: AWS's training images already carry torch and friends, and reinstalling them
would cost minutes of billed time (and a network-isolated job could not download them at all).

Only the standard library and pip are assumed: this runs before anything the project needs is
installed. Requirements are checked with the `packaging` distribution where the image has it (nearly
every image does); a bare image without it hands every declared requirement to pip, which skips the
satisfied ones itself ("Requirement already satisfied", no download), so no pip internals are needed.

When the request carries the wheelhouse channel (contract.WHEELHOUSE_CHANNEL, built at submission by
backend/wheelhouse.py), pip never touches an index: `pip install --no-index --find-links <channel>` into a
prefix under the job's base (contract.SITE_DIR), whose site-packages then goes on sys.path (the launcher
imports mlflow after this step) and PYTHONPATH (the entry). `--prefix` rather than `--target`: pip then
still counts what the image has (its torch) as installed, where `--target` would reinstall every dependency.
"""
from __future__ import annotations

import importlib
import os
import site
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from ade_mlflow_plugin.job import contract
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
    site_dir = contract.ContainerPaths.from_env().site_dir
    if site_dir.is_dir():  # a restart in the same job root: what the last attempt installed counts
        activate_site(site_dir)
    missing = missing_requirements(project_dir)
    if not missing or os.environ.get(ENV_SKIP_INSTALL) == "1":
        return missing
    _pip_install(missing)
    return missing


def wheelhouse(paths: contract.ContainerPaths | None = None) -> Path | None:
    """The wheelhouse channel's directory when the job has one; a request that names the channel but a job
    without its directory is an error (installing from an index instead would fail in an isolated job)."""
    paths = paths or contract.ContainerPaths.from_env()
    if paths.wheelhouse_dir.is_dir():
        return paths.wheelhouse_dir
    if contract.decode_hyperparameters(contract.read_hyperparameters(paths)).wheelhouse:
        raise RuntimeError(f"the request names the input channel '{contract.WHEELHOUSE_CHANNEL}' but "
                           f"{paths.wheelhouse_dir} is missing; check the job's InputDataConfig and resubmit")
    return None


def _offline_name(text: str) -> str:
    """A direct reference (`name @ url`) installs by name from the wheelhouse: the url is not reachable."""
    if Requirement is None or "@" not in text:
        return text
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        return text
    if requirement.url is None:
        return text
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return requirement.name + extras + (f"; {requirement.marker}" if requirement.marker else "")


def activate_site(prefix: Path) -> list[Path]:
    """Put what `pip install --prefix` wrote on this process's sys.path (.pth files included) and on the
    PYTHONPATH its children inherit. The scheme (lib/pythonX.Y/site-packages, Debian's local/..., dist-
    packages) is the interpreter's business: whatever site dir pip made is found by its name."""
    found = sorted({p for p in prefix.glob("**/*-packages") if p.name in {"site-packages", "dist-packages"}})
    for directory in found:
        site.addsitedir(str(directory))
        sys.path.remove(str(directory))
        sys.path.insert(0, str(directory))  # ahead of the image's own copies, as pip meant them to be
    paths = [str(p) for p in found] + [os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(filter(None, paths)))
    importlib.invalidate_caches()
    return found


def _pip_command(requirements: list[str]) -> tuple[list[str], dict[str, str] | None]:
    command = [sys.executable, "-m", "pip", "install", "--quiet"]
    wheels = wheelhouse()
    if wheels is None:
        return command + requirements, None
    prefix = contract.ContainerPaths.from_env().site_dir
    # The location is ours: a PIP_TARGET/PIP_PREFIX/PIP_USER of the environment would contradict --prefix.
    env = {k: v for k, v in os.environ.items() if k not in {"PIP_TARGET", "PIP_PREFIX", "PIP_USER"}}
    return command + ["--no-index", "--find-links", str(wheels), "--prefix", str(prefix),
                      *[_offline_name(r) for r in requirements]], env


def _pip_install(requirements: list[str]) -> None:
    wanted = " ".join(requirements)
    command, env = _pip_command(requirements)
    offline = env is not None
    source = f" from the wheelhouse {wheelhouse()} (no index)" if offline else ""
    print(f"launcher: installing what the image lacks{source}: {wanted}", flush=True)
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", env=env)
    if result.stdout:
        print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        last = (result.stdout.strip().splitlines() or ["no output"])[-1]
        fix = ("resubmit so the wheelhouse is rebuilt for this requirement set, or set \"wheelhouse\": \"never\""
               if offline else "fix the project's conda.yaml/python_env.yaml/requirements.txt or use an image "
               "that has them")
        raise RuntimeError(f"pip could not install {wanted} (exit {result.returncode}: {last}); {fix}")
    if offline:
        activate_site(contract.ContainerPaths.from_env().site_dir)
