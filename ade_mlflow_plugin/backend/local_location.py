"""Where a local job's data comes from and goes to: a file:// (or plain path) or s3:// location that a
directory is copied to and from, as SageMaker does for channels, checkpoints and the model archive; the
channels of a request made present in a job root, and the model packed and uploaded as SageMaker does."""
from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path
from typing import Any, Iterator

from ade_mlflow_plugin.backend.aws import AwsClients
from ade_mlflow_plugin.backend.packaging import S3Store
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.job import contract
from ade_mlflow_plugin.job.contract import ContainerPaths


class Location:
    """A file:// / plain path or s3:// location that a dir can be copied to and from."""

    def __init__(self, uri: str, clients: AwsClients | None) -> None:
        self.uri = uri.rstrip("/")
        self.clients = clients
        self._sent: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime) last copied

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    def local_path(self) -> Path:
        return contract.local_path(self.uri)

    def _bucket_key(self) -> tuple[str, str]:
        bucket, _, key = self.uri[5:].partition("/")
        return bucket, key

    def download_to(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        if not self.is_s3:
            if self.local_path().is_dir():
                shutil.copytree(self.local_path(), dest, dirs_exist_ok=True)
            return
        bucket, prefix = self._bucket_key()
        s3 = (self.clients or AwsClients()).s3
        for key, relative in self._objects(s3, bucket, prefix):
            target = dest / relative
            if dest.resolve() not in target.resolve().parents:
                raise ConfigError(f"refusing S3 key {key}: it would land outside {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(target))

    def has_objects(self) -> bool:
        """Whether download_to would fetch anything (an s3:// prefix or object, a local dir or file)."""
        if not self.is_s3:
            return self.local_path().exists()
        bucket, prefix = self._bucket_key()
        return next(iter(self._objects((self.clients or AwsClients()).s3, bucket, prefix)), None) is not None

    @staticmethod
    def _objects(s3: Any, bucket: str, prefix: str) -> Iterator[tuple[str, str]]:
        """(key, path below the channel) for the objects under prefix/, or the one object named prefix."""
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if key == prefix:  # the URI names one object: SageMaker puts it in the channel by its name
                    yield key, key.rsplit("/", 1)[-1]
                    continue
                if not prefix or key.startswith(prefix + "/"):
                    relative = key[len(prefix) + 1:] if prefix else key
                    if relative and not relative.endswith("/") and relative != S3Store.MARKER:
                        yield key, relative

    def upload_from(self, source: Path, *, everything: bool = False) -> int:
        """Copy the files of source that changed since the last call (checkpoints sync every 30 s and
        can be large), or all of them; returns how many were sent. Like SageMaker's sync it never deletes."""
        if not source.is_dir():
            return 0
        sent = 0
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            stamp = path.stat()
            relative = path.relative_to(source).as_posix()
            if not everything and self._sent.get(relative) == (stamp.st_size, stamp.st_mtime_ns):
                continue
            self._put(path, relative)
            self._sent[relative] = (stamp.st_size, stamp.st_mtime_ns)
            sent += 1
        return sent

    def mark_sent(self, source: Path) -> None:
        """Files just downloaded from here need not go back up."""
        for path in (p for p in source.rglob("*") if p.is_file()):
            stamp = path.stat()
            self._sent[path.relative_to(source).as_posix()] = (stamp.st_size, stamp.st_mtime_ns)

    def _put(self, path: Path, relative: str) -> None:
        if self.is_s3:
            bucket, prefix = self._bucket_key()
            (self.clients or AwsClients()).s3.upload_file(str(path), bucket, f"{prefix}/{relative}")
            return
        target = self.local_path() / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".ade-partial")
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)  # a reader (or a restart) never sees half a checkpoint file

    def put_file(self, source: Path, name: str) -> str:
        if self.is_s3:
            bucket, prefix = self._bucket_key()
            (self.clients or AwsClients()).s3.upload_file(str(source), bucket, f"{prefix}/{name}")
            return f"{self.uri}/{name}"
        target = self.local_path() / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        return target.resolve().as_uri()


def materialise_channels(request: dict[str, Any], paths: ContainerPaths, clients: AwsClients | None) -> None:
    """Each input channel of the request in the job root: s3:// downloaded, a local dir linked in place."""
    for channel in request.get("InputDataConfig", []):
        name = channel["ChannelName"]
        uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
        target = paths.channel_dir(name)
        if target.is_symlink() or target.exists():
            continue
        location = Location(uri, clients)
        if not location.has_objects():
            raise ConfigError(f"input channel '{name}': nothing at {uri}; check the path parameter "
                              "that names it")
        if location.is_s3:
            location.download_to(target)
            continue
        source = location.local_path().resolve()
        if source.is_file():  # a URI naming one file: the channel dir holds it, as on SageMaker
            target.mkdir(parents=True)
            (target / source.name).symlink_to(source)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source, target_is_directory=True)  # read in place, no copy


def upload_model(paths: ContainerPaths, output_uri: str, job_name: str, clients: AwsClients | None) -> str:
    """model/ packed as SageMaker packs it, to `<S3OutputPath>/<job>/output/model.tar.gz`; returns its URI."""
    archive = paths.output_dir / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(paths.model_dir.rglob("*")):
            tar.add(path, arcname=path.relative_to(paths.model_dir).as_posix(), recursive=False)
    return Location(output_uri, clients).put_file(archive, f"{job_name}/output/model.tar.gz")
