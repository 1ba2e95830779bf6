"""Static HTML review of a run's explanation records: what ``lightning-xai report`` and ``compare`` write.

:func:`build_report` turns a run directory (``<run dir>/xai/records.jsonl`` and ``<run dir>/xai/media/``,
see :mod:`lightning_xai.records`) into **one self-contained HTML file**::

    from lightning_xai.report import build_report, compare
    build_report("runs/quickstart")                                   # -> runs/quickstart/xai/report.html
    compare("runs/a", "runs/b", "compare.html")                       # two runs side by side

The page needs no server and no network: images are embedded as base64 ``data:`` URIs (files over
``max_media_bytes`` are left out with a note), charts are inline SVG drawn here, the stylesheet and
the small tab script are inline, and a Content-Security-Policy forbids any other load.

Layout, top to bottom:

* a header (run dir, epochs covered, methods, record, error and alert counts) and a table of contents;
* an alert box and an error box (each entry links to its epoch);
* one ``<section id="method-<method>" data-section="<method>">`` per ``record.method``, holding

  - an epoch navigation (``<nav class="epoch-nav">``; tabs with the inline script, anchors without it),
  - an overview across epochs where the method has one (CKA of ``representation_drift``, one timeline
    per drift series of ``drift``),
  - one ``<article id="epoch-<method>-<epoch>" class="epoch">`` per epoch with a card per record: the
    method's own view (rules, trees, TCAV bars, importance bars, generated images, drift rows, alerts,
    errors), the payload's scalars, its charts (SVG), media (with mask overlays and boxes), tables and
    text, and the raw payload (collapsed).

This module imports nothing from Lightning or torch; mask overlays are those of
:func:`lightning_xai.sinks.mask_overlay`, so they look as in TensorBoard.
"""

from __future__ import annotations

from lightning_xai.report.load import KNOWN_METHODS, METHOD_TITLES, RecordsNotFoundError, RunRecords, load_run
from lightning_xai.report.media import DEFAULT_MAX_MEDIA_BYTES, DEFAULT_MAX_TOTAL_MEDIA_BYTES
from lightning_xai.report.page import build_report, compare, render_compare, render_report
from lightning_xai.report.svg import LineSeries, bar_chart_svg, line_chart_svg

__all__ = [
    "DEFAULT_MAX_MEDIA_BYTES",
    "DEFAULT_MAX_TOTAL_MEDIA_BYTES",
    "KNOWN_METHODS",
    "METHOD_TITLES",
    "LineSeries",
    "RecordsNotFoundError",
    "RunRecords",
    "bar_chart_svg",
    "build_report",
    "compare",
    "line_chart_svg",
    "load_run",
    "render_compare",
    "render_report",
]
