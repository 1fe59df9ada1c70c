"""`make demo`'s flow end to end against a real `mlflow server` (sqlite store, artifacts proxied to moto S3).

Two local-mode runs through `mlflow run -b ade-sagemaker`, both registered: the first from the tiny base,
promoted to `production`; the second trains on from `models:/NAME@production` and names the first as its
parent. The lower eval_loss is then promoted to `production` and synced into ADE provider storage: checked in
the registry, on disk and in S3.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from examples.demo import MODEL_NAME, SETTINGS, STEPS, TRAINING, run_logged, summary
from ade_mlflow_plugin.errors import AdeError
from tests.conftest import REPO_ROOT
from tests.e2e.comparison_page import (LOAD_TIMEOUT_S, METRICS, PARAMS, format_metric, metric_row, param_row,
                                        run_columns)

# One module, so that one xdist worker (make test runs --dist loadscope) trains the session's demo flow once
# for the flow checks and the browser check.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _client(tracking: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking, registry_uri=tracking)


def test_two_local_mode_runs_are_tracked_and_registered(demo_flow):
    result = demo_flow.result
    client = _client(result.tracking_uri)
    assert [row.lora_r for row in result.rows] == [s["lora_r"] for s in SETTINGS]
    for row, setting in zip(result.rows, SETTINGS):
        run = client.get_run(row.run_id)
        assert run.info.status == "FINISHED"
        assert run.info.experiment_id == result.experiment_id
        assert {k: run.data.params[k] for k in setting} == setting
        assert run.data.params["eval_samples"] == TRAINING["eval_samples"]  # an option the MLproject omits
        assert run.data.tags["mlflow.project.backend"] == "ade-sagemaker"
        assert run.data.tags["sagemaker.mode"] == "local"
        assert run.data.tags["sagemaker.status"] == "Completed"
        assert row.eval_loss == run.data.metrics["eval_loss"] > 0
        assert client.get_metric_history(row.run_id, "tokens_per_second"), "no throughput was logged"
        assert client.get_model_version(MODEL_NAME, row.version).run_id == row.run_id
    first, second = result.rows
    assert (first.parent, second.parent) == ("", first.version)  # the second trained on from the first
    assert client.get_run(second.run_id).data.params["base_model"] == f"models:/{MODEL_NAME}@production"
    assert client.get_model_version(MODEL_NAME, second.version).tags["ade.base_model"] == \
        f"models:/{MODEL_NAME}/{first.version}"
    # Both runs mined the same frozen snapshot of the package, so their data is the same.
    digests = {client.get_run(row.run_id).data.tags["ade.dataset_digest"] for row in result.rows}
    assert len(digests) == 1


def test_the_lower_eval_loss_is_promoted_to_production(demo_flow):
    result = demo_flow.result
    client = _client(result.tracking_uri)
    losses = {row.version: client.get_run(row.run_id).data.metrics["eval_loss"] for row in result.rows}
    best = min(losses, key=lambda version: (losses[version], int(version)))
    assert client.get_model_version_by_alias(MODEL_NAME, "production").version == best
    assert result.production_version == best
    assert [row.alias for row in result.rows if row.version == best] == ["production"]


def test_production_version_lands_in_ade_storage(demo_flow):
    result = demo_flow.result
    production = next(row for row in result.rows if row.alias == "production")
    version_dir = result.models_root / "registry" / f"{MODEL_NAME}-v{production.version}"
    assert result.landed == version_dir == production.landed
    meta = json.loads((version_dir / "metadata.json").read_text())
    assert (meta["name"], meta["version"], meta["source_run"]) == (MODEL_NAME, production.version,
                                                                  production.run_id)
    artifacts = version_dir / "model_artifacts"
    on_disk = {p.relative_to(artifacts).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in artifacts.rglob("*") if p.is_file()}
    assert on_disk == {path: info["sha256"] for path, info in meta["files"].items()}
    assert "MLmodel" in on_disk
    # The first version is an adapter on the tiny base; the second was merged (its base lived in the job).
    assert any(p.endswith("adapter_config.json") for p in on_disk) == (not production.parent)
    assert meta["tags"].get("ade.parent_version", "") == production.parent
    run = _client(result.tracking_uri).get_run(production.run_id)
    performance = json.loads((version_dir / "performance_metrics.json").read_text())
    assert performance["eval_loss"] == run.data.metrics["eval_loss"]
    assert performance["tokens_per_second"] == run.data.metrics["tokens_per_second"]
    providers = json.loads((result.models_root / "providers.json").read_text())
    served = providers["models"][MODEL_NAME]["aliases"]["production"]
    assert served["version"] == production.version and served["path"] == str(version_dir)
    # The first version was synced when it was promoted (step 3); only the production one is served.
    assert set(providers["models"][MODEL_NAME]["aliases"]) == {"production"}


def test_synced_files_are_the_ones_in_s3_behind_the_server(demo_flow):
    import boto3

    meta = json.loads((demo_flow.result.landed / "metadata.json").read_text())
    s3 = boto3.client("s3")
    keys = [obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="mlflow-artifacts")
            for obj in page.get("Contents", [])]
    mlmodels = [key for key in keys if key.endswith("/MLmodel")]
    stored = {hashlib.sha256(s3.get_object(Bucket="mlflow-artifacts", Key=key)["Body"].read()).hexdigest()
              for key in mlmodels}
    assert meta["files"]["MLmodel"]["sha256"] in stored


def test_summary_names_runs_versions_and_where_the_model_landed(demo_flow):
    result = demo_flow.result
    table = summary(result)
    for row in result.rows:
        line = next(line for line in table.splitlines() if row.run_id[:8] in line)
        assert f"{row.eval_loss:.4f}" in line and f" {row.version} " in line
    production_line = next(line for line in table.splitlines() if "production " in line)
    assert str(result.landed) in production_line
    assert f"{result.tracking_uri}/#/compare-runs?runs=" in table
    for step in range(1, STEPS + 1):  # progress was visible all the way
        assert f"==> {step}/{STEPS}" in demo_flow.output
    second = table.splitlines()[3]
    assert f" v{result.rows[0].version} " in second  # the "trained on" column


def test_a_silent_step_prints_a_heartbeat_and_a_failed_step_is_one_error(tmp_path):
    lines: list[str] = []
    script = "import time; print('start', flush=True); time.sleep(2.5); print('end')"
    run_logged([sys.executable, "-c", script], {}, lines.append, "quiet step", heartbeat_s=1.0)
    assert lines[1] == "start" and lines[-1] == "end"
    assert any("quiet step: still working" in line for line in lines[2:-1])
    with pytest.raises(AdeError, match=r"demo step 'boom' failed with exit code 3; its output is above"):
        run_logged([sys.executable, "-c", "raise SystemExit(3)"], {}, lines.append, "boom")


def test_demo_refuses_a_file_as_models_root(tmp_path):
    target = tmp_path / "models.txt"
    target.write_text("not a folder")
    proc = subprocess.run([sys.executable, "-m", "examples.demo", "--workdir", str(tmp_path / "w"),
                           "--models-root", str(target)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"ade-mlflow demo: error: --models-root '{target}' is a file; "
                                   "pass a folder (it is created when missing)")
    assert not (tmp_path / "w").exists()


# ---- the same runs in the MLflow UI: the comparison view, in headless Chromium -----------------------

def test_comparison_view_shows_both_runs_params_and_metrics(demo_flow, browser, tmp_path):
    from mlflow import MlflowClient
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    result = demo_flow.result
    client = MlflowClient(result.tracking_uri)
    runs = {run_id: client.get_run(run_id) for run_id in result.run_ids}
    url = (f"{result.tracking_uri}/#/compare-runs?runs={json.dumps(result.run_ids)}"
           f"&experiments={json.dumps([result.experiment_id])}")
    browser.get(url)
    wait = WebDriverWait(browser, LOAD_TIMEOUT_S)
    wait.until(ec.visibility_of_element_located(("xpath", "//*[normalize-space(.)='Comparing 2 Runs from 1 Experiment']")))
    wait.until(ec.presence_of_element_located(("xpath", "//div[@role='grid']//a[normalize-space(.)='eval_loss']")))
    columns = run_columns(browser)
    assert sorted(columns) == sorted(result.run_ids)

    for name in PARAMS:
        assert param_row(browser, name) == [runs[run_id].data.params[name] for run_id in columns], name
    shown = [name for name in METRICS if any(name in runs[r].data.metrics for r in columns)]
    assert {"eval_loss", "tokens_per_second"} <= set(shown)
    for name in shown:
        expected = [format_metric(runs[run_id].data.metrics.get(name)) for run_id in columns]
        assert metric_row(browser, name) == expected, name

    # What a person saw: the metrics table as last scrolled, then the top of the page.
    for shot in (tmp_path / "compare-runs-metrics.png", tmp_path / "compare-runs.png"):
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        browser.execute_script("window.scrollTo(0, 0)")


def test_format_metric_matches_the_ui_rules():
    # Expected strings are what the UI's own function printed for these values (node, MLflow 3.17.2 bundle);
    # None stands for a run without the metric, which the UI formats as undefined.
    values = (0.0, 8.793064e-06, 3.96e-4, 6.8250683, 920.63936, 10516.5873, 12.345, 7.0, 2.0005, None)
    assert [format_metric(v) for v in values] == \
        ["0", "8.793e-6", "3.960e-4", "6.825", "920.6", "10516.6", "12.35", "7", "2.001", "NaN"]
