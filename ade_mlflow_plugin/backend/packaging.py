"""Project tarball and input channels, content-addressed so unchanged inputs upload nothing.

The tarball is deterministic (sorted entries, fixed mtimes, owners and modes, gzip without a
timestamp), so its sha256 names its key: a second submission of an unchanged project finds the key
and uploads 0 bytes. It holds the MLflow project, the `ade_entry.py` shim and `_ade_bundle/` (this
package's own source), as docs/job-contract.md describes.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pathspec

from ade_mlflow_plugin.errors import NOT_FOUND, ConfigError, aws_error_code
from ade_mlflow_plugin.gitignore import IgnoreRules
from ade_mlflow_plugin.job import contract
from ade_mlflow_plugin.job.contract import BUNDLE_DIR, SHIM_NAME, channel_name

# Directories never shipped: VCS, MLflow's local stores, caches, virtualenvs, our own job roots.
EXCLUDED_DIRS = {
    ".git", ".hg", ".svn", "mlruns", "mlartifacts", "__pycache__", ".pytest_cache", ".mypy_cache",
    ".ruff_cache", ".tox", ".nox", ".venv", "venv", ".ade", ".ipynb_checkpoints", ".idea", ".vscode",
    "node_modules", ".aws", ".ssh", ".gnupg", ".eggs",
}
# Credential files are never uploaded, whatever .gitignore says.
CREDENTIAL_PATTERNS = pathspec.GitIgnoreSpec.from_lines([
    ".env", ".env.*", "*.pem", "*.key", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", ".netrc",
    ".pgpass", "*.p12", "*.pfx", "*.keystore", "*.jks", ".aws/", "credentials.json",
    ".git-credentials", ".npmrc", ".pypirc", "*.egg-info/",
])
SHIM_SOURCE = (
    "import os, sys\n"
    f"sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), {BUNDLE_DIR!r}))\n"
    f"from {contract.LAUNCHER_MODULE} import main\n"
    "sys.exit(main())\n"
)
_FIXED_MTIME = 315532800  # 1980-01-01, the zip epoch: any fixed value makes the archive reproducible


@dataclass(frozen=True)
class PackedFile:
    """A file to ship: its path inside the archive/channel and on disk."""

    arcname: str
    source: Path


@dataclass(frozen=True)
class Artifact:
    """A built tarball."""

    path: Path
    sha256: str
    size: int
    file_count: int


@dataclass(frozen=True)
class Upload:
    """Where content landed and how many bytes this call actually sent."""

    uri: str
    bytes_uploaded: int
    digest: str


def _is_venv(path: Path) -> bool:
    return (path / "pyvenv.cfg").is_file() or (path / "conda-meta").is_dir()


def collect_files(root: Path, prefix: str = "") -> list[PackedFile]:
    """Files under ``root`` that may be shipped, sorted by archive name.

    Symlinks are followed (an installed package's project/ folder links to its files) with a guard
    against cycles; excluded dirs, virtualenvs, credentials and what git ignores (every .gitignore on the
    way down and .git/info/exclude) are left out.
    """
    root = Path(root)
    found: list[PackedFile] = []

    def walk(directory: Path, rel: str, ancestors: frozenset[Path], ignore: IgnoreRules) -> None:
        real = directory.resolve()
        if real in ancestors:
            return  # a symlink back up the tree: a cycle, not content
        ancestors = ancestors | {real}
        ignore = ignore.descend(directory, rel) if rel else ignore
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            rel_path = f"{rel}{entry.name}"
            path = Path(entry.path)
            if entry.is_dir():
                dir_rel = rel_path + "/"
                if (entry.name in EXCLUDED_DIRS or _is_venv(path) or CREDENTIAL_PATTERNS.match_file(dir_rel)
                        or ignore.ignored(dir_rel, is_dir=True)):
                    continue
                walk(path, dir_rel, ancestors, ignore)
            elif entry.is_file():
                if CREDENTIAL_PATTERNS.match_file(rel_path) or ignore.ignored(rel_path, is_dir=False):
                    continue
                found.append(PackedFile(prefix + rel_path, path))

    walk(root, "", frozenset(), IgnoreRules.at_root(root))
    return found


def bundle_files() -> list[PackedFile]:
    """This package's own source, shipped as _ade_bundle/ so the image needs no plugin install."""
    package_root = Path(__file__).resolve().parent.parent
    files = []
    for packed in collect_files(package_root, prefix=f"{BUNDLE_DIR}/ade_mlflow_plugin/"):
        relative = packed.arcname.split("ade_mlflow_plugin/", 1)[1]
        if relative.startswith("project/"):
            continue  # the project itself travels at the archive root
        if packed.source.suffix in {".py", ".typed", ".md", ".json"}:
            files.append(packed)
    return files


def _tarinfo(name: str, size: int, executable: bool) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = _FIXED_MTIME
    info.mode = 0o755 if executable else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tarball(files: Iterable[PackedFile], extra: dict[str, bytes], dest: Path) -> Artifact:
    """Write a reproducible tar.gz of ``files`` plus in-memory ``extra`` members."""
    members = {f.arcname: f for f in files}
    names = sorted(set(members) | set(extra))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            if name in extra:
                data = extra[name]
                tar.addfile(_tarinfo(name, len(data), False), io.BytesIO(data))
                continue
            source = members[name].source
            with open(source, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                tar.addfile(_tarinfo(name, size, os.access(source, os.X_OK)), handle)
    payload = gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(payload)
    return Artifact(dest, hashlib.sha256(payload).hexdigest(), len(payload), len(names))


def build_project_tarball(project_dir: Path, dest_dir: Path, *, with_bundle: bool = True) -> Artifact:
    """The job's code archive: project + shim + bundle, named by nothing yet (see Artifact.sha256)."""
    project_dir = Path(project_dir)
    if not (project_dir / "MLproject").is_file():
        raise ConfigError(f"no MLproject file in {project_dir}: run from an MLflow project directory")
    files = collect_files(project_dir)
    extra: dict[str, bytes] = {}
    if with_bundle:
        files = [f for f in files if not f.arcname.startswith((f"{BUNDLE_DIR}/", SHIM_NAME))]
        files += bundle_files()
        extra[SHIM_NAME] = SHIM_SOURCE.encode()
    return write_tarball(files, extra, Path(dest_dir) / "project.tar.gz")


def tree_digest(files: Iterable[PackedFile]) -> str:
    """sha256 over (name, content hash) of every file: a directory channel's content address."""
    outer = hashlib.sha256()
    for packed in sorted(files, key=lambda f: f.arcname):
        inner = hashlib.sha256()
        with open(packed.source, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                inner.update(block)
        outer.update(f"{packed.arcname}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


class S3Store:
    """Content-addressed uploads to s3://bucket/prefix/..., encrypted at rest, skipped when present."""

    MARKER = "_ade_complete.json"

    def __init__(self, s3_client: Any, bucket: str, prefix: str, kms_key_id: str | None = None) -> None:
        self.s3, self.bucket, self.prefix, self.kms_key_id = s3_client, bucket, prefix.strip("/"), kms_key_id

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _extra_args(self) -> dict[str, str]:
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        return {"ServerSideEncryption": "AES256"}

    def _exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
            return True
        except Exception as exc:  # botocore's ClientError; the caller's aws_call translates the rest
            if aws_error_code(exc) in NOT_FOUND:
                return False
            raise

    def put_file(self, key: str, source: Path) -> Upload:
        full = self._key(key)
        uri = f"s3://{self.bucket}/{full}"
        digest = key.rsplit("/", 1)[-1].split(".")[0]
        if self._exists(full):
            return Upload(uri, 0, digest)
        self.s3.upload_file(str(source), self.bucket, full, ExtraArgs=self._extra_args())
        return Upload(uri, source.stat().st_size, digest)

    def put_tree(self, key: str, files: list[PackedFile], digest: str) -> Upload:
        full = self._key(key)
        uri = f"s3://{self.bucket}/{full}/"
        # The marker is written last, so a half-finished upload is redone rather than trusted.
        if self._exists(f"{full}/{self.MARKER}"):
            return Upload(uri, 0, digest)
        sent = 0
        for packed in files:
            self.s3.upload_file(str(packed.source), self.bucket, f"{full}/{packed.arcname}",
                                ExtraArgs=self._extra_args())
            sent += packed.source.stat().st_size
        manifest = json.dumps({"digest": digest, "files": len(files)}).encode()
        self.s3.put_object(Bucket=self.bucket, Key=f"{full}/{self.MARKER}", Body=manifest,
                           **self._extra_args())
        return Upload(uri, sent, digest)


class LocalStore:
    """Local mode: code archives are cached under a directory; path channels are read in place."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put_file(self, key: str, source: Path) -> Upload:
        target = self.root / key
        digest = key.rsplit("/", 1)[-1].split(".")[0]
        if target.is_file():
            return Upload(target.resolve().as_uri(), 0, digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".partial")
        tmp.write_bytes(source.read_bytes())
        os.replace(tmp, target)
        return Upload(target.resolve().as_uri(), target.stat().st_size, digest)


def local_channel(param: str, path: str):  # -> spec.Channel
    """Local mode: a path param is read in place through a file:// URI."""
    from ade_mlflow_plugin.backend.spec import Channel

    source = Path(path)
    if source.is_file():
        return Channel(channel_name(param), source.parent.resolve().as_uri() + "/", source.name)
    return Channel(channel_name(param), source.resolve().as_uri() + "/")


def s3_channel(param: str, path: str, store: S3Store) -> tuple[Any, int]:
    """SageMaker mode: upload a local path param under a content address (0 bytes when present)."""
    from ade_mlflow_plugin.backend.spec import Channel

    if path.startswith("s3://"):
        return Channel(channel_name(param), path), 0
    source = Path(path)
    if source.is_file():
        files = [PackedFile(source.name, source)]
        file_name: str | None = source.name
    else:
        files = collect_files(source)
        file_name = None
        if not files:
            raise ConfigError(f"parameter '{param}': directory '{path}' has no files to ship "
                              "(everything is ignored or it is empty)")
    digest = tree_digest(files)
    upload = store.put_tree(f"data/{digest}", files, digest)
    return Channel(channel_name(param), upload.uri, file_name), upload.bytes_uploaded
