"""Reading MLflow's run comparison page in headless Chromium (the `browser` fixture is in conftest.py):
its parameter and metric rows, and the UI's own number formatting.

Chromium and its driver are Debian's (`make test` installs chromium and chromium-driver); Selenium drives
them through /usr/bin/chromedriver, so nothing is downloaded at run time.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

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


def section(driver, title: str):
    """The collapsible section of the comparison page headed ``title`` (Parameters, Metrics, ...)."""
    header = driver.find_element("xpath", f"//div[@role='button'][normalize-space(.)='{title}']")
    return header.find_element("xpath", "./..")


def run_columns(driver) -> list[str]:
    """Run ids in the order of the page's columns (left to right)."""
    links = driver.find_elements("xpath", "//tr[th[normalize-space(.)='Run ID:']]//a")
    return [link.text for link in sorted(links, key=lambda link: link.rect["x"])]


def param_row(driver, name: str) -> list[str]:
    row = section(driver, "Parameters").find_element("xpath", f".//tr[th[normalize-space(.)='{name}']]")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)
    cells = row.find_elements("xpath", "./td")
    assert all(cell.is_displayed() for cell in cells), f"parameter {name} is not visible"
    return [cell.text for cell in sorted(cells, key=lambda cell: cell.rect["x"])]


def scroll_values_grid(driver, grid, top_px: int) -> None:
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


def page_down(driver, grid) -> None:
    """Scroll the values grid one window further (back to the top after the last): a run with many metrics
    (the phase_seconds/* ones) has rows the grid has not rendered at all yet."""
    top, window, bottom = driver.execute_script(
        "return [arguments[0].scrollTop, arguments[0].clientHeight,"
        " arguments[0].scrollHeight - arguments[0].clientHeight]", grid)
    scroll_values_grid(driver, grid, 0 if top >= bottom else int(top + window))


def metric_row(driver, name: str) -> list[str]:
    """Values of one metric, left to right, after scrolling its row into view.

    The metrics table is two react-virtualized grids (names, values) scrolled together; rows share their
    `top` offset; a row near the grid's 300 px window is in the DOM but not visible, one further away is not
    rendered at all until the grid is scrolled near it. React
    re-renders after a scroll, so the row is looked up again until it shows.
    """
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def visible_row(_driver) -> list[str] | None:
        metrics = section(driver, "Metrics")
        links = metrics.find_elements("xpath", f".//div[@role='grid']//a[normalize-space(.)='{name}']")
        if not links:  # not rendered: the grids render only the rows near their window, so page down to it
            page_down(driver, metrics.find_elements("xpath", ".//div[@role='grid']")[-1])
            return None
        link = links[0]
        top = link.find_element("xpath", "./..").value_of_css_property("top")
        values_grid = link.find_element("xpath",
                                        "./ancestor::div[@role='grid'][1]/following::div[@role='grid'][1]")
        if not link.is_displayed():
            scroll_values_grid(driver, values_grid, int(float(top.removesuffix("px"))))
            return None
        cells = [cell for cell in values_grid.find_elements("xpath", "./div/div")
                 if cell.value_of_css_property("top") == top]
        if not cells or not all(cell.is_displayed() for cell in cells):
            return None
        return [cell.text for cell in sorted(cells, key=lambda cell: cell.rect["x"])]

    wait = WebDriverWait(driver, 15, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(visible_row, message=f"metric {name} and its values never became visible")
