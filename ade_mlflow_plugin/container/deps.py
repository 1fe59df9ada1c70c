"""Install what the project asks for (conda.yaml pip deps, python_env.yaml, requirements.txt) only
when the image lacks it: AWS's training images already carry torch and friends, and reinstalling them
would cost minutes of billed time.
"""
from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement


def declared_requirements(project_dir: Path) -> list[str]:
    found: list[str] = []
    conda = project_dir / "conda.yaml"
    if conda.is_file():
        for dep in (yaml.safe_load(conda.read_text()) or {}).get("dependencies", []):
            if isinstance(dep, dict):
                found += [str(d) for d in dep.get("pip", [])]
    python_env = project_dir / "python_env.yaml"
    if python_env.is_file():
        found += [str(d) for d in (yaml.safe_load(python_env.read_text()) or {}).get("dependencies", [])]
    requirements = project_dir / "requirements.txt"
    if requirements.is_file():
        found += [line.strip() for line in requirements.read_text().splitlines()
                  if line.strip() and not line.lstrip().startswith(("#", "-"))]
    return found


def _satisfied(text: str) -> bool:
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        return False
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
    if not missing or os.environ.get("ADE_SKIP_INSTALL") == "1":
        return missing
    print(f"launcher: installing what the image lacks: {' '.join(missing)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *missing],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    if result.stdout:
        print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        last = (result.stdout.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"pip could not install {' '.join(missing)} (exit {result.returncode}: {last}); "
                           "fix the project's conda.yaml/python_env.yaml/requirements.txt or use an image "
                           "that has them")
    return missing
