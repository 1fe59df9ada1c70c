"""Sync into ADE storage against the real MLflow server (artifacts on moto S3)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.config.registry import ModelRegistryConfig
from ade_mlflow_plugin.hooks import get_plugin_manager, register_plugin
from ade_mlflow_plugin.registry.sync import ModelSyncManager, parse_ref
from tests.registry.conftest import Recorder, run_cli, sha256_tree


def _manager(root: Path, keep: int = 3, recorder: Recorder | None = None) -> ModelSyncManager:
    config = ModelRegistryConfig(root=root, keep_versions=keep, load_entry_points=False)
    pm = get_plugin_manager(config, builtin_sync=False)
    if recorder:
        register_plugin(pm, recorder, "recorder")
    return ModelSyncManager(config, plugin_manager=pm)


def test_sync_writes_seed_layout_and_providers(make_version, model_name, root):
    version = make_version(model_name, tags={"ade.git_commit": "deadbeef", "ade.parent_model": "ade-shop",
                                             "ade.parent_version": "3"})
    MlflowClient().set_registered_model_alias(model_name, "production", version)
    recorder = Recorder()

    result = _manager(root, recorder=recorder).sync_ref(f"{model_name}@production")

    vdir = root / "registry" / f"{model_name}-v{version}"
    assert result.path == vdir and result.downloaded_bytes > 2048
    meta = json.loads((vdir / "metadata.json").read_text())
    assert (meta["name"], meta["version"], meta["aliases"]) == (model_name, version, ["production"])
    assert meta["base_model"] == "tiny-llama" and meta["dataset_digest"] == "sha256:abc"
    assert meta["git_commit"] == "deadbeef" and meta["format"] == "transformers" and meta["source_run"]
    assert (meta["parent_model"], meta["parent_version"]) == ("ade-shop", "3")  # what it was trained on from
    on_disk = sha256_tree(vdir / "model_artifacts")
    assert {k: v["sha256"] for k, v in meta["files"].items()} == on_disk
    assert "adapter/adapter_model.safetensors" in on_disk
    assert json.loads((vdir / "performance_metrics.json").read_text()) == {"eval_loss": 1.25, "perplexity": 3.5}
    providers = json.loads((root / "providers.json").read_text())
    entry = providers["models"][model_name]["aliases"]["production"]
    assert entry["version"] == version and entry["path"] == str(vdir) and entry["format"] == "transformers"
    hooks = [name for name, _ in recorder.calls]
    assert hooks == ["ade_before_sync", "ade_provider_registry_updated", "ade_after_sync"]
    assert not [p for p in (root / "registry").iterdir() if p.name.startswith(".")]


def test_second_sync_downloads_nothing_and_keeps_files(make_version, model_name, root):
    version = make_version(model_name)
    manager = _manager(root)
    first = manager.sync(model_name, version)
    inodes = {p: p.stat().st_ino for p in first.path.rglob("*") if p.is_file() and "model_artifacts" in p.parts}

    second = manager.sync(model_name, version)

    assert first.downloaded_bytes > 0 and second.downloaded_bytes == 0
    assert {p: p.stat().st_ino for p in inodes} == inodes


def test_tampered_copy_is_downloaded_again(make_version, model_name, root):
    version = make_version(model_name)
    manager = _manager(root)
    first = manager.sync(model_name, version)
    target = first.path / "model_artifacts" / "tokenizer.json"
    target.write_text('{"tampered": true}')

    again = manager.sync(model_name, version)

    assert again.downloaded_bytes == first.downloaded_bytes
    assert target.read_text() == '{"version": "1.0"}'


def test_version_number_reused_by_another_run_is_downloaded_again(make_version, model_name, root):
    client = MlflowClient()
    files_a = {"MLmodel": b"flavors:\n  transformers: {}\n", "weights.bin": os.urandom(4096)}
    files_b = {"MLmodel": b"flavors:\n  transformers: {}\n", "weights.bin": os.urandom(8192),
               "extra/notes.txt": b"run B"}
    version_a = make_version(model_name, files=files_a)
    run_a = client.get_model_version(model_name, version_a).run_id
    client.set_registered_model_alias(model_name, "production", version_a)
    manager = _manager(root)
    first = manager.sync(model_name, version_a)
    client.delete_registered_model(model_name)  # as a fresh registry would, v1 starts again
    version_b = make_version(model_name, files=files_b)
    run_b = client.get_model_version(model_name, version_b).run_id
    client.set_registered_model_alias(model_name, "production", version_b)
    assert (version_a, version_b) == ("1", "1") and run_a != run_b

    again = manager.sync(model_name, version_b)

    assert again.path == first.path and again.downloaded_bytes >= sum(map(len, files_b.values()))
    artifacts = again.path / "model_artifacts"
    assert (artifacts / "weights.bin").read_bytes() == files_b["weights.bin"]
    assert (artifacts / "extra" / "notes.txt").read_bytes() == b"run B"
    meta = json.loads((again.path / "metadata.json").read_text())
    assert meta["source_run"] == run_b and run_b in meta["source"]
    assert meta["total_bytes"] == again.downloaded_bytes
    assert {k: v["sha256"] for k, v in meta["files"].items()} == sha256_tree(artifacts)
    assert [p.name for p in (root / "registry").iterdir()] == [again.path.name]
    assert manager.sync(model_name, version_b).downloaded_bytes == 0


def test_mlflow_cli_download_matches_ade_copy(make_version, model_name, root, tmp_path, tracking_uri):
    version = make_version(model_name)
    MlflowClient().set_registered_model_alias(model_name, "production", version)
    _manager(root).sync_ref(f"{model_name}@production")
    out = tmp_path / "cli-download"
    subprocess.run([sys.executable, "-m", "mlflow", "artifacts", "download", "-u",
                    f"models:/{model_name}@production", "-d", str(out)], check=True, env=os.environ.copy(),
                   stdout=subprocess.DEVNULL)
    assert sha256_tree(out) == sha256_tree(root / "registry" / f"{model_name}-v{version}" / "model_artifacts")


def test_kill_9_midway_leaves_no_partial_version(make_version, model_name, root, tmp_path):
    version = make_version(model_name, files={"weights.bin": os.urandom(48 << 20), "config.json": b"{}"})
    cmd = [sys.executable, "-m", "ade_mlflow_plugin.cli", "sync", f"{model_name}/{version}", "--root", str(root)]
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _staged_bytes(root) == 0 and proc.poll() is None:
            time.sleep(0.005)
        assert proc.poll() is None, "sync finished before it could be killed"
        proc.kill()  # SIGKILL: no cleanup code runs
    finally:
        proc.wait()
    assert _staged_bytes(root) > 0
    vdir = root / "registry" / f"{model_name}-v{version}"
    assert not vdir.exists()
    assert model_name not in json.loads((root / "providers.json").read_text())["models"] \
        if (root / "providers.json").exists() else True

    result = _manager(root).sync(model_name, version)

    assert result.downloaded_bytes == (48 << 20) + 2
    assert [p.name for p in (root / "registry").iterdir()] == [vdir.name]
    assert _manager(root).sync(model_name, version).downloaded_bytes == 0


def _staged_bytes(root: Path) -> int:
    registry = root / "registry"
    if not registry.is_dir():
        return 0
    return sum(p.stat().st_size for d in registry.glob(".staging-*") for p in d.rglob("*") if p.is_file())


def test_concurrent_syncs_download_once(make_version, model_name, root):
    version = make_version(model_name, files={"weights.bin": os.urandom(4 << 20)})
    results, errors = [], []

    def sync() -> None:
        try:
            results.append(_manager(root).sync(model_name, version).downloaded_bytes)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=sync) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(results) == [0, 0, 4 << 20]


def test_keeps_last_n_versions_but_not_serving_ones(make_version, model_name, root):
    client = MlflowClient()
    versions = [make_version(model_name) for _ in range(4)]
    client.set_registered_model_alias(model_name, "production", versions[0])
    manager = _manager(root, keep=2)
    for v in versions:
        manager.sync(model_name, v)

    kept = sorted(p.name for p in (root / "registry").iterdir())
    assert kept == sorted(f"{model_name}-v{v}" for v in (versions[0], versions[2], versions[3]))


@pytest.mark.parametrize("ref", ["nomodel", "name/", "name/x", "@alias", "name@"])
def test_parse_ref_refuses_bad_refs(ref):
    with pytest.raises(ConfigError, match="NAME@ALIAS or NAME/VERSION"):
        parse_ref(ref)


def test_sync_cli_bad_input_exits_2_with_one_line(tracking_uri, root, capsys, model_name):
    code, _, err = run_cli(["sync", "not-a-ref", "--root", str(root)], capsys)
    assert code == 2 and err.count("\n") == 1 and "NAME@ALIAS" in err
    code, _, err = run_cli(["sync", f"{model_name}@production", "--root", str(root)], capsys)
    assert code == 2 and err.count("\n") == 1 and model_name in err


def test_sync_cli_reports_bytes(make_version, model_name, root, capsys):
    version = make_version(model_name)
    code, out, _ = run_cli(["sync", f"{model_name}/{version}", "--root", str(root)], capsys)
    assert code == 0 and "downloaded" in out and "(downloaded 0 bytes)" not in out
    code, out, _ = run_cli(["sync", f"{model_name}/{version}", "--root", str(root)], capsys)
    assert code == 0 and "(downloaded 0 bytes)" in out


def test_before_sync_hook_can_abort_and_nothing_is_written(make_version, model_name, root):
    from ade_mlflow_plugin import hookimpl

    class Veto:
        @hookimpl
        def ade_before_sync(self, name, version, destination):  # noqa: ANN001
            raise RuntimeError(f"not syncing {name} into {destination.name}")

    version = make_version(model_name)
    manager = _manager(root)
    register_plugin(manager.pm, Veto(), "veto")
    with pytest.raises(RuntimeError, match=f"not syncing {model_name} into {model_name}-v{version}"):
        manager.sync(model_name, version)
    assert not (root / "registry").exists() or not any((root / "registry").iterdir())
    assert not (root / "providers.json").exists()


def test_both_download_paths_give_the_same_verified_copy(make_version, model_name, tmp_path, monkeypatch):
    """ADE's presigned fetch (the default on an S3-backed server) and MLflow's own download agree."""
    from ade_mlflow_plugin.registry import fetch

    monkeypatch.setenv("MLFLOW_MULTIPART_DOWNLOAD_CHUNK_SIZE", str(1 << 20))  # several ranges per file
    version = make_version(model_name, files={"model.safetensors": os.urandom(3 << 20), "MLmodel": b"x: 1\n"})
    fetched: list[int] = []
    real_fetch = fetch.fetch_presigned
    monkeypatch.setattr(fetch, "fetch_presigned",
                        lambda *a, **kw: fetched.append(a[2]) or real_fetch(*a, **kw))
    metas = {}
    for label, presigned in (("ade", True), ("mlflow", False)):
        config = ModelRegistryConfig(root=tmp_path / label, load_entry_points=False, presigned_fetch=presigned)
        result = ModelSyncManager(config, plugin_manager=get_plugin_manager(config, builtin_sync=False)).sync(
            model_name, version)
        metas[label] = json.loads((result.path / "metadata.json").read_text())["files"]
        assert {k: v["sha256"] for k, v in metas[label].items()} == sha256_tree(result.path / "model_artifacts")
        if label == "ade":
            assert sorted(fetched) == [5, 3 << 20]  # every file came through fetch.py
    assert sorted(fetched) == [5, 3 << 20]  # and none with presigned_fetch=False
    assert metas["ade"] == metas["mlflow"] and "model.safetensors" in metas["ade"]


def test_file_gone_from_the_store_midway_is_one_line_and_leaves_nothing(make_version, model_name, root, capsys,
                                                                        monkeypatch):
    """A listed file that is gone when its bytes are fetched: one line (no URL), no version dir."""
    from urllib.parse import urlsplit

    import boto3
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    version = make_version(model_name)
    real = MlflowArtifactsRepository._get_presigned_download_url

    def gone_after_listing(self, remote_file_path):  # noqa: ANN001, ANN202 - as if deleted meanwhile
        answer = real(self, remote_file_path)
        if remote_file_path.endswith("tokenizer.json"):  # a valid URL for a key that is not there
            bucket, key = urlsplit(answer.url).path.lstrip("/").split("/", 1)
            answer.url = boto3.client("s3").generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key + "-deleted"})
        return answer

    monkeypatch.setattr(MlflowArtifactsRepository, "_get_presigned_download_url", gone_after_listing)

    code, _, err = run_cli(["sync", f"{model_name}/{version}", "--root", str(root)], capsys)

    err = err.splitlines()[-1] if err else err  # MLflow's progress bar may precede the message
    assert code == 1 and "Traceback" not in err, err
    assert "downloading tokenizer.json of models:/" in err and "(HTTP 404); run the sync again" in err, err
    assert "Signature" not in err and "X-Amz" not in err
    assert not (root / "registry" / f"{model_name}-v{version}").exists()
    assert not [p for p in (root / "registry").iterdir() if p.name.startswith(".staging")]
