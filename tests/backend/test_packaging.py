"""Project tarball: deterministic, nothing secret or ignored ships, content-addressed uploads on moto S3."""
from __future__ import annotations

import os
import subprocess
import tarfile
import time

import boto3

from ade_mlflow_plugin.backend import packaging


def _names(artifact):
    with tarfile.open(artifact.path) as tar:
        return tar.getnames()


def test_tarball_is_deterministic_and_leaves_out_secrets(project, tmp_path):
    first = packaging.build_project_tarball(project, tmp_path / "a")
    time.sleep(1.1)
    os.utime(project / "train.py")  # a new mtime must not change the content address
    second = packaging.build_project_tarball(project, tmp_path / "b")
    assert first.sha256 == second.sha256
    names = _names(first)
    assert {"MLproject", "train.py", "helper.py", packaging.SHIM_NAME} <= set(names)
    assert f"{packaging.BUNDLE_DIR}/ade_mlflow_plugin/job/contract.py" in names
    for leaked in (".env", "deploy.pem", "debug.log", ".git/HEAD"):
        assert leaked not in names
    with tarfile.open(first.path) as tar:
        assert all(m.mtime == tar.getmembers()[0].mtime and m.uid == 0 for m in tar.getmembers())
    (project / "train.py").write_text((project / "train.py").read_text() + "\n# changed\n")
    assert packaging.build_project_tarball(project, tmp_path / "c").sha256 != first.sha256


def test_virtualenvs_and_caches_are_skipped(project, tmp_path):
    (project / "env" / "lib").mkdir(parents=True)
    (project / "env" / "pyvenv.cfg").write_text("home = /usr\n")
    (project / "env" / "lib" / "big.py").write_text("x = 1\n")
    (project / "mlruns" / "0").mkdir(parents=True)
    (project / "mlruns" / "0" / "meta.yaml").write_text("x\n")
    names = _names(packaging.build_project_tarball(project, tmp_path / "out"))
    assert not [n for n in names if n.startswith(("env/", "mlruns/"))]


def test_second_upload_sends_nothing_and_is_encrypted(project, tmp_path, s3_bucket):
    s3 = boto3.client("s3")
    store = packaging.S3Store(s3, s3_bucket, "pfx")
    artifact = packaging.build_project_tarball(project, tmp_path)
    first = store.put_file(f"code/{artifact.sha256}.tar.gz", artifact.path)
    again = store.put_file(f"code/{artifact.sha256}.tar.gz", artifact.path)
    assert first.bytes_uploaded == artifact.size and again.bytes_uploaded == 0
    head = s3.head_object(Bucket=s3_bucket, Key=f"pfx/code/{artifact.sha256}.tar.gz")
    assert head["ServerSideEncryption"] == "AES256"


def test_directory_channel_is_content_addressed(data_dir, s3_bucket):
    s3 = boto3.client("s3")
    store = packaging.S3Store(s3, s3_bucket, "pfx", kms_key_id="alias/ade")
    channel, sent = packaging.s3_channel("data", str(data_dir), store)
    channel_again, sent_again = packaging.s3_channel("data", str(data_dir), store)
    assert sent > 0 and sent_again == 0 and channel == channel_again
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="pfx/data/")["Contents"]}
    assert any(k.endswith("/a.txt") for k in keys) and any(k.endswith("/b.txt") for k in keys)
    head = s3.head_object(Bucket=s3_bucket, Key=next(k for k in keys if k.endswith("a.txt")))
    assert head["ServerSideEncryption"] == "aws:kms"


def test_symlinked_dirs_ship_both_paths_and_cycles_stop(project, tmp_path):
    # An installed package's project/ links to the real entrypoints/; both paths must ship.
    (project / "entrypoints").mkdir()
    (project / "entrypoints" / "main.py").write_text("print('hi')\n")
    (project / "pkg" / "project").mkdir(parents=True)
    (project / "pkg" / "project" / "entrypoints").symlink_to(project / "entrypoints")
    (project / "pkg" / "loop").symlink_to(project / "pkg")
    names = _names(packaging.build_project_tarball(project, tmp_path / "out"))
    assert "entrypoints/main.py" in names and "pkg/project/entrypoints/main.py" in names
    assert not [n for n in names if n.startswith("pkg/loop/loop/")]


def test_git_info_exclude_is_honoured(project, tmp_path):
    (project / ".git" / "info").mkdir()
    (project / ".git" / "info" / "exclude").write_text("/wheels/\n")
    (project / "wheels").mkdir()
    (project / "wheels" / "big.whl").write_bytes(b"0" * 1000)
    names = _names(packaging.build_project_tarball(project, tmp_path / "out"))
    assert not [n for n in names if n.startswith("wheels/")]


def test_nested_gitignore_files_count_and_deeper_ones_win(project, tmp_path):
    # What `git status` would show for this tree, checked against git itself below.
    (project / ".gitignore").write_text((project / ".gitignore").read_text() + "*.log\n")
    (project / "service" / "build").mkdir(parents=True)
    (project / "service" / ".gitignore").write_text("build/\n*.tmp\n!keep.log\n")
    for rel in ("service/app.py", "service/cache.tmp", "service/keep.log", "service/debug.log",
                "service/build/out.bin", "other/cache.tmp"):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("x\n")
    names = set(_names(packaging.build_project_tarball(project, tmp_path / "out", with_bundle=False)))
    assert {"service/app.py", "service/keep.log", "other/cache.tmp", "service/.gitignore"} <= names
    assert not names & {"service/cache.tmp", "service/debug.log", "service/build/out.bin"}
    # The same verdicts as git's own, for every file above.
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    paths = ["service/app.py", "service/cache.tmp", "service/keep.log", "service/debug.log",
             "service/build/out.bin", "other/cache.tmp"]
    out = subprocess.run(["git", "-C", str(project), "check-ignore", *paths], capture_output=True, text=True)
    assert set(out.stdout.split()) == {p for p in paths if p not in names}
