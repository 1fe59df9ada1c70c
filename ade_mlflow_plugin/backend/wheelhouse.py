"""The wheelhouse: the job's requirements as wheels, shipped as an input channel so the job installs offline.

A network-isolated job cannot reach PyPI, and every managed-spot restart would download the same packages
again. So, once per requirement set, `pip download --only-binary=:all:` for the training image's platform
(manylinux x86_64, the image's CPython) fills a cache directory named by a hash of (requirements, platform,
Python, the image's torch); a second build is a cache hit. The directory is uploaded content-addressed like
the code (key = hash of its files, skipped when present: 0 bytes the second time) and becomes the input
channel contract.WHEELHOUSE_CHANNEL; job/deps.py installs from it with `pip install --no-index`.

What goes in is what job/deps.py would install in the job: the project's declared requirements (conda.yaml,
python_env.yaml, requirements.txt) less the image's own torch family. Local mode's "image" is this interpreter,
so there the set is exactly deps.missing_requirements() and the platform is this machine's. pip itself does
the resolving; to keep it from shipping a torch that a dependency asks for (peft, accelerate), a metadata-only
stub of the image's torch is offered through --find-links and pinned by a constraint, then dropped.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ade_mlflow_plugin.backend import packaging
from ade_mlflow_plugin.backend.images import image_python_version, image_torch_version
from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.errors import AdeError, ConfigError
from ade_mlflow_plugin.job import deps

#: Where built wheelhouses are kept (default: $XDG_CACHE_HOME or ~/.cache, then ade-mlflow-plugin/wheelhouses).
ENV_CACHE_DIR = "ADE_WHEELHOUSE_CACHE"
#: manylinux2014 (pip adds 2010 and 1) and the glibc 2.17..2.31 tags: AWS's PyTorch 2.x training images run on
#: Ubuntu 20.04 (glibc 2.31) or newer, so a wheel for any of these runs there. pip does not widen
#: manylinux_2_X to older tags by itself: each is named.
MANYLINUX_PLATFORMS = ("manylinux2014_x86_64",) + tuple(f"manylinux_2_{minor}_x86_64" for minor in range(17, 32))
#: The image's own packages: never shipped (AWS's PyTorch images carry all three, built for their CUDA).
IMAGE_PACKAGES = frozenset({"torch", "torchvision", "torchaudio"})
_STUB_LABEL = "ade.image"  # a local version label no index carries: only the stub can satisfy the pin
_MANIFEST = "_ade_wheelhouse.json"
_CACHE_FORMAT = 1
_NO_WHEEL = re.compile(r"No matching distribution found for (\S+)")


@dataclass(frozen=True)
class Target:
    """The platform the wheels are for: pip download's --python-version/--platform/--implementation."""

    python_version: str
    platforms: tuple[str, ...] = ()  # empty: this machine (local mode), pip's own default
    implementation: str = "cp"

    @property
    def label(self) -> str:
        where = self.platforms[0] if self.platforms else f"this machine ({sysconfig.get_platform()})"
        return f"{where}, CPython {self.python_version}"

    def pip_args(self) -> list[str]:
        if not self.platforms:
            return []
        args = ["--python-version", self.python_version, "--implementation", self.implementation]
        for platform in self.platforms:
            args += ["--platform", platform]
        return args

    def key_fields(self) -> dict[str, Any]:
        platforms = list(self.platforms) or [f"local:{sysconfig.get_platform()}:{sys.implementation.cache_tag}"]
        return {"python": self.python_version, "platforms": platforms, "implementation": self.implementation}


@dataclass(frozen=True)
class Wheelhouse:
    """A built (or cached) wheelhouse directory."""

    directory: Path
    wheels: tuple[Path, ...]
    digest: str  # the content address: packaging.tree_digest of the wheels, as for data channels
    size: int
    build_s: float
    cached: bool

    def files(self) -> list[packaging.PackedFile]:
        return [packaging.PackedFile(w.name, w) for w in self.wheels]


@dataclass(frozen=True)
class Shipped:
    """The wheelhouse as the request names it, and what this submission sent of it."""

    uri: str
    wheelhouse: Wheelhouse
    bytes_uploaded: int


def wanted(config: CloudTrainingConfig) -> bool:
    """auto: for network-isolated jobs; always: for every job (no download on a spot restart); never."""
    return config.wheelhouse == "always" or (config.wheelhouse == "auto" and config.enable_network_isolation)


def target_for(config: CloudTrainingConfig) -> Target:
    if config.mode == "local":
        return Target(image_python_version(config))
    return Target(image_python_version(config), MANYLINUX_PLATFORMS)


def _name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else requirement


def _image_torch_satisfies(requirement: str, image_torch: str | None, python_version: str) -> bool:
    """Whether the image's torch meets a declared torch requirement. A framework_version like "2.5" names a
    release series (AWS's 2.5 images carry 2.5.x): any 2.5.x that satisfies it counts."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        parsed = Requirement(requirement)
    except InvalidRequirement:
        return True  # pip names what is wrong with it in the job, as without a wheelhouse
    image = {"sys_platform": "linux", "platform_system": "Linux", "python_version": python_version}
    if parsed.marker is not None and not parsed.marker.evaluate(image):
        return True  # not for the image's platform: the job skips it
    specifier = parsed.specifier
    if image_torch is None:
        return False
    release = image_torch.split("+", 1)[0]
    candidates = [release] if release.count(".") >= 2 else [f"{release}.{patch}" for patch in range(10)]
    return any(specifier.contains(c, prereleases=True) for c in candidates)


def _check_image_torch(config: CloudTrainingConfig, declared: list[str]) -> None:
    """The wheelhouse never ships torch: a project that needs another torch than the image's is refused
    here, rather than failing offline in the job."""
    image_torch = image_torch_version(config)
    for requirement in declared:
        if _name(requirement) == "torch" and not _image_torch_satisfies(requirement, image_torch,
                                                                          image_python_version(config)):
            where = "this interpreter" if config.mode == "local" else "the training image (framework_version)"
            has = f"torch {image_torch}" if image_torch else "no torch"
            fix = ("install a matching torch here" if config.mode == "local"
                   else "set framework_version (or image_uri) to an image with a matching torch")
            raise ConfigError(f"backend config 'wheelhouse': the project asks for '{requirement}' but {where} "
                              f"has {has}, and the wheelhouse never ships torch; {fix}, relax the requirement, "
                              "or set \"wheelhouse\": \"never\"")


def requirement_set(config: CloudTrainingConfig, project_dir: Path) -> list[str]:
    """What job/deps.py would install in the job, less the image's own torch family."""
    if config.mode == "local":
        found = deps.missing_requirements(project_dir)  # the job runs this very interpreter
    else:
        found = deps.declared_requirements(project_dir)
        yaml_env = any((project_dir / name).is_file() for name in ("conda.yaml", "python_env.yaml"))
        if yaml_env and "pyyaml" not in {_name(r) for r in found}:
            found.append("pyyaml")  # deps.py reads those files with it; a slim image may lack it
    _check_image_torch(config, found)
    return [r for r in dict.fromkeys(found) if _name(r) not in IMAGE_PACKAGES]


def cache_root() -> Path:
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ade-mlflow-plugin" / "wheelhouses"


def cache_key(requirements: list[str], target: Target, image_torch: str | None) -> str:
    fields = {"format": _CACHE_FORMAT, "requirements": sorted(requirements), "image_torch": image_torch,
              **target.key_fields()}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def _stub_version(image_torch: str) -> str:
    return image_torch.split("+", 1)[0] + "+" + _STUB_LABEL


def write_torch_stub(dest: Path, version: str) -> Path:
    """A metadata-only wheel of the image's torch: it satisfies a dependency's `torch>=...` while resolving,
    so pip neither downloads a multi-GB torch nor its CUDA libraries. It never reaches the wheelhouse."""
    dist = f"torch-{version}.dist-info"
    files = {f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: ade-mlflow-plugin\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()] + [f"{dist}/RECORD,,"]
    path = dest / f"torch-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in files.items():
            wheel.writestr(member, data)
        wheel.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return path


def _failure(output: str, target: Target) -> AdeError:
    """pip's refusal as one line: a requirement with no wheel for the platform is the user's to fix."""
    missing = _NO_WHEEL.findall(output)
    if missing:
        requirement = missing[-1]
        return ConfigError(
            f"backend config 'wheelhouse': no wheel of '{requirement}' for {target.label} (the job installs "
            f"offline, from wheels only); pin a version of {_name(requirement)} that has a wheel for that "
            "platform, or set \"wheelhouse\": \"never\"")
    errors = [line for line in output.splitlines() if line.startswith("ERROR:")] or output.strip().splitlines()
    last = " ".join((errors or ["no output"])[-1].split())
    return AdeError(f"building the wheelhouse failed (pip download: {last}); check the requirements and that "
                    "pip can reach its index (PIP_INDEX_URL), or set \"wheelhouse\": \"never\"")


def _download(requirements: list[str], target: Target, image_torch: str | None, dest: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--disable-pip-version-check",
               "--no-input", "--dest", str(dest), *target.pip_args()]
    with tempfile.TemporaryDirectory(prefix="ade-torch-stub-") as stub_dir:
        if image_torch:
            version = _stub_version(image_torch)
            write_torch_stub(Path(stub_dir), version)
            constraints = Path(stub_dir) / "constraints.txt"
            constraints.write_text(f"torch=={version}\n")
            command += ["--find-links", stub_dir, "--constraint", str(constraints)]
        result = subprocess.run(command + requirements, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
    if result.returncode != 0:
        raise _failure(result.stdout, target)
    for stub in dest.glob(f"torch-*{_STUB_LABEL}*.whl"):
        stub.unlink()


def _wheels(directory: Path) -> tuple[Path, ...]:
    return tuple(sorted(directory.glob("*.whl")))


def _load(directory: Path, cached: bool) -> Wheelhouse:
    manifest = json.loads((directory / _MANIFEST).read_text())
    wheels = _wheels(directory)
    return Wheelhouse(directory, wheels, manifest["digest"], sum(w.stat().st_size for w in wheels),
                      manifest["build_s"], cached)


def build(requirements: list[str], target: Target, image_torch: str | None = None,
          root: Path | None = None) -> Wheelhouse:
    """The wheelhouse for a requirement set: from the cache when built before, else pip download into it."""
    root = root or cache_root()
    directory = root / cache_key(requirements, target, image_torch)
    if (directory / _MANIFEST).is_file():
        return _load(directory, cached=True)
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix=f"{directory.name}.", dir=root))
    try:
        _download(requirements, target, image_torch, scratch)
        digest = packaging.tree_digest([packaging.PackedFile(w.name, w) for w in _wheels(scratch)])
        manifest = {"requirements": requirements, "target": target.key_fields(), "image_torch": image_torch,
                    "digest": digest, "build_s": round(time.monotonic() - started, 3)}
        (scratch / _MANIFEST).write_text(json.dumps(manifest, indent=1))
        try:
            scratch.rename(directory)  # the manifest inside: a directory that exists is complete
        except OSError:
            if not (directory / _MANIFEST).is_file():  # not another submission that finished first
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _load(directory, cached=False)


def upload(house: Wheelhouse, store: Any) -> tuple[str, int]:
    """(channel URI, bytes sent) under `wheelhouse/<digest>/`: nothing is sent when it is there already."""
    digest = house.digest
    if isinstance(store, packaging.LocalStore):
        sent = sum(store.put_file(f"wheelhouse/{digest}/{w.name}", w).bytes_uploaded for w in house.wheels)
        return (store.root / "wheelhouse" / digest).resolve().as_uri() + "/", sent
    shipped = store.put_tree(f"wheelhouse/{digest}", house.files(), digest)
    return shipped.uri, shipped.bytes_uploaded


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count / 1e3:.1f} kB"


def summary(shipped: Shipped) -> str:
    house = shipped.wheelhouse
    built = "cached" if house.cached else f"built in {house.build_s:.1f} s"
    count = len(house.wheels)
    return (f"wheelhouse: {count} wheel{'' if count == 1 else 's'}, {_size(house.size)}, {built}; uploaded "
            f"{shipped.bytes_uploaded} bytes ({shipped.uri})")


def prepare(config: CloudTrainingConfig, project_dir: Path) -> Wheelhouse | None:
    """Build (or find) the job's wheelhouse before anything is submitted; None when it is not wanted or the
    image already has every requirement."""
    if not wanted(config):
        return None
    requirements = requirement_set(config, project_dir)
    if not requirements:
        return None
    return build(requirements, target_for(config), image_torch_version(config))


def ship(house: Wheelhouse, store: Any, console: TextIO) -> Shipped:
    uri, sent = upload(house, store)
    shipped = Shipped(uri, house, sent)
    console.write(summary(shipped) + "\n")
    return shipped
