"""Project tarball and input channels, content-addressed so unchanged inputs upload nothing.

The tarball is deterministic (sorted entries, fixed mtimes, owners and modes, gzip without a
timestamp), so its sha256 names its key: a second submission of an unchanged project finds the key
and uploads 0 bytes. It holds the MLflow project, the `ade_entry.py` shim and `_ade_bundle/` (this
package's own source), as docs/job-contract.md describes.

Nothing from outside the project ships: links leading out of it are left out (with a warning), credential
files are left out by name, and every project file is scanned for secrets before the upload
(ship_scan.py), which refuses the upload on a finding the user did not allow.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import pathspec

from ade_mlflow_plugin.backend.ship_scan import ScanCache, check_shipped_files
from ade_mlflow_plugin.errors import NOT_FOUND, ConfigError, aws_error_code
from ade_mlflow_plugin.gitignore import IgnoreRules
from ade_mlflow_plugin.job import contract
from ade_mlflow_plugin.job.contract import BUNDLE_DIR, SHIM_NAME, channel_name

logger = logging.getLogger(__name__)
#: This package's own MLflow project (launch.PROJECT_DIR).
OWN_PROJECT = Path(__file__).resolve().parent.parent / "project"
#: A project's own list of what not to ship (gitignore syntax), beside its .gitignore.
SHIP_IGNORE_FILE = ".adeignore"
# Directories never shipped: VCS, MLflow's local stores, caches, virtualenvs, our own job roots.
EXCLUDED_DIRS = {
    ".git", ".hg", ".svn", "mlruns", "mlartifacts", "__pycache__", ".pytest_cache", ".mypy_cache",
    ".ruff_cache", ".tox", ".nox", ".venv", "venv", ".ade", ".ipynb_checkpoints", ".idea", ".vscode",
    "node_modules", ".aws", ".ssh", ".gnupg", ".eggs",
}
# Credential files are never uploaded, whatever .gitignore says: keys and certificates, keystores,
# package-index, VCS and database logins, container registry auth, cloud service-account and credential
# files, Terraform state (it holds every secret the infrastructure was given) and kubeconfigs. Content the
# names miss is caught by the secret scan (ship_scan.py).
CREDENTIAL_PATTERNS = pathspec.GitIgnoreSpec.from_lines([
    # keys, certificates with keys, keystores
    "*.pem", "*.key", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "*.ppk", "*.p12", "*.pfx", "*.pkcs12",
    "*.keystore", "*.jks", "*.bks", "*.kdbx", "secring.*", ".gnupg/", ".ssh/",
    # dotenv files and logins of tools: pip/twine, npm, git, netrc, postgres, mysql, s3cmd, boto, vault
    ".env", ".env.*", ".netrc", "_netrc", ".pypirc", ".npmrc", ".git-credentials", ".pgpass", ".my.cnf",
    ".s3cfg", ".boto", ".vault-token", ".htpasswd", ".cargo/credentials", ".cargo/credentials.toml",
    ".gem/credentials", ".m2/settings.xml", ".terraformrc", "terraform.rc",
    # container registry auth
    ".dockercfg", ".docker/config.json", ".dockerconfigjson", ".docker/",
    # cloud credentials and service accounts
    ".aws/", ".azure/", ".gcloud/", ".config/gcloud/", "credentials.json", "*credentials*.json",
    "service-account*.json", "service_account*.json", "*-sa-key.json", "client_secret*.json",
    "application_default_credentials.json", "*.gcp-key.json",
    # Terraform state, kubeconfigs
    "*.tfstate", "*.tfstate.backup", "*.tfstate.*.backup", ".terraform/", "kubeconfig", "kubeconfig.*",
    "*.kubeconfig", ".kube/",
    # build leftovers that may carry anything
    "*.egg-info/",
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
    scanned_files: int = 0  # project files scanned for secrets (0: the scan cache knew this content)
    outside_links: tuple[str, ...] = ()  # links left out because they lead outside the project


@dataclass(frozen=True)
class Upload:
    """Where content landed and how many bytes this call actually sent."""

    uri: str
    bytes_uploaded: int
    digest: str


def _is_venv(path: Path) -> bool:
    return (path / "pyvenv.cfg").is_file() or (path / "conda-meta").is_dir()


def _is_ade_output(path: Path) -> bool:
    """Our own output, whatever its name: an ADE storage root (an output_dir models land in: providers.json
    beside registry/) or a local-mode job root (jobs/<job>/job.json). Inside a codebase it would ship every
    landed model and job with the next submission."""
    if (path / "providers.json").is_file() and (path / "registry").is_dir():
        return True
    jobs = path / "jobs"
    return jobs.is_dir() and any(jobs.glob("*/job.json"))


def _excluded(rel: str, is_dir: bool) -> bool:
    """Left out by name: an excluded folder on the way, or a credential (``rel`` relative to the root)."""
    parts = rel.strip("/").split("/")
    if any(part in EXCLUDED_DIRS for part in (parts if is_dir else parts[:-1])):
        return True
    return CREDENTIAL_PATTERNS.match_file(rel.rstrip("/") + ("/" if is_dir else ""))


def _link_target(path: Path, roots: tuple[Path, ...]) -> tuple[Path, str | None]:
    """(resolved target, its path relative to the root it lies in, or None when it lies outside all)."""
    target = path.resolve()
    for root in roots:
        if target == root or root in target.parents:
            return target, target.relative_to(root).as_posix()
    return target, None


def collect_files(root: Path, prefix: str = "", *, link_roots: tuple[Path, ...] = (),
                  outside_links: list[tuple[str, Path]] | None = None) -> list[PackedFile]:
    """Files under ``root`` that may be shipped, sorted by archive name.

    Nothing outside ``root`` ships: a symbolic link is followed only when its target lies inside ``root``
    (or one of ``link_roots``), and a link into ``root`` ships only what the project itself would ship
    there: its target must be a file kept by the same rules (so a link named notes.txt to .env, or a
    link to a folder .gitignore or .adeignore keeps out, ships nothing). A link leading outside is left
    out and appended to ``outside_links`` as (path inside the root, target) for the caller to report. A
    cycle of links is cut. Excluded dirs, virtualenvs, credentials, what git ignores (every .gitignore on
    the way down and .git/info/exclude) and what the root's .adeignore names are left out.
    """
    walker = _Walker(Path(root), tuple(Path(r).resolve() for r in link_roots))
    kept = {packed.source.resolve() for packed in walker.collect("", follow_links=False)}
    return walker.collect(prefix, follow_links=True, kept=kept, outside_links=outside_links)


class _Walker:
    """One walk of a project tree; links are followed (into the project or link_roots) or skipped."""

    def __init__(self, root: Path, link_roots: tuple[Path, ...]) -> None:
        self.root, self.real_root = root, root.resolve()
        self.link_roots = link_roots
        self.roots = (self.real_root, *link_roots)

    def collect(self, prefix: str, *, follow_links: bool, kept: set[Path] | None = None,
                outside_links: list[tuple[str, Path]] | None = None) -> list[PackedFile]:
        self.prefix, self.follow, self.kept, self.outside = prefix, follow_links, kept, outside_links
        self.found: list[PackedFile] = []
        self._walk(self.root, "", frozenset(), IgnoreRules.at_root(self.root, ship_ignore(self.root)), False)
        return self.found

    def _linked_ok(self, path: Path, rel_path: str, is_dir: bool) -> bool:
        """A link (or a path under a followed folder link): inside, and kept by the project's own rules."""
        target, inside = _link_target(path, self.roots)
        if inside is None:
            if self.outside is not None:
                self.outside.append((rel_path, target))
            return False
        if inside and _excluded(inside, is_dir):
            return False
        in_project = target == self.real_root or self.real_root in target.parents
        if is_dir or not in_project or self.kept is None:
            return True  # a folder is judged file by file; link_roots hold this package's own files
        return target in self.kept

    def _walk(self, directory: Path, rel: str, ancestors: frozenset[Path], ignore: IgnoreRules,
              via_link: bool) -> None:
        real = directory.resolve()
        if real in ancestors:
            return  # a symlink back up the tree: a cycle, not content
        ancestors = ancestors | {real}
        ignore = ignore.descend(directory, rel) if rel else ignore
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            rel_path, path = f"{rel}{entry.name}", Path(entry.path)
            linked = via_link or entry.is_symlink()
            if entry.is_symlink() and not self.follow:
                continue  # the first walk: what the project ships without following any link
            if entry.is_dir():
                self._dir(entry, path, rel_path, ancestors, ignore, linked)
            elif entry.is_file():
                self._file(entry, path, rel_path, ignore, linked)
            elif entry.is_symlink() and self.outside is not None:
                _, inside = _link_target(path, self.roots)
                if inside is None:  # dangling, or to a socket/device: ships nothing, but say so
                    self.outside.append((rel_path, path.resolve()))

    def _dir(self, entry: os.DirEntry, path: Path, rel_path: str, ancestors: frozenset[Path],
             ignore: IgnoreRules, linked: bool) -> None:
        dir_rel = rel_path + "/"
        if (entry.name in EXCLUDED_DIRS or _is_venv(path) or CREDENTIAL_PATTERNS.match_file(dir_rel)
                or ignore.ignored(dir_rel, is_dir=True) or _is_ade_output(path)):
            return
        if entry.is_symlink() and not self._linked_ok(path, rel_path, is_dir=True):
            return
        self._walk(path, dir_rel, ancestors, ignore, linked)

    def _file(self, entry: os.DirEntry, path: Path, rel_path: str, ignore: IgnoreRules, linked: bool) -> None:
        if CREDENTIAL_PATTERNS.match_file(rel_path) or ignore.ignored(rel_path, is_dir=False):
            return
        if linked and not self._linked_ok(path, rel_path, is_dir=False):
            return
        self.found.append(PackedFile(self.prefix + rel_path, path))


def ship_ignore(root: Path) -> list[str]:
    """Patterns of the root's .adeignore (gitignore syntax): left out of what ships, whatever .gitignore says
    (test fixtures with planted secrets, docs, benchmarks: what the job never reads)."""
    try:
        return (root / SHIP_IGNORE_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:  # absent (the usual case) or unreadable: nothing extra left out
        return []


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


def _own_project_roots(project_dir: Path) -> tuple[Path, ...]:
    """Where the links of this package's own project (``launch``'s MLproject, entrypoints/) may lead.

    Its MLproject and entrypoints/ are links into the package's source tree (an editable install keeps
    them as links): they are this package's files, not a user's, so their targets count as inside.
    """
    if project_dir.resolve() != OWN_PROJECT.resolve():
        return ()
    return tuple(p.resolve() for p in OWN_PROJECT.iterdir() if p.is_symlink())


def warn_outside_links(outside: list[tuple[str, Path]], where: str) -> None:
    """One warning per link left out because it leads outside ``where``."""
    for rel, target in outside:
        logger.warning("left out %s: a symbolic link to %s, outside %s (only what is inside ships)",
                       rel, target, where)


def build_project_tarball(project_dir: Path, dest_dir: Path, *, with_bundle: bool = True,
                          allow_secret_files: Sequence[str] = (), scan_cache: ScanCache | None = None) -> Artifact:
    """The job's code archive: project + shim + bundle, named by nothing yet (see Artifact.sha256).

    Links leading outside the project are left out (one warning each). Every project file is scanned for
    secrets before anything is uploaded: a finding not covered by ``allow_secret_files`` (the backend-config
    key: gitignore-style paths relative to the project) raises ConfigError with one line per file:line.
    The scan's findings are cached under the archive's sha256 (``scan_cache``, default ship_scan's).
    """
    project_dir = Path(project_dir)
    if not (project_dir / "MLproject").is_file():
        raise ConfigError(f"no MLproject file in {project_dir}: run from an MLflow project directory")
    outside: list[tuple[str, Path]] = []
    files = collect_files(project_dir, link_roots=_own_project_roots(project_dir), outside_links=outside)
    warn_outside_links(outside, f"the project {project_dir}")
    extra: dict[str, bytes] = {}
    project_files = files
    if with_bundle:
        project_files = [f for f in files if not f.arcname.startswith((f"{BUNDLE_DIR}/", SHIM_NAME))]
        files = project_files + bundle_files()
        extra[SHIM_NAME] = SHIM_SOURCE.encode()
    artifact = write_tarball(files, extra, Path(dest_dir) / "project.tar.gz")
    scanned = check_shipped_files(artifact.path, {f.arcname for f in project_files}, artifact.sha256,
                                  allow_secret_files, scan_cache)
    return replace(artifact, scanned_files=scanned, outside_links=tuple(rel for rel, _ in outside))


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
        outside: list[tuple[str, Path]] = []
        files = collect_files(source, outside_links=outside)
        warn_outside_links(outside, f"parameter '{param}' ({path})")
        file_name = None
        if not files:
            raise ConfigError(f"parameter '{param}': directory '{path}' has no files to ship "
                              "(everything is ignored or it is empty)")
    digest = tree_digest(files)
    upload = store.put_tree(f"data/{digest}", files, digest)
    return Channel(channel_name(param), upload.uri, file_name), upload.bytes_uploaded
