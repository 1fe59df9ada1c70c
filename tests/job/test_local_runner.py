"""The local runner's own duties: channels from file:// and s3:// as SageMaker lays them out, input
errors reported like SageMaker's ClientError, and a stop that ends even an entry ignoring SIGTERM."""
from __future__ import annotations

import json
import time
from pathlib import Path

import boto3
import pytest

from ade_mlflow_plugin.backend import local
from ade_mlflow_plugin.backend.local import LocalJob, Location
from ade_mlflow_plugin.errors import ConfigError
from tests.job.test_bad_job_input import _request


def _channel(name: str, uri: str) -> dict:
    return {"ChannelName": name, "InputMode": "File", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}}}


def test_s3_channels_hold_a_prefix_tree_or_the_one_named_object(s3_bucket, tmp_path):
    s3 = boto3.client("s3")
    for key in ("data/a.txt", "data/sub/b.txt", "data/_ade_complete.json", "database/not-mine.txt"):
        s3.put_object(Bucket=s3_bucket, Key=key, Body=key.encode())
    Location(f"s3://{s3_bucket}/data/", None).download_to(tmp_path / "tree")
    assert sorted(p.relative_to(tmp_path / "tree").as_posix() for p in (tmp_path / "tree").rglob("*.txt")) \
        == ["a.txt", "sub/b.txt"]  # not database/, not the upload marker
    Location(f"s3://{s3_bucket}/data/sub/b.txt", None).download_to(tmp_path / "one")
    assert (tmp_path / "one" / "b.txt").read_text() == "data/sub/b.txt"
    assert not Location(f"s3://{s3_bucket}/nothing-here", None).has_objects()


@pytest.mark.slow
def test_file_channels_are_read_in_place(sqlite_tracking, tmp_path):
    data = tmp_path / "data"
    (data / "nested").mkdir(parents=True)
    (data / "nested" / "x.txt").write_text("x")
    (tmp_path / "single.csv").write_text("a,b\n")
    request, _ = _request(tmp_path, sqlite_tracking)
    request["InputDataConfig"] = [_channel("tree", data.as_uri() + "/"),
                                  _channel("one", (tmp_path / "single.csv").as_uri())]
    job = LocalJob(request, job_root=tmp_path / "root", stream=None)
    job._materialise_channels()
    assert (job.paths.channel_dir("tree") / "nested" / "x.txt").read_text() == "x"
    assert [p.name for p in job.paths.channel_dir("one").iterdir()] == ["single.csv"]


@pytest.mark.parametrize("uri", ["file:///nonexistent/ade-data/", "s3://{bucket}/no/such/prefix"])
def test_a_missing_channel_source_fails_before_the_launcher(sqlite_tracking, s3_bucket, tmp_path, uri):
    request, _ = _request(tmp_path, sqlite_tracking)
    request["InputDataConfig"] = [_channel("corpus", uri.format(bucket=s3_bucket))]
    job = LocalJob(request, job_root=tmp_path / "root", stream=None)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ConfigError, match="input channel 'corpus': nothing at .*check the path parameter"):
        job.start()
    final = job.wait(timeout=1)
    assert final["TrainingJobStatus"] == "Failed" and job.proc is None
    assert final["FailureReason"].startswith("ClientError: input channel 'corpus'")
    assert "input channel 'corpus'" in (tmp_path / "root" / "output" / "failure").read_text()
    written = set(tmp_path.rglob("*")) - set(before)
    assert written and all(tmp_path / "root" in [p, *p.parents] for p in written)  # only the job root


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")  # an orphaned zombie waits for init to reap it; it no longer runs


@pytest.mark.slow
def test_stop_kills_an_entry_that_ignores_sigterm_after_the_grace_period(sqlite_tracking, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(local, "STOP_GRACE_S", 2.0)
    monkeypatch.setattr(local, "CHECKPOINT_SYNC_S", 0.5)
    request, _ = _request(tmp_path, sqlite_tracking, entry="stubborn", params={"steps": "1000"})
    job = LocalJob(request, job_root=tmp_path / "root", stream=None)
    job.start()
    synced = tmp_path / "ckpt" / "counter.json"  # the request's CheckpointConfig.S3Uri
    deadline = time.monotonic() + 120
    while not (synced.is_file() and json.loads(synced.read_text())["step"] >= 2):
        assert time.monotonic() < deadline and job.proc.poll() is None, job.log_path.read_text()[-2000:]
        time.sleep(0.2)
    assert job.describe()["TrainingJobStatus"] == "InProgress"  # synced while it runs, not only at the end
    pid = int(job.log_path.read_text().split("(pid ")[1].split(")")[0])
    job.stop()
    assert job.describe()["TrainingJobStatus"] == "Stopping"
    final = job.wait(timeout=60)
    assert final["TrainingJobStatus"] == "Stopped", job.log_path.read_text()[-2000:]
    assert "sending SIGKILL" in job.log_path.read_text()
    assert not _alive(pid), f"the stubborn entry {pid} survived the stop"
    assert [t["Status"] for t in final["SecondaryStatusTransitions"]][-2:] == ["Uploading", "Stopped"]


def test_checkpoint_sync_sends_only_what_changed(s3_bucket, tmp_path):
    source = tmp_path / "checkpoints"
    (source / "step-1").mkdir(parents=True)
    (source / "step-1" / "adapter.bin").write_bytes(b"1" * 1000)
    (source / "state.json").write_text('{"step": 1}')
    for uri in (f"s3://{s3_bucket}/ckpt", (tmp_path / "synced").as_uri()):
        location = Location(uri, None)
        assert location.upload_from(source) == 2
        assert location.upload_from(source) == 0
        (source / "state.json").write_text('{"step": 22}')
        assert location.upload_from(source) == 1
        assert location.upload_from(source, everything=True) == 2
        back = tmp_path / f"back-{uri.split(':')[0]}"
        Location(uri, None).download_to(back)
        assert (back / "state.json").read_text() == '{"step": 22}'
        assert (back / "step-1" / "adapter.bin").read_bytes() == b"1" * 1000
        (source / "state.json").write_text('{"step": 1}')


@pytest.mark.slow
def test_a_stop_waits_for_the_entry_to_finish_its_checkpoint_under_a_shell(sqlite_tracking, tmp_path):
    import mlflow

    request, run_id = _request(tmp_path, sqlite_tracking, entry="slow_save", params={"save_seconds": "4"})
    job = LocalJob(request, job_root=tmp_path / "root", stream=None)
    job.start()
    deadline = time.monotonic() + 120
    while "counter: step 2\n" not in job.log_path.read_text():
        assert time.monotonic() < deadline and job.proc.poll() is None, job.log_path.read_text()[-2000:]
        time.sleep(0.2)
    job.stop()
    final = job.wait(timeout=60)
    log = job.log_path.read_text()
    assert final["TrainingJobStatus"] == "Stopped", log[-2000:]
    saved, reported = log.find("counter: checkpoint saved at step"), log.find("launcher: stopped")
    assert 0 < saved < reported, log[-2000:]  # the launcher waited for the entry, not only for `sh -c`
    assert json.loads((tmp_path / "ckpt" / "counter.json").read_text())["final"] is True  # and it was synced
    assert mlflow.get_run(run_id).info.status == "KILLED"
