"""How fast a report.html opens in headless Chromium: file size, and from the Navigation Timing
API the time to DOMContentLoaded and to the load event (the page's views are drawn for the
first member at DOMContentLoaded, so the load event comes after them), over several loads
in a fresh profile; then the time one member switch takes (every view redrawn).

    python benchmarks/report_load.py RUN_DIR/report.html [--loads 5] [--width 1400 --height 1000]

Needs Debian's chromium and chromedriver (/usr/bin) and selenium (the test extra). A
measurement to record in docs/performance.md, not a test: wall times depend on the host.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

TIMING = """const t = performance.getEntriesByType('navigation')[0];
            return [t.domContentLoadedEventEnd, t.loadEventEnd, t.transferSize || 0];"""
SWITCH = """const t0 = performance.now(); window.__report.selectMember(arguments[0]);
            return performance.now() - t0;"""


def measure(page: Path, loads: int, width: int, height: int) -> dict:
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as profile:
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-background-networking", f"--window-size={width},{height}", f"--user-data-dir={profile}"):
            opts.add_argument(flag)
        d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        try:
            d.set_page_load_timeout(120)
            dcl, load, switch = [], [], []
            for _ in range(loads):
                d.get("about:blank")
                d.get(page.resolve().as_uri())
                a, b, _size = d.execute_script(TIMING)
                dcl.append(a), load.append(b)
                errors = d.execute_script("return window.__reportErrors")
                assert not errors, errors
                n = d.execute_script("return document.getElementById('member-select').options.length")
                switch.append(d.execute_script(SWITCH, n - 1))
        finally:
            d.quit()
    return {"bytes": page.stat().st_size, "dom_content_loaded_ms": dcl, "load_ms": load, "switch_ms": switch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1000)
    a = ap.parse_args()
    r = measure(a.report, a.loads, a.width, a.height)
    med = {k: statistics.median(v) for k, v in r.items() if k != "bytes"}
    print(f"{a.report}: {r['bytes'] / 1e6:.2f} MB; over {a.loads} loads at {a.width}x{a.height}, median "
          f"DOMContentLoaded {med['dom_content_loaded_ms']:.0f} ms, load event {med['load_ms']:.0f} ms "
          f"(range {min(r['load_ms']):.0f}-{max(r['load_ms']):.0f}); one member switch {med['switch_ms']:.0f} ms")


if __name__ == "__main__":
    main()
