"""Small HTML helpers for the report's static parts: number formatting, tables that a browser
can sort (every cell carries its sort value), inlined PNG figures."""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Callable


def esc(v) -> str:
    return escape(str(v), quote=True)


def fmt(v, digits: int = 4) -> str:
    """A value as the report prints it: n/a for a missing number, yes / no, L0H3 for a head."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}g}" if math.isfinite(v) else "n/a"
    if is_head(v):
        return f"L{v[0]}H{v[1]}"
    return str(v)


def is_head(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) for x in v)


def sort_value(v) -> str | None:
    """The data-v attribute a sortable column sorts by: numbers numerically (a head by layer then
    head, a bool as 0 / 1), '' for a missing value (sorted last); None: sort by the text."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, (int, float)):
        return repr(v)
    if is_head(v):
        return str(v[0] * 10_000 + v[1])
    return None


@dataclass(frozen=True)
class Col:
    """A table column: the row key it shows, a short header and the full name as its tooltip."""
    key: str
    abbr: str
    title: str = ""
    format: Callable | None = None       # value -> text (default `fmt`)
    cls: str = ""                        # class of the column's cells: "txt" (left-aligned), "wrap" (long text)
    tip: Callable | None = None          # value -> a tooltip for the cell (e.g. the full text of a short one)


def attrs(**kv) -> str:
    """HTML attributes (class_ -> class, data_v -> data-v); None values are left out."""
    return "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in kv.items() if v is not None)


def table(cols: list[Col], rows: list[dict], *, sortable: bool = True, table_id: str = "",
          row_attrs: Callable[[dict], dict] | None = None, cell_cls: Callable[[str, object], str] | None = None,
          caption: str = "") -> str:
    """A table inside its own scrolling container (never wider than the page). `row_attrs`
    gives extra attributes per row (e.g. data-member); `cell_cls` a class per (key, value)."""
    head = "".join(f"<th{attrs(title=c.title or c.abbr, class_=c.cls or None)}>{esc(c.abbr)}</th>" for c in cols)
    body = []
    for r in rows:
        extra = "".join(f' {k}="{esc(v)}"' for k, v in (row_attrs(r) if row_attrs else {}).items())
        cells = []
        for c in cols:
            v = r.get(c.key)
            classes = " ".join(x for x in (c.cls, cell_cls(c.key, v) if cell_cls else "") if x)
            tip = c.tip(v) if c.tip else None
            cells.append(f"<td{attrs(data_v=sort_value(v), class_=classes or None, title=tip or None)}>"
                         f"{esc((c.format or fmt)(v))}</td>")
        body.append(f"<tr{extra}>{''.join(cells)}</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (f"<div class=\"scroll\"><table{attrs(class_='data sortable' if sortable else 'data', id=table_id or None)}>"
            f"{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def png_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def figure(fig: dict) -> str:
    """One inlined PNG (`{"name", "title", "b64"}`) with its caption."""
    return (f"<figure id=\"fig-{esc(fig['name'])}\"><img alt=\"{esc(fig['title'])}\" loading=\"lazy\" "
            f"src=\"data:image/png;base64,{fig['b64']}\"><figcaption>{esc(fig['title'])}</figcaption></figure>")


def figures(figs: list[dict]) -> str:
    return f"<div class=\"figures\">{''.join(figure(f) for f in figs)}</div>" if figs else ""


def find_figures(folder: Path, names=(), *, rest: bool = True) -> list[dict]:
    """PNG figures of `folder`: each of `names` and its per-arm variants (name_0, name_1, ...) in
    that order, then (with `rest`) every other PNG there, so a new figure is never dropped."""
    if not folder.is_dir():
        return []
    paths = [p for n in names for p in [folder / f"{n}.png", *sorted(folder.glob(f"{n}_[0-9]*.png"))]
             if p.is_file()]
    if rest:
        paths += [p for p in sorted(folder.glob("*.png")) if p not in paths]
    return [{"name": f"{folder.name}-{p.stem}", "title": p.stem.replace("_", " "), "b64": png_b64(p)}
            for p in paths]


def read_json(path: Path, notes: list[str]):
    """A JSON file, or None (absent, or unreadable: then a note says so)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        notes.append(f"{path.parent.name}/{path.name}: unreadable ({type(e).__name__}); left out")
        return None
