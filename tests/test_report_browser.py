"""The report page in a real browser: headless Chromium driven by Selenium, offline.

Skipped when Debian's chromium / chromedriver (or selenium) are missing, except with
INDUCTION_JAX_REQUIRE_BROWSER=1 (set by .ci/run), where that is a failure."""

import importlib.util
import os
from pathlib import Path

import pytest

from induction_jax.report import gather, render
from induction_jax.rundir import RunDir

from test_report import embedded, make_run

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def _missing() -> list[str]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package")
    return missing


if _missing():
    if os.environ.get("INDUCTION_JAX_REQUIRE_BROWSER") == "1":
        pytest.fail(f"INDUCTION_JAX_REQUIRE_BROWSER=1 but {', '.join(_missing())} missing; install chromium and "
                    f"chromium-driver (apt-get) and the test extra", pytrace=False)
    pytest.skip(f"{', '.join(_missing())} missing (apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The report of a real 2-member run (written beside it, so the shared run stays untouched)."""
    run = make_run(tmp_path_factory, "two")
    path = tmp_path_factory.mktemp("browser") / "report.html"
    path.write_text(render(gather(RunDir(run))))
    return path


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")     # a fresh profile: no first-run or sync traffic
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-dev-shm-usage", "--window-size=1300,1000", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager never looks anything up on the network.
    d = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


@pytest.fixture
def page(driver, report):
    driver.get_log("browser")                  # drop what earlier pages logged
    driver.get(report.as_uri())
    return driver


def center(d, element):
    """Scroll `element` to the middle of the window (clear of the sticky top bar); returns it once
    the browser has rendered two frames since, so that the scroll's own event (dispatched at the
    next frame, later on a loaded machine) has fired: the page hides its tooltip on scroll, and a
    late one would hide the tooltip a hover had just shown."""
    d.execute_script("arguments[0].scrollIntoView({block: 'center', inline: 'center'})", element)
    d.execute_async_script("const done = arguments[arguments.length - 1];"
                           "requestAnimationFrame(() => requestAnimationFrame(() => done()));")
    return element


def script_errors(d) -> list:
    """SEVERE console entries plus what the page's own window.onerror hook recorded."""
    severe = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]
    return severe + list(d.execute_script("return window.__reportErrors || ['the error hook is missing']"))


def test_page_loads_without_script_errors(page):
    assert page.execute_script("return Array.isArray(window.__reportErrors)")
    assert script_errors(page) == []
    assert page.find_element(By.ID, "attn-grid").get_attribute("data-digest")
    # nothing wider than the window: every table scrolls inside its own container
    assert page.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_member_selector_switches_every_view(page, report):
    data = embedded(report.read_text())
    labels = [m["label"] for m in data["run"]["members"]]
    grid = page.find_element(By.ID, "attn-grid")
    before = {"digest": grid.get_attribute("data-digest"),
              "zoom": page.find_element(By.ID, "zoom-title").text,
              "label": page.find_element(By.ID, "mv-label").text,
              "chart": page.find_element(By.CSS_SELECTOR, "#chart-ind .title").text,
              "timings": page.find_element(By.ID, "member-timings").text}
    assert before["label"] == labels[0] and labels[0] in before["zoom"]

    Select(page.find_element(By.ID, "member-select")).select_by_value("1")
    grid = page.find_element(By.ID, "attn-grid")
    assert grid.get_attribute("data-member") == "1"
    assert grid.get_attribute("data-digest") != before["digest"]            # other patterns drawn
    assert labels[1] in page.find_element(By.ID, "zoom-title").text
    assert page.find_element(By.ID, "mv-label").text == labels[1]
    assert labels[1] in page.find_element(By.CSS_SELECTOR, "#chart-ind .title").text
    assert page.find_element(By.ID, "member-timings").text != before["timings"]
    assert {r.get_attribute("data-member") for r in page.find_elements(By.CSS_SELECTOR, "tr.selected")} == {"1"}

    page.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_LEFT)      # keyboard: back to member 0
    assert Select(page.find_element(By.ID, "member-select")).first_selected_option.get_attribute("value") == "0"
    assert page.find_element(By.ID, "attn-grid").get_attribute("data-digest") == before["digest"]
    center(page, page.find_element(By.CSS_SELECTOR, '#circuit-table tbody tr[data-member="1"]')).click()  # a row
    assert page.find_element(By.ID, "mv-label").text == labels[1]
    assert script_errors(page) == []


def column(d, table_id: str, index: int) -> list[float]:
    return [float(v) for v in d.execute_script(
        "return Array.from(document.getElementById(arguments[0]).tBodies[0].rows)"
        ".map(r => r.cells[arguments[1]].getAttribute('data-v')).filter(v => v !== '')", table_id, index)]


def test_tables_sort_numerically_by_a_clicked_column(page):
    for table_id, header in (("circuit-table", "IH score"), ("head-scores-table", "IH")):
        ths = page.find_elements(By.CSS_SELECTOR, f"#{table_id} thead th")
        index = [th.text.strip() for th in ths].index(header)
        assert ths[index].get_attribute("title")                        # abbreviated, with the full name
        center(page, ths[index]).click()
        asc = column(page, table_id, index)
        assert len(asc) >= 2 and asc == sorted(asc)
        assert "sorted-asc" in ths[index].get_attribute("class")
        ths[index].click()
        desc = column(page, table_id, index)
        assert desc == sorted(asc, reverse=True)
    assert script_errors(page) == []


def test_hovering_a_heatmap_cell_shows_value_and_tokens(page, report):
    att = embedded(report.read_text())["circuit"]["attention"]
    T, P, tokens = att["T"], att["period"], att["tokens"]
    q, k = T - 1, T - P                         # the last query and its induction target (q - P + 1)
    canvas = center(page, page.find_element(By.ID, "zoom-canvas"))
    w, h = canvas.size["width"], canvas.size["height"]
    ActionChains(page).move_to_element_with_offset(
        canvas, int((k + 0.5) / T * w - w / 2), int((q + 0.5) / T * h - h / 2)).perform()
    tip = page.find_element(By.ID, "tooltip")
    assert tip.is_displayed()
    text = tip.text
    assert f"query (destination) position {q}: token {tokens[q]}" in text
    assert f"key (source) position {k}: token {tokens[k]}" in text
    assert "attention " in text and "induction target" in text
    # the source and destination positions are highlighted along the axes and in the token strip
    assert page.find_elements(By.CSS_SELECTOR, ".zoom-axis.y span.hl-q")
    assert page.find_elements(By.CSS_SELECTOR, ".zoom-axis.x span.hl-k")
    assert len(page.find_elements(By.CSS_SELECTOR, ".strip span.hl-q, .strip span.hl-k")) == 2
    # a head in the grid enlarges on click
    center(page, page.find_element(By.CSS_SELECTOR, '.head-cell[data-head="L0H1"]')).click()
    assert "L0H1" in page.find_element(By.ID, "zoom-title").text
    assert script_errors(page) == []


def test_screenshot(page, tmp_path):
    page.execute_script("document.getElementById('member').scrollIntoView()")
    path = tmp_path / "report.png"
    assert page.save_screenshot(str(path))
    assert path.is_file() and path.stat().st_size > 10_000
    assert script_errors(page) == []


def overflowing(d) -> list[str]:
    """Elements reaching past the window's sides, other than inside a container that scrolls (or
    clips) them, or a closed <details>."""
    return d.execute_script("""
      const W = document.documentElement.clientWidth;
      const contained = (e) => { for (let p = e.parentElement; p; p = p.parentElement) {
        const o = getComputedStyle(p).overflowX;
        if (o === 'auto' || o === 'scroll' || o === 'hidden' || (p.tagName === 'DETAILS' && !p.open)) return true; }
        return false; };
      return Array.from(document.body.querySelectorAll('*')).filter((e) => {
        const r = e.getBoundingClientRect();
        return r.width > 0 && (r.right > W + 1 || r.left < -1) && !contained(e);
      }).map((e) => e.tagName + '#' + e.id + '.' + e.className);""")


@pytest.mark.parametrize("width, height", [(1400, 1000), (390, 844)])
def test_the_page_leads_with_the_findings_and_fits_the_screen(driver, report, width, height):
    """A desktop and a phone: the findings are the first thing below the title, within the
    first screen, and nothing is wider than the window (tables scroll inside their own box)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 700})
    try:
        driver.get_log("browser")
        driver.get(report.as_uri())
        assert driver.execute_script("return window.innerWidth") == width
        assert driver.execute_script("return document.documentElement.scrollWidth") <= width
        assert overflowing(driver) == []
        ids = driver.execute_script("return Array.from(document.querySelectorAll('main > section')).map(s => s.id)")
        assert ids[:2] == ["top", "findings"] and ids[-1] == "config"
        top = driver.execute_script("return document.getElementById('findings').getBoundingClientRect().top")
        assert top < height / 2
        assert not driver.find_element(By.ID, "config-details").get_attribute("open")      # folded
        path = Path(f"/tmp/induction-jax-report-{width}x{height}.png")
        assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000
        assert script_errors(driver) == []
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_the_analysis_figures_follow_the_member_selector(page):
    """The ensemble box plots group each member's heads by role and mark the selected member's;
    the positional QK, full OV and eigenvalue figures are redrawn for the selected member."""
    ids = ("fig-pos_qk", "fig-full_ov", "fig-ov_eig")
    drawn = """return arguments[0].map((id) => { const b = document.getElementById(id), c = b.querySelector('canvas');
                 return [b.getAttribute('data-member'), c ? c.toDataURL() : b.innerHTML]; })"""
    roles = page.find_element(By.ID, "ens-roles")
    assert roles.get_attribute("data-grouping") == "role"
    text = roles.text.replace("\n", " ")
    assert "previous-token head" in text and "best induction head" in text and "other heads" in text
    n_panels = len(page.find_elements(By.CSS_SELECTOR, "#ens-roles svg"))
    assert n_panels == 3 and len(page.find_elements(By.CSS_SELECTOR, "#ens-roles circle.sel")) == 2 * n_panels * 2
    marked = page.execute_script("return Array.from(document.querySelectorAll('#ens-roles circle.sel'))"
                                 ".map(c => c.getAttribute('data-tip'))")
    before = page.execute_script(drawn, list(ids))
    assert [m for m, _ in before] == ["0", "0", "0"]
    Select(page.find_element(By.ID, "member-select")).select_by_value("1")
    after = page.execute_script(drawn, list(ids))
    assert [m for m, _ in after] == ["1", "1", "1"]
    assert all(a[1] != b[1] for a, b in zip(after, before))               # every figure redrawn, differently
    assert page.execute_script("return Array.from(document.querySelectorAll('#ens-roles circle.sel'))"
                               ".map(c => c.getAttribute('data-tip'))") != marked
    assert script_errors(page) == []


def test_the_enlarged_pattern_has_readable_token_labels_and_zooms(page):
    canvas = page.find_element(By.ID, "zoom-canvas")
    width = canvas.size["width"]
    px = page.execute_script("return parseFloat(getComputedStyle(document.querySelector('.zoom-axis.y span')).fontSize)")
    assert px >= 10
    buttons = {b.text: b for b in page.find_elements(By.CSS_SELECTOR, "#zoom-title .zoom-btn")}
    center(page, buttons["+"]).click()
    assert page.find_element(By.ID, "zoom-canvas").size["width"] > width
    assert script_errors(page) == []
