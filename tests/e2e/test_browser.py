"""The MLflow UI of the test server, in headless Chromium: the comparison view of the two demo runs shows
both runs' parameters and metrics (eval_loss, tokens_per_second, cost_usd where logged).

Chromium and its driver are Debian's (`make test` installs chromium and chromium-driver); Selenium drives
them through /usr/bin/chromedriver, so nothing is downloaded at run time.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest

# Both e2e modules share the session's demo flow: one xdist worker runs them (make test runs --dist loadgroup).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200), pytest.mark.xdist_group("demo")]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--window-size=1600,1200"]
PARAMS = ("lora_r", "lora_alpha", "num_examples", "max_steps", "learning_rate", "base_model")
METRICS = ("eval_loss", "tokens_per_second", "cost_usd", "train_loss", "perplexity")
LOAD_TIMEOUT_S = 90


def format_metric(value: float) -> str:
    """The MLflow UI's Utils.formatMetric, so expected text matches what a person reads on the page."""
    def js_round(x: float, scale: int) -> str:
        rounded = math.floor(x * scale + 0.5) / scale  # Math.round rounds halves up
        return str(int(rounded)) if rounded == int(rounded) else repr(rounded)

    if value == 0:
        return "0"
    if abs(value) < 1e-3:
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa}e{int(exponent):+d}"
    if abs(value) < 10:
        return js_round(value, 1000)
    if abs(value) < 100:
        return js_round(value, 100)
    return js_round(value, 10)


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


def _section(driver, title: str):
    """The collapsible section of the comparison page headed ``title`` (Parameters, Metrics, ...)."""
    header = driver.find_element("xpath", f"//div[@role='button'][normalize-space(.)='{title}']")
    return header.find_element("xpath", "./..")


def _run_columns(driver) -> list[str]:
    """Run ids in the order of the page's columns (left to right)."""
    links = driver.find_elements("xpath", "//tr[th[normalize-space(.)='Run ID:']]//a")
    return [link.text for link in sorted(links, key=lambda link: link.rect["x"])]


def _param_row(driver, name: str) -> list[str]:
    row = _section(driver, "Parameters").find_element("xpath", f".//tr[th[normalize-space(.)='{name}']]")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)
    cells = row.find_elements("xpath", "./td")
    assert all(cell.is_displayed() for cell in cells), f"parameter {name} is not visible"
    return [cell.text for cell in sorted(cells, key=lambda cell: cell.rect["x"])]


def _scroll_values_grid(driver, grid, top_px: int) -> None:
    """Scroll the metric values grid to a row; the names grid follows it.

    MLflow 3.17's names column follows one scroll event late (it reads the values grid's scroll state
    before React has updated it), so a single jump leaves names and values a jump apart. Two moves,
    to 1 px above the row and then onto it, leave them 1 px apart.
    """
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", grid)
    target = min(top_px, driver.execute_script("return arguments[0].scrollHeight - arguments[0].clientHeight", grid))
    for position in (max(target - 1, 0), target):
        driver.execute_script("arguments[0].scrollTop = arguments[1]", grid, position)
        time.sleep(0.3)  # let React render the scroll before the next one


def _metric_row(driver, name: str) -> list[str]:
    """Values of one metric, left to right, after scrolling its row into view.

    The metrics table is two react-virtualized grids (names, values) scrolled together; rows share their
    `top` offset, and a row outside the grid's 300 px window is in the DOM but not visible. React
    re-renders after a scroll, so the row is looked up again until it shows.
    """
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def visible_row(_driver) -> list[str] | None:
        section = _section(driver, "Metrics")
        link = section.find_element("xpath", f".//div[@role='grid']//a[normalize-space(.)='{name}']")
        top = link.find_element("xpath", "./..").value_of_css_property("top")
        values_grid = link.find_element("xpath",
                                        "./ancestor::div[@role='grid'][1]/following::div[@role='grid'][1]")
        if not link.is_displayed():
            _scroll_values_grid(driver, values_grid, int(float(top.removesuffix("px"))))
            return None
        cells = [cell for cell in values_grid.find_elements("xpath", "./div/div")
                 if cell.value_of_css_property("top") == top]
        if not cells or not all(cell.is_displayed() for cell in cells):
            return None
        return [cell.text for cell in sorted(cells, key=lambda cell: cell.rect["x"])]

    wait = WebDriverWait(driver, 15, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(visible_row, message=f"metric {name} and its values never became visible")


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
    columns = _run_columns(browser)
    assert sorted(columns) == sorted(result.run_ids)

    for name in PARAMS:
        assert _param_row(browser, name) == [runs[run_id].data.params[name] for run_id in columns], name
    shown = [name for name in METRICS if any(name in runs[r].data.metrics for r in columns)]
    assert {"eval_loss", "tokens_per_second"} <= set(shown)
    for name in shown:
        expected = [format_metric(runs[run_id].data.metrics[name]) if name in runs[run_id].data.metrics else ""
                    for run_id in columns]
        assert _metric_row(browser, name) == expected, name

    # What a person saw: the metrics table as last scrolled, then the top of the page.
    for shot in (tmp_path / "compare-runs-metrics.png", tmp_path / "compare-runs.png"):
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        browser.execute_script("window.scrollTo(0, 0)")


def test_format_metric_matches_the_ui_rules():
    # Expected strings are what the UI's own function printed for these values (node, MLflow 3.17.2 bundle).
    values = (0.0, 8.793064e-06, 3.96e-4, 6.8250683, 920.63936, 10516.5873, 12.345, 7.0, 2.0005)
    assert [format_metric(v) for v in values] == \
        ["0", "8.793e-6", "3.960e-4", "6.825", "920.6", "10516.6", "12.35", "7", "2.001"]
