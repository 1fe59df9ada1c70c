"""Path parameters and folders whose names hold a space or non-ASCII characters (issue 19 item 4).

Local mode passes folders around as file:// URIs (pathlib's as_uri(), which percent-encodes "a b" as
"a%20b" and "ü" as "%C3%BC"); whatever reads such a URI back must decode it, or the folder "does not
exist". Each test feeds the URI the client really makes to the reader the job really uses.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from ade_mlflow_plugin.backend import packaging
from ade_mlflow_plugin.config.cloud import CloudTrainingConfig

NAMES = ["with space", "näïve-ü", "日本語 dir"]



@pytest.fixture(params=NAMES)
def odd_folder(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    folder = tmp_path / request.param / "data"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    return folder


def test_local_channel_uri_reads_back_as_the_folder(odd_folder: Path) -> None:
    """A local-mode path param (packaging.local_channel) as the local runner materialises it."""
    from ade_mlflow_plugin.backend.local import Location

    channel = packaging.local_channel("data", str(odd_folder))
    assert Location(channel.uri, None).local_path() == odd_folder


def test_code_archive_uri_reads_back_as_the_file(odd_folder: Path, tmp_path: Path) -> None:
    """The code archive under a job_root with such a name: the job's bootstrap finds it."""
    from ade_mlflow_plugin.job import bootstrap

    archive = odd_folder / "code.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(odd_folder / "train.jsonl", arcname="train.jsonl")
    store = packaging.LocalStore(odd_folder.parent / "cache")
    uri = store.put_file("code/x.tar.gz", archive).uri
    assert Path(bootstrap.download_archive(uri, None, str(tmp_path))).is_file(), uri


@pytest.mark.parametrize("key", ["job_root", "output_dir", "sync_checkpoints"])
def test_config_folders_keep_their_names(odd_folder: Path, key: str) -> None:
    config = CloudTrainingConfig.from_backend_config({"mode": "local", key: str(odd_folder / "sub")})
    assert getattr(config, key) == str(odd_folder / "sub")
