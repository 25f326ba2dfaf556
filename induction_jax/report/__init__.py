"""`write_report(run)`: one self-contained, offline report.html for a run directory.

    gather(run)   -> data: a JSON-ready dict, one entry per reader in `sections.READERS`
                     (each reads one part of the run directory; absent parts are left out)
    render(data)  -> the HTML page: the static sections of `sections.SECTIONS` (tables,
                     inlined PNG figures), the page's script and style inlined, and the data the
                     script draws from (attention patterns, per-head scores, composition,
                     per-member timings) inlined as JSON
    write_report(run) -> RUN_DIR/report.html, written atomically and recorded in the manifest

Nothing is fetched: no network, no CDN, no external fonts.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from induction_jax.report.markup import esc
from induction_jax.report.sections import READERS, SECTIONS, Section
from induction_jax.rundir import RunDir, json_safe, write_text_atomic

__all__ = ["gather", "render", "write_report", "client_data", "READERS", "SECTIONS", "Section"]


def gather(run: RunDir) -> dict:
    """Everything the report shows, read from the run directory: {reader key: its dict}, for
    the readers whose part exists. Raises RunDirError when `run` is not a run directory."""
    data = {}
    for key, read in READERS.items():
        part = read(run)
        if part is not None:
            data[key] = part
    return json_safe(data)


def client_data(data: dict) -> dict:
    """What the page's script gets: every part without its static-only ("_"-prefixed) keys."""
    return {key: {k: v for k, v in part.items() if not k.startswith("_")} for key, part in data.items()}


# The page's scripts, in order: report.js (the selector, the per-member views and the helpers the
# others use), figures.js (the analysis figures for the selected member).
SCRIPTS = ("report.js", "figures.js")


def _asset(name: str) -> str:
    return resources.files("induction_jax.report").joinpath("assets", name).read_text(encoding="utf-8")


def _script_json(obj) -> str:
    """JSON safe inside a <script> element: no '<' can close it (JSON allows \\u003c in strings)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def render(data: dict) -> str:
    """The report page for gathered `data`."""
    body, nav = [], []
    for section in SECTIONS:
        html = section.render(data)
        if html is None:
            continue
        body.append(f"<section id=\"{esc(section.id)}\">{html}</section>")
        if section.title:
            nav.append(f"<a href=\"#{esc(section.id)}\">{esc(section.title)}</a>")
    members = data["run"]["members"]
    options = "".join(f"<option value=\"{m['member']}\">{esc(m['label'])}</option>" for m in members)
    topbar = (f"<nav>{''.join(nav)}</nav><div class=\"selector\"><button type=\"button\" id=\"member-prev\" "
              f"title=\"previous member (←)\">◀</button><label for=\"member-select\">Member</label>"
              f"<select id=\"member-select\">{options}</select><button type=\"button\" id=\"member-next\" "
              f"title=\"next member (→)\">▶</button></div>")
    fills = {"title": esc(f"induction-jax report: {data['run']['name']}"), "css": _asset("report.css"),
             "js": "\n".join(_asset(name) for name in SCRIPTS), "data": _script_json(client_data(data)),
             "topbar": topbar,
             "body": "".join(body)}
    # One pass, so that nothing substituted is scanned for placeholders again.
    return re.sub(r"\{\{(\w+)\}\}", lambda m: fills[m.group(1)], _asset("report.html"))


def write_report(run: RunDir | str | Path) -> Path:
    """A self-contained RUN_DIR/report.html from whatever the run directory holds; returns its
    path. Written once, by the command (or API call) that ran the analyses, after they finished;
    under the run's writer lock."""
    run = run if isinstance(run, RunDir) else RunDir(Path(run))
    with run.lock():
        doc = render(gather(run))
        path = run.output("report.html")
        write_text_atomic(path, doc)
    return path
