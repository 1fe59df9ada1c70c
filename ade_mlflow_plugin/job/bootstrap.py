"""A container entrypoint that makes the launcher PID 1, so SageMaker's SIGTERM reaches it.

On stop and spot reclaim SageMaker signals the container's PID 1 only. In AWS's training images that
is the image's start script running the toolkit's `train`, which does not pass SIGTERM on to the user
script (aws/sagemaker-training-toolkit#125), so the entry would never get its chance to checkpoint.
`container_entrypoint()` gives AlgorithmSpecification.ContainerEntrypoint/ContainerArguments that
run this file instead: it fetches `sagemaker_submit_directory` into <base>/code exactly as the toolkit
does, then exec()s `python ade_entry.py`, so the launcher keeps PID 1 and forwards the signal.

This file travels inside the request (base64, in <= 256-character arguments, the service's limit), so
it uses only the standard library and boto3, which every AWS training image has. It is also the job's
one way to fetch its code (the launcher calls :func:`download_archive` when it must fetch the code
itself): the job imports nothing from the client side. The names it shares with the client come from
contract.py; when it travels, the import line below is replaced by those constants
(:func:`traveling_source`), since nothing else of the package is on the machine yet.
"""
from __future__ import annotations

import base64
import json
import os
import sys
import tarfile
import tempfile
import urllib.parse

from ade_mlflow_plugin.job import contract  # ade:contract (replaced by the constants when traveling)

ARG_LIMIT = 256  # characters per ContainerEntrypoint/ContainerArguments item
# Decodes the arguments back into this file and runs it as __main__.
DECODER = "import base64,sys;exec(compile(base64.b64decode(''.join(sys.argv[1:])),'ade-bootstrap','exec'))"
_CONTRACT_IMPORT = "from ade_mlflow_plugin.job import contract  # ade:contract"


def traveling_source() -> str:
    """This file as it travels: the contract import replaced by the constants it uses."""
    with open(__file__, encoding="utf-8") as source:
        text = source.read()
    line = next(line for line in text.splitlines() if line.startswith(_CONTRACT_IMPORT))
    values = ", ".join(f"{name}={getattr(contract, name)!r}" for name in contract.BOOTSTRAP_NAMES)
    return text.replace(line, f"import types\ncontract = types.SimpleNamespace({values})", 1)


def container_entrypoint() -> dict[str, list[str]]:
    """The AlgorithmSpecification keys that start a job through this bootstrap."""
    encoded = base64.b64encode(traveling_source().encode()).decode()
    chunks = [encoded[i:i + ARG_LIMIT] for i in range(0, len(encoded), ARG_LIMIT)]
    return {"ContainerEntrypoint": ["python3", "-c", DECODER], "ContainerArguments": chunks}


def _fail(base: str, message: str) -> None:
    # SageMaker shows output/failure as the job's FailureReason.
    failure = os.path.join(base, contract.FAILURE_FILE)
    os.makedirs(os.path.dirname(failure), exist_ok=True)
    with open(failure, "w") as out:
        out.write(f"ade bootstrap: {message}\n")
    print(f"ade bootstrap: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def download_archive(uri: str, region: str | None, tmp: str) -> str:
    """The local path of the code archive: s3:// is downloaded into tmp, file:// and paths are used in place
    (a file:// URI percent-decoded: pathlib's as_uri() writes a space or a non-ASCII character escaped)."""
    if not uri.startswith("s3://"):
        return urllib.parse.unquote(urllib.parse.urlparse(uri).path) if uri.startswith("file://") else uri
    import boto3

    bucket, key = uri[5:].split("/", 1)
    path = os.path.join(tmp, "code.tar.gz")
    boto3.client("s3", region_name=region).download_file(bucket, key, path)
    return path


def describe_training_job(job_name: str, region: str | None, timeout_s: float) -> dict:
    """The job's own DescribeTrainingJob (run_state asks it why a SIGTERM came): one attempt, short
    timeouts, inside SageMaker's 120 s grace period. Here because the job's boto3 calls live in this file."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 1, "mode": "standard"})
    return boto3.client("sagemaker", region_name=region, config=config).describe_training_job(
        TrainingJobName=job_name)


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
        return json.loads(value)  # the toolkit convention: JSON-encoded strings (contract.decode_value)
    except ValueError:
        return value


def main() -> None:
    base = os.environ.get(contract.ENV_BASE_DIR, contract.DEFAULT_BASE)
    code = os.path.join(base, contract.CODE_DIR)
    try:
        with open(os.path.join(base, contract.HYPERPARAMETERS_FILE)) as config:
            hyper = {k: _decode(v) for k, v in json.load(config).items()}
        uri = hyper[contract.HP_SUBMIT_DIRECTORY]
        os.makedirs(code, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            _unpack(download_archive(uri, hyper.get(contract.HP_REGION) or None, tmp), code)
    except Exception as exc:  # one line for FailureReason; the launcher never started
        _fail(base, f"cannot fetch the job's code: {type(exc).__name__}: {exc}")
    os.chdir(code)
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, contract.SHIM_NAME])  # same PID: the launcher gets the signal


if __name__ == "__main__":
    main()
