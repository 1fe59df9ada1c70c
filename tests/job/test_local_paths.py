"""file:// URIs of folders whose names hold a space or non-ASCII characters read back as those folders in
the job (issue 19 item 4): the code archive the launcher unpacks, the channels and checkpoints it syncs."""
from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from ade_mlflow_plugin.job import contract, launcher


@pytest.mark.parametrize("name", ["with space", "näïve-ü", "日本語 dir"])
def test_the_launcher_unpacks_a_code_archive_under_an_odd_name(tmp_path: Path, name: str) -> None:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "MLproject").write_text("name: x\n")
    archive = folder / "code.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "MLproject", arcname="MLproject")
    assert "%" in archive.as_uri() or name.isascii() is False
    assert contract.local_path(archive.as_uri()) == archive and contract.local_path(str(archive)) == archive
    launcher._fetch_code(archive.as_uri(), tmp_path / "code")
    assert (tmp_path / "code" / "MLproject").read_text() == "name: x\n"
