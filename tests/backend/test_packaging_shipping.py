"""Nothing outside the project ships: outside links, credential files and planted secrets (issue 19 item 1)."""
from __future__ import annotations

import logging
import tarfile
from pathlib import Path

import pytest

from ade_mlflow_plugin.backend import packaging, ship_scan
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.launch import PROJECT_DIR

# Planted credentials: each matches a token format detect-secrets knows.
GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
AWS_KEY_ID = "AKIA" + "4ZQ3MPLXW2EXAMPL"
CREDENTIAL_FILES = (
    ".dockercfg", ".docker/config.json", "service-account.json", "deploy/service-account-prod.json",
    "gcp-credentials.json", "credentials.json", "terraform.tfstate", "infra/terraform.tfstate.backup",
    "kubeconfig", ".kube/config", ".pypirc", ".netrc", "keys/release.jks", "app.keystore", "cert.p12",
    "cert.pfx", ".aws/credentials", ".npmrc", ".git-credentials", ".env.production", "id_ed25519",
    "client_secret_1234.json", ".terraform/providers/x.bin", ".s3cfg", ".vault-token",
)


def _names(artifact: packaging.Artifact) -> set[str]:
    with tarfile.open(artifact.path) as tar:
        return set(tar.getnames())


def _build(project: Path, out: Path, cache: Path, **kwargs) -> packaging.Artifact:
    return packaging.build_project_tarball(project, out, with_bundle=False, scan_cache=ship_scan.ScanCache(cache),
                                           **kwargs)


def test_links_leading_outside_are_left_out_with_one_warning_each(project, tmp_path, caplog):
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_text("private\n")
    (outside / "dir" / "more.txt").write_text("private\n")
    (project / "passwd").symlink_to("/etc/passwd")
    (project / "notes.txt").symlink_to(outside / "secret.txt")
    (project / "data").symlink_to(outside / "dir")
    (project / "sub").mkdir()
    (project / "sub" / "up.txt").symlink_to("../../outside/secret.txt")  # relative, still outside
    (project / "gone.txt").symlink_to(tmp_path / "nowhere")
    caplog.set_level(logging.WARNING, logger=packaging.__name__)
    artifact = _build(project, tmp_path / "out", tmp_path / "cache")
    names = _names(artifact)
    left_out = {"passwd", "notes.txt", "data", "sub/up.txt", "gone.txt"}
    assert not names & left_out and not [n for n in names if n.startswith("data/")]
    assert set(artifact.outside_links) == left_out
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == len(left_out)
    for name in left_out:
        assert sum(w.startswith(f"left out {name}: a symbolic link to ") for w in warnings) == 1


def test_links_inside_ship_their_content_unless_the_target_is_left_out(project, tmp_path):
    (project / "lib").mkdir()
    (project / "lib" / "util.py").write_text("X = 1\n")
    (project / "alias.py").symlink_to("lib/util.py")
    (project / "lib2").symlink_to(project / "lib")
    (project / "innocent.txt").symlink_to(project / ".env")  # .env is never shipped, by any name
    (project / "history").symlink_to(project / ".git")
    artifact = _build(project, tmp_path / "out", tmp_path / "cache")
    names = _names(artifact)
    assert {"alias.py", "lib/util.py", "lib2/util.py"} <= names
    assert not names & {"innocent.txt", ".env"} and not [n for n in names if n.startswith("history/")]
    assert artifact.outside_links == ()
    with tarfile.open(artifact.path) as tar:
        assert tar.extractfile("alias.py").read() == b"X = 1\n"


def test_credential_files_are_left_out_by_name(project, tmp_path):
    for rel in CREDENTIAL_FILES:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("{}\n")
    names = _names(_build(project, tmp_path / "out", tmp_path / "cache"))
    assert not names & set(CREDENTIAL_FILES), names & set(CREDENTIAL_FILES)
    assert {"MLproject", "train.py"} <= names


def test_a_planted_secret_refuses_the_upload_with_file_line_and_the_way_to_allow_it(project, tmp_path):
    (project / "config").mkdir()
    (project / "config" / "settings.py").write_text(f"DEBUG = True\nGH = '{GITHUB_TOKEN}'\n")
    (project / "train.py").write_text((project / "train.py").read_text() + f"# key {AWS_KEY_ID}\n")
    train_line = (project / "train.py").read_text().count("\n")
    with pytest.raises(ConfigError) as refused:
        _build(project, tmp_path / "out", tmp_path / "cache")
    lines = refused.value.message.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == ["config/settings.py:2", f"train.py:{train_line}"]
    assert all('"allow_secret_files": [' in line for line in lines)
    # Allowing one file leaves the other refused; allowing both ships them (from the cache: no rescan).
    with pytest.raises(ConfigError, match=r"^train\.py:"):
        _build(project, tmp_path / "out", tmp_path / "cache", allow_secret_files=["config/"])
    allowed = _build(project, tmp_path / "out", tmp_path / "cache",
                     allow_secret_files=["config/settings.py", "train.py"])
    assert allowed.scanned_files == 0 and "config/settings.py" in _names(allowed)


def test_an_unchanged_project_is_scanned_once(project, tmp_path):
    first = _build(project, tmp_path / "a", tmp_path / "cache")
    second = _build(project, tmp_path / "b", tmp_path / "cache")
    assert first.scanned_files == first.file_count and second.scanned_files == 0
    (project / "helper.py").write_text((project / "helper.py").read_text() + "# changed\n")
    assert _build(project, tmp_path / "c", tmp_path / "cache").scanned_files == 1  # the edited file only
    # A secret planted in a file is found even though the rest of the project comes from the cache.
    (project / "helper.py").write_text((project / "helper.py").read_text() + f"# {GITHUB_TOKEN}\n")
    with pytest.raises(ConfigError, match=r"^helper\.py:\d+: looks like a secret"):
        _build(project, tmp_path / "d", tmp_path / "cache")


def test_adeignore_leaves_out_what_the_job_never_reads(project, tmp_path):
    (project / "tests").mkdir()
    (project / "tests" / "test_keys.py").write_text(f"FAKE = '{GITHUB_TOKEN}'\n")
    (project / ".adeignore").write_text("/tests/\n")
    names = _names(_build(project, tmp_path / "out", tmp_path / "cache"))
    assert "tests/test_keys.py" not in names and "train.py" in names


def test_this_packages_own_project_ships_its_linked_files_without_warnings(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=packaging.__name__)
    artifact = packaging.build_project_tarball(PROJECT_DIR, tmp_path / "out",
                                               scan_cache=ship_scan.ScanCache(tmp_path / "cache"))
    assert {"MLproject", "conda.yaml", "entrypoints/main.py"} <= _names(artifact)
    assert artifact.outside_links == () and not caplog.records


def test_binary_files_are_skipped_and_large_files_scanned_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(ship_scan, "_CHUNK_BYTES", 64)
    big = tmp_path / "big.txt"
    big.write_text("".join(f"line {i}\n" for i in range(200)) + f"token {GITHUB_TOKEN}\n" + "tail\n" * 50)
    (tmp_path / "blob.bin").write_bytes(b"\0\1" + GITHUB_TOKEN.encode())
    found = ship_scan.scan_files([("big.txt", big), ("blob.bin", tmp_path / "blob.bin")])
    assert found == [ship_scan.Finding("big.txt", 201)]


@pytest.mark.parametrize("value", [GITHUB_TOKEN, AWS_KEY_ID, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                                   "https://deploy:hunter2pass@git.example.com/repo.git",
                                   "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"])
def test_environment_values_that_look_like_credentials_are_refused(value):
    with pytest.raises(ConfigError) as refused:
        ship_scan.check_environment_values({"LOG_LEVEL": "info", "INNOCENT_NAME": value})
    message = refused.value.message
    assert "\n" not in message and "INNOCENT_NAME" in message and value not in message
    assert "IAM role" in message and "Secrets Manager" in message


def test_everyday_environment_values_pass():
    ship_scan.check_environment_values({
        "GIT_COMMIT": "3f786850e387550fdab836ed7e6dc881de23001b", "BASE": "deepseek-ai/deepseek-coder-1.3b-instruct",
        "DATA": "/opt/ml/input/data/train", "RUN": "0b0f8b4e-8b9a-4b4e-9b1f-3c2d1e0f9a8b", "N": "1000",
        "URL": "https://mlflow.example.com:5000/", "EMPTY": "", "HF_HOME": "/tmp/hf"})


@pytest.mark.slow  # a whole submission through the backend (moto S3 and SageMaker, sqlite tracking)
def test_a_submission_to_moto_uploads_none_of_the_outside_links_or_credentials(project, data_dir, tmp_path, aws,
                                                                             sqlite_tracking, monkeypatch):
    import io

    import boto3
    import mlflow

    from ade_mlflow_plugin.backend.project_backend import AdeSageMakerBackend
    from tests.backend.conftest import ROLE

    monkeypatch.setenv(ship_scan.CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("private\n")
    (project / "passwd").symlink_to("/etc/passwd")
    (project / "notes.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    (project / "shared").symlink_to(tmp_path / "outside")
    for rel in CREDENTIAL_FILES:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("{}\n")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="ade-shipping")
    config = {"role_arn": ROLE, "bucket": "ade-shipping", "region": "us-east-1", "wait": False, "SYNCHRONOUS": False}
    experiment = mlflow.get_experiment_by_name("Default").experiment_id
    backend = AdeSageMakerBackend(console=io.StringIO())
    backend.run(str(project), "main", {"data": str(data_dir)}, None, dict(config), sqlite_tracking, experiment)
    code_uri = backend.last_submission.code.uri
    bucket, key = code_uri[len("s3://"):].split("/", 1)
    s3.download_file(bucket, key, str(tmp_path / "uploaded.tar.gz"))
    with tarfile.open(tmp_path / "uploaded.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"MLproject", "train.py"} <= names
    assert not names & ({"passwd", "notes.txt", ".env", "deploy.pem"} | set(CREDENTIAL_FILES))
    assert not [n for n in names if n.startswith("shared/")]
    # A planted secret refuses the next submission before anything is uploaded.
    (project / "train.py").write_text((project / "train.py").read_text() + f"# {GITHUB_TOKEN}\n")
    before = {o["Key"] for o in s3.list_objects_v2(Bucket="ade-shipping")["Contents"]}
    with pytest.raises(ConfigError, match=r"^train\.py:\d+: looks like a secret"):
        backend.run(str(project), "main", {"data": str(data_dir)}, None, dict(config), sqlite_tracking, experiment)
    assert {o["Key"] for o in s3.list_objects_v2(Bucket="ade-shipping")["Contents"]} == before
    # The backend-config key lets the named file through: the submission goes ahead.
    backend.run(str(project), "main", {"data": str(data_dir)}, None,
                {**config, "allow_secret_files": ["train.py"]}, sqlite_tracking, experiment)
    assert backend.last_submission.code.uri != code_uri


def test_without_detect_secrets_the_scan_fails_in_one_line(tmp_path, monkeypatch):
    import sys

    from ade_mlflow_plugin.errors import AdeError

    monkeypatch.setitem(sys.modules, "ade_mlflow_plugin.secret_scan", None)  # as if not installable
    (tmp_path / "a.py").write_text("x = 1\n")
    with pytest.raises(AdeError, match=r"^the secret scan of what ships needs detect-secrets .*pip install"):
        ship_scan.scan_files([("a.py", tmp_path / "a.py")])


def test_our_own_output_inside_the_project_never_ships(project, tmp_path):
    """A local output_dir (ADE storage) or job_root inside the codebase: the models and jobs it holds stay
    out of the next submission, whatever the folder is called."""
    from ade_mlflow_plugin.backend.packaging import collect_files

    landed = project / "models out"
    (landed / "registry" / "ade-shop-v1").mkdir(parents=True)
    (landed / "registry" / "ade-shop-v1" / "metadata.json").write_text("{}\n")
    (landed / "providers.json").write_text("{}\n")
    job = project / "runs" / "jobs" / "ade-shop-20261206-1"
    job.mkdir(parents=True)
    (job / "job.json").write_text("{}\n")
    (job / "model.bin").write_bytes(b"\0" * 64)
    (project / "registry").mkdir()  # a folder that merely shares the name ships as usual
    (project / "registry" / "notes.md").write_text("hello\n")
    names = {f.arcname for f in collect_files(project)}
    assert "registry/notes.md" in names
    assert not [n for n in names if n.startswith(("models out/", "runs/"))]
