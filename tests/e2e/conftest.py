"""The demo flow, run once per session against the session's real `mlflow server` (sqlite + moto S3).

The end-to-end and the browser tests share it, so the suite trains the two demo runs only once.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from examples.demo import DemoResult
from tests.e2e.comparison_page import CHROMEDRIVER, CHROMIUM, FLAGS


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


@pytest.fixture
def browser(tmp_path: Path):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run `make test` (it installs Debian's chromium and "
                    "chromium-driver) or `apt-get install chromium chromium-driver`", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path / "chromium-profile"
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    try:
        yield driver
    finally:
        driver.quit()  # stops Chromium and the chromedriver process selenium started
        shutil.rmtree(profile, ignore_errors=True)
