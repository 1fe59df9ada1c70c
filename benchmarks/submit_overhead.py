"""Submission overhead of the ade-sagemaker backend on this repository's own tree, against moto.

Prints: tarball build time and size, bytes uploaded and time from run() to "job created" for a first
and a second (unchanged) submission, and the ratio of the second to a bare CreateTrainingJob call
with the same request (the baseline, measured in the same run).

    .venv/bin/python benchmarks/submit_overhead.py
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.update({"MLFLOW_DISABLE_TELEMETRY": "true", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
                   "AWS_SHARED_CREDENTIALS_FILE": os.devnull})


def main() -> None:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run_benchmark(Path(tmp))
    finally:
        server.stop()


def run_benchmark(tmp: Path) -> None:
    import boto3
    import mlflow

    from ade_mlflow_plugin.backend import packaging
    from ade_mlflow_plugin.backend.aws import AwsClients
    from ade_mlflow_plugin.backend.project_backend import AdeSageMakerBackend

    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    experiment = mlflow.get_experiment_by_name("Default").experiment_id
    boto3.client("s3").create_bucket(Bucket="ade-bench")

    start = time.perf_counter()
    tarball = packaging.build_project_tarball(REPO, tmp / "tar")
    tar_s = time.perf_counter() - start

    created: list[float] = []

    def clients(**kwargs) -> AwsClients:
        made = AwsClients(**kwargs)
        made.sagemaker.meta.events.register("after-call.sagemaker.CreateTrainingJob",
                                            lambda **_: created.append(time.perf_counter()))
        return made

    backend = AdeSageMakerBackend(clients_factory=clients, console=open(os.devnull, "w"))
    config = {"role_arn": "arn:aws:iam::123456789012:role/bench", "bucket": "ade-bench", "region": "us-east-1",
              "image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/bench:1", "wait": False,
              "SYNCHRONOUS": False}
    params = {"codebase": str(REPO / "ade_mlflow_plugin")}
    rounds = []
    for _ in range(2):
        t0 = time.perf_counter()
        backend.run(str(REPO), "prepare_data", params, None, dict(config), mlflow.get_tracking_uri(), experiment)
        rounds.append((created[-1] - t0, backend.last_submission.bytes_uploaded))

    request = dict(backend.last_submission.request)
    sagemaker = AwsClients(region="us-east-1").sagemaker
    bare = []
    for i in range(5):
        request["TrainingJobName"] = f"bare-{i}"
        t0 = time.perf_counter()
        sagemaker.create_training_job(**request)
        bare.append(time.perf_counter() - t0)
    bare_s = statistics.median(bare)

    print(f"tree: {REPO} ({tarball.file_count} files in the tarball)")
    print(f"tarball: {tar_s * 1000:.1f} ms to build, {tarball.size / 1024:.1f} KiB")
    for label, (seconds, sent) in zip(("first", "second"), rounds):
        print(f"{label} submission: run() -> job created {seconds * 1000:.1f} ms, uploaded {sent} bytes")
    print(f"bare CreateTrainingJob (median of 5): {bare_s * 1000:.1f} ms")
    print(f"ratio second submission / bare CreateTrainingJob: {rounds[1][0] / bare_s:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
