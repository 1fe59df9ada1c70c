"""A container entrypoint that makes the launcher PID 1, so SageMaker's SIGTERM reaches it.

On stop and spot reclaim SageMaker signals the container's PID 1 only. In AWS's training images that
is the image's start script running the toolkit's `train`, which does not pass SIGTERM on to the user
script (aws/sagemaker-training-toolkit#125), so the entry would never get its chance to checkpoint.
`container_entrypoint()` gives AlgorithmSpecification.ContainerEntrypoint/ContainerArguments that
run this file instead: it fetches `sagemaker_submit_directory` into <base>/code exactly as the toolkit
does, then exec()s `python ade_entry.py`, so the launcher keeps PID 1 and forwards the signal.

This file travels inside the request (base64, in <= 256-character arguments, the service's limit), so
it uses only the standard library and boto3, which every AWS training image has.
"""
from __future__ import annotations

import base64
import json
import os
import sys
import tarfile
import tempfile

ARG_LIMIT = 256  # characters per ContainerEntrypoint/ContainerArguments item
# Decodes the arguments back into this file and runs it as __main__.
DECODER = "import base64,sys;exec(compile(base64.b64decode(''.join(sys.argv[1:])),'ade-bootstrap','exec'))"


def container_entrypoint() -> dict[str, list[str]]:
    """The AlgorithmSpecification keys that start a job through this bootstrap."""
    with open(__file__, "rb") as source:
        encoded = base64.b64encode(source.read()).decode()
    chunks = [encoded[i:i + ARG_LIMIT] for i in range(0, len(encoded), ARG_LIMIT)]
    return {"ContainerEntrypoint": ["python3", "-c", DECODER], "ContainerArguments": chunks}


def _fail(base: str, message: str) -> None:
    # SageMaker shows output/failure as the job's FailureReason.
    os.makedirs(os.path.join(base, "output"), exist_ok=True)
    with open(os.path.join(base, "output", "failure"), "w") as failure:
        failure.write(f"ade bootstrap: {message}\n")
    print(f"ade bootstrap: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def _archive(uri: str, region: str | None, tmp: str) -> str:
    if not uri.startswith("s3://"):
        return uri[7:] if uri.startswith("file://") else uri
    import boto3

    bucket, key = uri[5:].split("/", 1)
    path = os.path.join(tmp, "code.tar.gz")
    boto3.client("s3", region_name=region).download_file(bucket, key, path)
    return path


def _escapes(name: str) -> bool:
    return name.startswith("/") or ".." in name.split("/")


def _unpack(archive: str, code: str) -> None:
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if _escapes(member.name) or ((member.issym() or member.islnk()) and _escapes(member.linkname)):
                raise ValueError(f"member '{member.name}' points outside the code dir")
        # Where Python has it, the "data" filter also refuses device files and odd modes.
        tar.extractall(code, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))


def _decode(value: str) -> object:
    try:
        return json.loads(value)  # the toolkit convention: JSON-encoded strings
    except ValueError:
        return value


def main() -> None:
    base = os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")
    code = os.path.join(base, "code")
    try:
        with open(os.path.join(base, "input", "config", "hyperparameters.json")) as config:
            hyper = {k: _decode(v) for k, v in json.load(config).items()}
        uri = hyper["sagemaker_submit_directory"]
        os.makedirs(code, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            _unpack(_archive(uri, hyper.get("sagemaker_region"), tmp), code)
    except Exception as exc:  # one line for FailureReason; the launcher never started
        _fail(base, f"cannot fetch the job's code: {type(exc).__name__}: {exc}")
    os.chdir(code)
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "ade_entry.py"])  # same PID: the launcher gets the signal


if __name__ == "__main__":
    main()
