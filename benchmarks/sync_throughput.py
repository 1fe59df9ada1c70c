"""Sync throughput: `ade-mlflow sync` of a ~200 MB model version vs plain `mlflow artifacts download`.

Starts its own moto S3 server and `mlflow server` (sqlite backend, artifacts proxied to moto) on
127.0.0.1, registers a ~200 MB version, then measures in one run, alternating the order each round:
  baseline: mlflow.artifacts.download_artifacts("models:/NAME/1")  (what `mlflow artifacts download` runs)
  sync:     ModelSyncManager.sync(NAME, 1) into an empty root     (download + verify + hash + rename)
  re-sync:  the same sync again, the version already present      (bytes downloaded must be 0)
  hash:     sha256 of the largest file, read back from the page cache (what hashing alone costs)
plus each as its CLI command once (process start included). Prints medians and sync/baseline (target
<= 1.1). Everything it created is deleted and every process it started is stopped, by PID.

--sync-download picks how the sync calls download (the baseline always keeps MLflow's defaults):
  ade (default): the server offers presigned downloads (S3 store), so sync fetches each file from its
      presigned URL itself (registry/fetch.py): byte ranges streamed to their offsets, sha256 taken in
      order while they land.
  mlflow: ADE_PRESIGNED_FETCH=false, MLflow's presigned multipart writer (it reads each 100 MB range
      whole into memory, ranges land out of order), every file hashed after it lands. This was sync's
      download until 2026-11: ratio 1.18-1.32, never under baseline + hash of the largest file.
  inorder: MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD=false, the server's proxied stream, hashed while it
      streams. Much slower here (ratio 2.3-3.2 in 2026-11): MLflow's server copies each file from S3 to
      a temp dir before it sends the first byte.

    .venv/bin/python benchmarks/sync_throughput.py [--size-mb 200] [--rounds 5] [--sync-download ade|mlflow|inorder]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: its tests' server starter
from tests.servers import popen_dying_with_parent, start_mlflow_server, stop_server, wait_http  # noqa: E402

BUCKET = "ade-bench-artifacts"
MODEL = "ade-bench-sync"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return popen_dying_with_parent(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)


def _make_version(work: Path, size_mb: int) -> tuple[str, str]:
    """Log ~size_mb of incompressible files as a run's model dir and register them."""
    import mlflow
    from mlflow import MlflowClient

    src = work / "model-src"
    (src / "adapter").mkdir(parents=True)
    big, adapter = size_mb * 8 // 10, size_mb * 15 // 100
    rest = size_mb - big - adapter
    for rel, mb in (("model.safetensors", big), ("adapter/adapter_model.safetensors", adapter),
                    ("tokenizer.bin", rest)):
        with open(src / rel, "wb") as fh:
            for _ in range(mb):
                fh.write(os.urandom(1 << 20))
    (src / "MLmodel").write_text("flavors:\n  transformers: {}\n")
    (src / "adapter" / "adapter_config.json").write_text('{"r": 16}')
    with mlflow.start_run() as run:
        mlflow.log_metric("eval_loss", 1.0)
        mlflow.log_artifacts(str(src), "model")
    shutil.rmtree(src)
    client = MlflowClient()
    client.create_registered_model(MODEL)
    mv = client.create_model_version(MODEL, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return run.info.run_id, str(mv.version)


def _timed(fn) -> tuple[float, object]:  # noqa: ANN001
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


_SYNC_ENV = {
    "ade": {},
    "mlflow": {"ADE_PRESIGNED_FETCH": "false"},
    "inorder": {"MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false"},
}


def _sync_env(mode: str) -> dict[str, str]:
    # Both are read per sync/download call; they are process-wide, so they are set only around sync
    # calls (nothing else runs then).
    return _SYNC_ENV[mode]


def _with_env(extra: dict[str, str], fn, *args):  # noqa: ANN001, ANN202
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        return fn(*args)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _measure(work: Path, version: str, rounds: int, mode: str) -> dict[str, list[float]]:
    import mlflow

    from ade_mlflow_plugin.config.registry import ModelRegistryConfig
    from ade_mlflow_plugin.registry.sync import ModelSyncManager

    times: dict[str, list[float]] = {"baseline": [], "sync": [], "resync": [], "hash": []}
    resync_bytes: list[int] = []
    for i in range(rounds):
        dl, root = work / f"dl-{i}", work / f"root-{i}"

        def baseline() -> None:
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL}/{version}", dst_path=str(dl))

        def sync() -> object:
            # The config is made inside the env: ADE_PRESIGNED_FETCH is read when it is built.
            return _with_env(_sync_env(mode), lambda: ModelSyncManager(
                ModelRegistryConfig(root=root, load_entry_points=False)).sync(MODEL, version))

        order = [("baseline", baseline), ("sync", sync)]
        for label, fn in (order if i % 2 == 0 else order[::-1]):
            times[label].append(_timed(fn)[0])
        t, result = _timed(sync)
        times["resync"].append(t)
        resync_bytes.append(result.downloaded_bytes)
        largest = max((p for p in dl.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        times["hash"].append(_timed(lambda: _sha256(largest))[0])
        shutil.rmtree(dl)
        if i < rounds - 1:
            shutil.rmtree(root)
    times["resync_bytes"] = resync_bytes  # type: ignore[assignment]
    return times


def _profile(work: Path, version: str) -> None:
    import cProfile
    import pstats

    from ade_mlflow_plugin.config.registry import ModelRegistryConfig
    from ade_mlflow_plugin.registry.sync import ModelSyncManager

    manager = ModelSyncManager(ModelRegistryConfig(root=work / "profile-root", load_entry_points=False))
    profiler = cProfile.Profile()
    profiler.runcall(manager.sync, MODEL, version)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def _cli_times(work: Path, version: str, env: dict[str, str], mode: str) -> dict[str, float]:
    root = work / "cli-root"
    # The CLI sync processes alone get the --sync-download setting.
    sync_env = {**env, **_sync_env(mode)}
    cmds = {
        "mlflow artifacts download": [sys.executable, "-m", "mlflow", "artifacts", "download", "-u",
                                      f"models:/{MODEL}/{version}", "-d", str(work / "cli-dl")],
        "ade-mlflow sync": [sys.executable, "-m", "ade_mlflow_plugin.cli", "sync", f"{MODEL}/{version}",
                            "--root", str(root)],
        "ade-mlflow sync (again)": [sys.executable, "-m", "ade_mlflow_plugin.cli", "sync", f"{MODEL}/{version}",
                                    "--root", str(root)],
    }
    out = {}
    for label, cmd in cmds.items():
        start = time.perf_counter()
        subprocess.run(cmd, env=env if label.startswith("mlflow") else sync_env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out[label] = time.perf_counter() - start
    return out


def _cleanup(run_id: str | None) -> None:
    import boto3
    from mlflow import MlflowClient

    client = MlflowClient()
    try:
        client.delete_registered_model(MODEL)
        if run_id:
            client.delete_run(run_id)
    finally:
        bucket = boto3.resource("s3").Bucket(BUCKET)
        bucket.objects.all().delete()
        bucket.delete()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sync-download", choices=tuple(_SYNC_ENV), default="ade",
                        help="how the sync calls download (see the module doc); the baseline keeps "
                             "MLflow's defaults")
    parser.add_argument("--profile", action="store_true", help="cProfile one extra sync and print the top")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ade-sync-bench-"))
    moto_port, mlflow_port = _free_port(), _free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}",
           "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}", "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    env.pop("AWS_PROFILE", None)
    os.environ.update(env)
    procs: list[subprocess.Popen] = []
    run_id = None
    try:
        bindir = Path(sys.executable).parent
        procs.append(_start([str(bindir / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)],
                            work / "moto.log", env, work))
        wait_http(f"http://127.0.0.1:{moto_port}/moto-api/", proc=procs[-1])
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        procs.append(start_mlflow_server(work, mlflow_port, f"sqlite:///{work}/mlflow.db", f"s3://{BUCKET}/", env))
        t_up, (run_id, version) = _timed(lambda: _make_version(work, args.size_mb))
        print(f"registered {MODEL} v{version}: {args.size_mb} MB on moto S3 (upload {t_up:.1f} s)")

        times = _measure(work, version, args.rounds, args.sync_download)
        resync_bytes = times.pop("resync_bytes")
        med = {k: statistics.median(v) for k, v in times.items()}
        mbps = args.size_mb / med["sync"]
        print(f"rounds: {args.rounds} (order alternated), {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
              f"sync download: {args.sync_download}")
        for label in ("baseline", "sync", "resync", "hash"):
            print(f"  {label:9s} median {med[label]:6.2f} s   runs " + " ".join(f"{t:.2f}" for t in times[label]))
        print(f"  sync throughput {mbps:.0f} MB/s; re-sync downloaded bytes: {resync_bytes}")
        print(f"RATIO sync / plain mlflow download (baseline) = {med['sync'] / med['baseline']:.3f} "
              "(target <= 1.1)")
        print(f"hash alone: sha256 of the largest file = {med['hash'] / med['baseline']:.3f} x baseline")
        print(f"RATIO re-sync / plain mlflow download = {med['resync'] / med['baseline']:.3f}")
        if args.profile:
            _profile(work, version)
        cli = _cli_times(work, version, env, args.sync_download)
        print("CLI, process start included:")
        for label, t in cli.items():
            print(f"  {label:28s} {t:6.2f} s")
        print(f"RATIO CLI sync / CLI mlflow artifacts download = "
              f"{cli['ade-mlflow sync'] / cli['mlflow artifacts download']:.3f}")
        return 0
    finally:
        try:
            if len(procs) == 2:
                _cleanup(run_id)
        finally:
            for proc in reversed(procs):
                stop_server(proc)
            shutil.rmtree(work, ignore_errors=True)
            print(f"cleaned up: servers stopped (PIDs {[p.pid for p in procs]}), {work} removed")


if __name__ == "__main__":
    sys.exit(main())
