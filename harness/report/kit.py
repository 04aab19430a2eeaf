"""The report's HTML kit: escaping, cells and tables, number formats, the stylesheet, the page shell, figure helpers."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import re
import struct

DPI = 144  # figures are drawn at 1.5x and shown at 96 px per inch: sharp on high-density screens, ~60 kB each


# ------------------------------------------------------------------------------------------- escaping

class Raw(str):
    """Markup this package built from escaped parts. Every other string is escaped when it reaches the page."""


def esc(value) -> Raw:
    return value if isinstance(value, Raw) else Raw(html.escape(str(value), quote=True))


def td(value, key: str | None = None, cls: str = "") -> Raw:
    attrs = (f' data-key="{esc(key)}"' if key else "") + (f' class="{esc(cls)}"' if cls else "")
    return Raw(f"<td{attrs}>{esc(value)}</td>")


def table(head: list, rows: list, cls: str = "", attrs: list | None = None) -> Raw:
    """rows: lists of td() cells or plain values; attrs: a dict of row attributes per row."""
    out = [f'<table class="{esc(cls)}"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        a = "".join(f' {esc(k)}="{esc(v)}"' for k, v in ((attrs or [{}] * len(rows))[i] or {}).items())
        out.append(f"<tr{a}>" + "".join(c if isinstance(c, Raw) and c.startswith("<td") else td(c) for c in row) + "</tr>")
    return Raw("".join(out) + "</tbody></table>")


def section(sid: str, title: str, how: str, body) -> Raw:
    return Raw(f'<section id="{esc(sid)}"><h2><a href="#{esc(sid)}">{esc(title)}</a></h2>'
               f'<p class="how"><b>How to read this:</b> {esc(how)}</p>{esc(body)}</section>')


def heading(summaries: list[dict], s: dict) -> Raw:
    """The study's name over its part of a section when several studies share the page."""
    return Raw(f"<h3>{esc(s['name'])}</h3>") if len(summaries) > 1 else Raw("")


def slug(name: str) -> str:
    """A folder name for a study: its own name when that is filesystem- and URL-safe, else a cleaned name plus a
    short hash (two odd names never share a folder)."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:60] or "study"
    return clean if clean == name else f"{clean}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


# ----------------------------------------------------------------------------------------- formatting

def pct(v, digits: int = 1) -> str:
    return "\u2013" if v is None else f"{100 * v:.{digits}f}"


def pts(v) -> str:
    return "\u2013" if v is None else f"{100 * v:+.1f}"


def ci(pair) -> str:
    return "\u2013" if not pair else f"{100 * pair[0]:.1f}\u2013{100 * pair[1]:.1f}"


def num(v, fmt: str = ".3f") -> str:
    return "\u2013" if v is None else format(v, fmt)


def lr_text(v) -> str:
    """An lr with 3 significant digits; '\u2013' where there is none (the linear probe)."""
    return "\u2013" if v is None else f"{v:.3g}" if isinstance(v, (int, float)) else str(v)


# ----------------------------------------------------------------------------------------------- page

CSS = """
:root{--fg:#1d232b;--mut:#5b6672;--line:#e3e7ec;--bg:#fff;--soft:#f6f8fa;--acc:#0b62c4}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:var(--bg)}
nav.toc{position:fixed;top:0;left:0;width:200px;height:100vh;overflow:auto;padding:20px 14px;background:var(--soft);border-right:1px solid var(--line)}
nav.toc b{display:block;margin-bottom:8px;font-size:12px;text-transform:uppercase;letter-spacing:.06em;color:var(--mut)}
nav.toc a{display:block;padding:3px 6px;border-radius:4px;color:var(--fg);text-decoration:none}
nav.toc a:hover{background:#e8edf3}
main{margin-left:200px;padding:24px 36px 80px;max-width:1320px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:19px;margin:0 0 4px;padding-top:8px}
h2 a{color:inherit;text-decoration:none}
h3{font-size:15px;margin:18px 0 6px}
section{border-top:1px solid var(--line);padding:14px 0 10px;margin-top:14px}
.sub{color:var(--mut);margin:0 0 8px;font-size:13px;overflow-wrap:anywhere}
p.how{color:var(--mut);margin:0 0 12px;font-size:13px;max-width:1000px}
p.note{color:var(--mut);font-size:12.5px;margin:6px 0}
.empty{color:var(--mut);font-style:italic}
table{border-collapse:collapse;margin:6px 0 10px;font-size:12.5px;font-variant-numeric:tabular-nums}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600;white-space:nowrap}
td{overflow-wrap:anywhere}
table.leaderboard td,table.metrics td,table.calib td,table.er td,table.fits td,table.failures td{white-space:nowrap}
table.failures td[data-key=reason]{white-space:normal}
table.leaderboard td.wrap{white-space:normal;min-width:140px}
table.leaderboard th{white-space:normal;vertical-align:bottom}
table.leaderboard th,table.leaderboard td{padding:4px 6px}
.scroll{overflow-x:auto}
table.kv td:first-child{color:var(--mut);white-space:nowrap}
td.ci{color:var(--mut)}
tr.selected{background:#fff3f2}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(190px,1fr));gap:10px;margin:4px 0 8px}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 12px;background:#fff}
.card .k{font-size:11.5px;text-transform:uppercase;letter-spacing:.04em;color:var(--mut)}
.card .v{font-size:21px;font-weight:650;margin:2px 0;overflow-wrap:anywhere}
.card .d{font-size:12px;color:var(--mut)}
.card .v small{font-size:13px;font-weight:500;color:var(--mut)}
.card .v.list{font-size:15px;line-height:1.45}
small.ci{color:var(--mut);font-size:11px}small.seeds{color:#333;font-size:11px}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:20px}
.badge{display:inline-block;white-space:nowrap;min-width:44px;text-align:center;padding:1px 7px;border-radius:10px;font-size:11.5px;font-weight:600;color:#fff}
.badge.pass{background:#1a7f37}.badge.warn,.badge.inconclusive{background:#bf8700}.badge.fail,.badge.failed{background:#cf222e}
table.conditions{width:100%}table.conditions td:nth-child(3),table.conditions td:nth-child(4){white-space:nowrap}
table.conditions td:nth-child(2){width:30%}table.conditions td:last-child{width:36%;color:var(--mut)}
table.conditions td:nth-child(5){min-width:9em;overflow-wrap:normal}
small.evidence{color:var(--mut)}
.badge.n\\/a,.badge.running{background:#8c959f}.badge.pruned{background:#6e7781}
.chip{display:inline-block;padding:0 6px;margin-right:3px;border-radius:4px;font-size:11px;font-weight:600;border:1px solid}
.chip.full_ft{color:#1f77b4;border-color:#1f77b4}.chip.linear_probe{color:#c25e00;border-color:#ff7f0e}
.chip.lp_ft{color:#2ca02c;border-color:#2ca02c}.chip.best{color:#fff;background:#d62728;border-color:#d62728}
.chip.pareto{color:var(--mut);border-color:#c8d0d8}
small.run{color:var(--mut);white-space:nowrap}span.run-id{font-family:monospace;font-size:10px}
.banner{padding:12px 14px;border-radius:8px;margin:8px 0;font-weight:600}
.banner.warn{background:#fff8c5;border:1px solid #d4a72c}
td.bar{position:relative;min-width:160px}
td.bar span{position:absolute;left:0;top:3px;bottom:3px;background:#cfe2fb;z-index:-1;border-radius:2px}
td.bar{z-index:0}
img{max-width:100%;height:auto;display:block;margin:6px 0}
pre{background:var(--soft);padding:10px;border-radius:6px;overflow:auto;font-size:12px}
details{margin:6px 0}summary{cursor:pointer;color:var(--acc)}
@media (max-width:900px){nav.toc{display:none}main{margin-left:0}}
"""


def page(sections: dict, studies: list[dict], summaries: list[dict], title: str, sub: str, how: Raw) -> str:
    """The whole page: contents, then each section of the registry {id: (title, function(studies, summaries) ->
    (how to read it, body))} in order. title is the h1 before the study names; how introduces the page."""
    names = " + ".join(s["name"] for s in summaries)
    parts = "".join(section(sid, name, *fn(studies, summaries)) for sid, (name, fn) in sections.items())
    toc = "".join(f'<a href="#{esc(sid)}">{esc(name)}</a>' for sid, (name, _) in sections.items())
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc('Report: ' + names)}</title><style>{CSS}</style></head><body>"
            f'<nav class="toc"><b>Contents</b>{toc}</nav><main>'
            f"<h1>{esc(title)}: {esc(names)}</h1><p class=\"sub\">{esc(sub)}</p>"
            f'<p class="how"><b>How to read this page:</b> {how}</p>{parts}</main></body></html>')


# -------------------------------------------------------------------------------------------- figures

def figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


def png(fig, alt: str) -> Raw:
    """Figure -> inline <img> (base64 PNG). Raster keeps every label inert: nothing from the study becomes markup."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return img(buf.getvalue(), alt, 96 / DPI)


def img(data: bytes, alt: str, scale: float = 1.0) -> Raw:
    width = ""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        w = struct.unpack(">I", data[16:20])[0]
        width = f' width="{int(w * scale)}"'
    return Raw(f'<img{width} alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">')


def drawn(text) -> str:
    """A name drawn by matplotlib: a '$' must print as a dollar, not start mathtext (two of them would parse a
    study called 'a$b$c' as math, and a lone one can raise)."""
    return str(text).replace("$", r"\$")


def rc():
    import matplotlib

    return matplotlib.rc_context({"font.size": 9, "axes.titlesize": 10,
                                  "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
                                  "grid.alpha": 0.3, "legend.fontsize": 8, "legend.frameon": False})
