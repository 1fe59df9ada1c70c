"""The demo flow, run once per session against the session's real `mlflow server` (sqlite + moto S3).

The end-to-end and the browser tests share it, so the suite trains the two demo runs only once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from examples.demo import DemoResult


@dataclass
class DemoFlow:
    result: DemoResult
    output: str  # everything the demo printed
    root: Path


@pytest.fixture(scope="session")
def demo_flow(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> DemoFlow:
    """`make demo`'s code (examples.demo.run_demo) pointed at the test server, in a tmp root."""
    from examples.demo import run_demo
    from ade_mlflow_plugin.errors import AdeError

    root = tmp_path_factory.mktemp("demo")
    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        print(line, flush=True)  # shown by pytest when a test using this fixture fails

    try:
        result = run_demo(root / "work", root / "ade_models", tracking_uri=mlflow_server,
                          job_root=root / "jobs", echo=echo)
    except AdeError as exc:
        pytest.fail(f"{exc.message}\n" + "\n".join(lines[-80:]), pytrace=False)
    return DemoFlow(result, "\n".join(lines), root)
