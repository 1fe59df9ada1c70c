"""Reading MLflow's run comparison page in headless Chromium (the `browser` fixture is in conftest.py):
its parameter and metric rows, and the UI's own number formatting.

Chromium and its driver are Debian's (`make test` installs chromium and chromium-driver); Selenium drives
them through /usr/bin/chromedriver, so nothing is downloaded at run time.
"""
from __future__ import annotations

import math
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--window-size=1600,1200"]
PARAMS = ("lora_r", "lora_alpha", "num_examples", "max_steps", "learning_rate", "base_model")
METRICS = ("eval_loss", "tokens_per_second", "cost_usd", "train_loss", "perplexity")
LOAD_TIMEOUT_S = 90


def format_metric(value: float | None) -> str:
    """The MLflow UI's Utils.formatMetric, so expected text matches what a person reads on the page.

    ``None`` is a run without the metric: the UI formats `undefined`, which prints "NaN".
    """
    def js_round(x: float, scale: int) -> str:
        rounded = math.floor(x * scale + 0.5) / scale  # Math.round rounds halves up
        return str(int(rounded)) if rounded == int(rounded) else repr(rounded)

    if value is None:
        return "NaN"
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


# Both metric grids to one scroll offset (each clamped to its own range: the values grid has a horizontal
# scrollbar, so it scrolls 15 px further than the names grid). Returns whether both already were there;
# when not, it moves the one that is not (values first, as a person's wheel does) and the caller polls again.
_ALIGN_GRIDS = """
const [names, values, target] = arguments;
const clamp = (grid) => Math.max(0, Math.min(target, grid.scrollHeight - grid.clientHeight));
for (const grid of [values, names]) {
  if (grid.scrollTop !== clamp(grid)) { grid.scrollTop = clamp(grid); return false; }
}
return true;
"""


def metric_grids(driver) -> tuple:
    """The metrics table's two react-virtualized grids: (names, values)."""
    grids = section(driver, "Metrics").find_elements("xpath", ".//div[@role='grid']")
    assert len(grids) == 2, f"expected the metrics table's names and values grids, found {len(grids)} grids"
    return grids[0], grids[-1]


def _next_page(driver, values) -> int:
    """The values grid's offset one window further down, back to 0 after the last window."""
    top, window, bottom = driver.execute_script(
        "return [arguments[0].scrollTop, arguments[0].clientHeight,"
        " arguments[0].scrollHeight - arguments[0].clientHeight]", values)
    return 0 if top >= bottom else int(top + window)


def metric_row(driver, name: str) -> list[str]:
    """Values of one metric, left to right, once its name and its values are visible side by side.

    The metrics table is two react-virtualized grids (names, values) whose rows share their `top` offset;
    each renders only the rows near its 300 px window. MLflow 3.17 scrolls the names grid after the values
    grid's scroll event, but with the values grid's state from before that event (one event late), so the
    two are out of step after any programmatic scroll. Each poll below therefore waits on page state, not
    on time: it first brings both grids to one offset (the names grid scrolled to where MLflow's sync
    would leave it after a person's continuous scroll), then looks for the name among the rendered rows:
    absent, it pages down; present, it scrolls its row to the top of the window; visible, it reads the
    values cells at the same `top`, and keeps them only if neither grid moved meanwhile.
    """
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    values = metric_grids(driver)[1]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", values)
    target = [driver.execute_script("return arguments[0].scrollTop", values)]

    def in_step(grids: tuple) -> bool:
        return driver.execute_script(_ALIGN_GRIDS, *grids, target[0])

    def visible_row(_driver) -> list[str] | None:
        grids = metric_grids(driver)
        if not in_step(grids):
            return None
        links = grids[0].find_elements("xpath", f".//a[normalize-space(.)='{name}']")
        if not links:  # not rendered: the grids render only the rows near their window
            target[0] = _next_page(driver, grids[1])
            return None
        top = links[0].find_element("xpath", "./..").value_of_css_property("top")
        row_top = int(float(top.removesuffix("px")))
        if target[0] != row_top:  # rendered: bring its row to the top of the window (as far as it goes)
            target[0] = row_top
            return None
        if not links[0].is_displayed():
            return None
        cells = [cell for cell in grids[1].find_elements("xpath", "./div/div")
                 if cell.value_of_css_property("top") == top]
        if not cells or not all(cell.is_displayed() for cell in cells):
            return None
        row = [cell.text for cell in sorted(cells, key=lambda cell: cell.rect["x"])]
        return row if in_step(grids) else None

    # Polls often: each poll that moves a grid returns at once and the next one checks where it landed.
    wait = WebDriverWait(driver, LOAD_TIMEOUT_S, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(visible_row, message=f"metric {name} and its values never became visible")
