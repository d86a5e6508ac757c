"""One-file HTML report of the current view, readable offline on any laptop.

plotly.js is inlined once (no CDN), figures are embedded as JSON and drawn by that copy, image
strips are base64 JPEGs, and a provenance stamp (model hash, data fingerprint, parameters) says
exactly what the figures were made from. Each chart gets "SVG" and "PNG" download buttons.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from drlcore.analysis.naming import NamingConfig

__all__ = ["ReportSection", "build_report", "axes_section"]


@dataclass
class ReportSection:
    heading: str
    text: str = ""
    figures: Sequence[go.Figure] = ()
    images: Sequence[tuple[bytes, str]] = ()  # (JPEG bytes, caption)
    table: pd.DataFrame | None = None
    table_rows: int = 50
    notes: list[str] = field(default_factory=list)


def axes_section(axes: Sequence[dict]) -> ReportSection | None:
    """What each latent axis is called and why: the names from the run's own data with r, CI and
    q-value, the reason for unnamed axes, and the synthetic-source name as provenance."""
    if not axes:
        return None

    def num(v):
        return None if v is None else round(float(v), 3)

    table = pd.DataFrame([{
        "axis": a.get("name"), "status": a.get("status"), "family": a.get("family") or "",
        "feature": str(a.get("feature") or "").removeprefix("morph_").replace("_", " "),
        "r": num(a.get("r")), "ci_low": num(a.get("ci_low")), "ci_high": num(a.get("ci_high")),
        "q_value": a.get("q_value"), "reason": a.get("reason") or "",
        "provenance": a.get("provenance") or ""} for a in axes])
    return ReportSection("Axis names", text="Each axis is named after the morphology family it "
                         f"follows on this run's own images (|r| >= {NamingConfig().min_abs_r:g} and "
                         f"Benjamini-Hochberg q < {NamingConfig().alpha:g}); otherwise it is unnamed, with the reason.", table=table)


_CSS = """
body{font-family:Inter,'Source Sans Pro','Helvetica Neue',Arial,sans-serif;font-size:16px;color:#1f2933;
max-width:1200px;margin:2rem auto;padding:0 1.5rem;line-height:1.5}
h1{font-size:2rem;margin-bottom:.2rem}h2{font-size:1.4rem;border-bottom:2px solid #e4e7eb;padding-bottom:.3rem;margin-top:2.5rem}
.stamp{background:#f5f7fa;border:1px solid #e4e7eb;border-radius:8px;padding:.8rem 1rem;font-size:14px}
.stamp td{padding:.1rem .8rem .1rem 0;vertical-align:top}.stamp code{font-size:13px;word-break:break-all}
.strip{display:flex;flex-wrap:wrap;gap:8px;margin:.5rem 0}.strip figure{margin:0;text-align:center;font-size:13px;width:120px}
.strip img{width:120px;height:120px;object-fit:contain;background:#fff;border:1px solid #e4e7eb;border-radius:4px}
table.data{border-collapse:collapse;font-size:14px}table.data td,table.data th{border-bottom:1px solid #e4e7eb;padding:.25rem .6rem;text-align:right}
table.data th{background:#f5f7fa}.note{color:#52606d;font-size:14px}
"""

_DOWNLOAD_JS = """
function drlConfig(name){return {displaylogo:false,responsive:true,modeBarButtonsToAdd:[
 {name:'Download SVG',icon:Plotly.Icons.camera,click:function(gd){Plotly.downloadImage(gd,{format:'svg',filename:name});}},
 {name:'Download PNG',icon:Plotly.Icons.camera,click:function(gd){Plotly.downloadImage(gd,{format:'png',scale:3,filename:name});}}],
 modeBarButtonsToRemove:['toImage']};}
"""


def build_report(title: str, sections: Sequence[ReportSection], provenance: dict,
                 created: dt.datetime | None = None) -> str:
    """Return the complete HTML document as a string."""
    created = created or dt.datetime.now(dt.timezone.utc)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>",
        # plotly.js is ~4 MB; inlined exactly once so the file works with no network at all.
        f"<script>{get_plotlyjs()}</script><script>{_DOWNLOAD_JS}</script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _provenance_block(provenance, created),
    ]
    fig_no = 0
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
        for fig in section.figures:
            fig_no += 1
            div = f"drl-fig-{fig_no}"
            name = json.dumps(f"drl-figure-{fig_no}")
            spec = fig.to_json()
            parts.append(f"<div id='{div}' class='figure'></div><script>(function(){{var f={spec};"
                         f"Plotly.newPlot('{div}',f.data,f.layout,drlConfig({name}));}})();</script>")
        if section.images:
            parts.append("<div class='strip'>")
            for jpeg, caption in section.images:
                b64 = base64.b64encode(jpeg).decode("ascii")
                parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/jpeg;base64,{b64}'>"
                             f"<figcaption>{html.escape(caption)}</figcaption></figure>")
            parts.append("</div>")
        if section.table is not None and len(section.table):
            shown = section.table.head(section.table_rows)
            parts.append(shown.to_html(classes="data", index=False, float_format=lambda v: f"{v:.3g}",
                                       border=0, escape=True))
            if len(section.table) > section.table_rows:
                parts.append(f"<p class='note'>First {section.table_rows} of {len(section.table)} rows.</p>")
        for note in section.notes:
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _provenance_block(provenance: dict, created: dt.datetime) -> str:
    rows = [("created", created.strftime("%Y-%m-%d %H:%M UTC"))]
    for key, value in provenance.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        rows.append((key, "—" if value is None else str(value)))
    body = "".join(f"<tr><td><b>{html.escape(k)}</b></td><td><code>{html.escape(v)}</code></td></tr>" for k, v in rows)
    return f"<div class='stamp' id='provenance'><b>Provenance</b><table>{body}</table></div>"
