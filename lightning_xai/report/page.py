"""The report and compare pages: layout, style, headers, navigation; the public entry points."""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_xai.report.html import _e, _plural, _short, _slug
from lightning_xai.report.load import METHOD_TITLES, RunRecords, _Alert, _order_methods, load_run, typed
from lightning_xai.report.media import DEFAULT_MAX_MEDIA_BYTES, DEFAULT_MAX_TOTAL_MEDIA_BYTES, _MediaBudget
from lightning_xai.report.render import _Renderer
from lightning_xai.results.errors import ExplainerError

_CSS = """
:root{--fg:#1d2330;--muted:#5f6b7a;--line:#d8dde5;--bg:#f5f7fa;--card:#fff;--accent:#2f6fdd;
--alert:#b85c00;--alert-bg:#fff4e0;--err:#b3261e;--err-bg:#fdecea}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1320px;margin:0 auto;padding:0 18px 60px}
header.top{background:#1d2330;color:#fff;padding:18px 18px 14px}
header.top h1{margin:0 0 8px;font-size:22px}
header.top code{color:#cfe0ff}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}
dl.meta dt{color:#9fb0c8}dl.meta dd{margin:0}
.cols-meta{display:grid;grid-template-columns:1fr 1fr;gap:18px}
nav#toc{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);padding:8px 18px;display:flex;flex-wrap:wrap;gap:6px 14px}
nav#toc a{color:var(--accent);text-decoration:none;font-weight:600}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:12px;font-weight:600;background:#e4e9f2;color:var(--fg)}
.badge.alert{background:var(--alert-bg);color:var(--alert);border:1px solid #f0b66b}
.badge.error{background:var(--err-bg);color:var(--err);border:1px solid #eea49e}
.badge.ok{background:#e3f4e6;color:#1e6b2c}
.alert-box,.error-box{margin:16px 0;padding:10px 16px;border-radius:8px}
.alert-box{background:var(--alert-bg);border:2px solid #f0a640}
.error-box{background:var(--err-bg);border:2px solid #e0665e}
.alert-box h2,.error-box h2{margin:0 0 6px;font-size:17px}
.alert-box h2{color:var(--alert)}.error-box h2{color:var(--err)}
.alert-box a,.error-box a{color:inherit}
section.method{background:var(--card);border:1px solid var(--line);border-radius:10px;margin:22px 0;padding:6px 18px 16px}
section.method>h2{margin:10px 0 2px;font-size:20px}
.muted{color:var(--muted);font-weight:400;font-size:13px}
nav.epoch-nav{display:flex;flex-wrap:wrap;gap:6px;margin:10px 0 12px;padding:8px 0;border-bottom:1px solid var(--line)}
nav.epoch-nav a{padding:3px 10px;border:1px solid var(--line);border-radius:14px;text-decoration:none;color:var(--fg);background:#fafbfc}
nav.epoch-nav a.active{background:var(--accent);border-color:var(--accent);color:#fff}
nav.epoch-nav a.has-alert{border-color:#f0a640}nav.epoch-nav a.has-error{border-color:#e0665e}
article.epoch{border-top:1px dashed var(--line);padding-top:6px}
article.epoch>h3{margin:6px 0 10px;font-size:17px}
.overview{margin:8px 0 14px}
.overview h3{font-size:15px;margin:8px 0}
.record{border:1px solid var(--line);border-radius:8px;padding:8px 12px;margin:0 0 12px;background:#fff}
.record.error{border:2px solid #e0665e;background:var(--err-bg)}
.record.alert{border:2px solid #f0a640;background:var(--alert-bg)}
.record-head{display:flex;gap:10px;align-items:baseline;margin-bottom:6px}
.record-head .name{font-weight:700;font-size:15px}
.inline-alert{background:var(--alert-bg);border-left:5px solid #f0a640;padding:6px 10px;margin:6px 0 10px;border-radius:4px}
.view{margin:6px 0 10px}
.view h4,.record h4{margin:10px 0 4px;font-size:14px}
ol.rules,ul.rules{margin:4px 0;padding-left:22px}
ol.rules code,ul.rules code{white-space:pre-wrap}
ul.tree{list-style:none;padding-left:18px;margin:2px 0;border-left:1px dotted #aab}
ul.tree.root{border-left:none;padding-left:0}
ul.tree li{margin:1px 0}
dl.kv{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:2px 14px;margin:6px 0}
dl.kv div{display:flex;gap:6px;overflow:hidden}dl.kv dt{color:var(--muted)}dl.kv dd{margin:0;font-variant-numeric:tabular-nums}
.charts,.gallery,.grid{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
svg.chart{border:1px solid var(--line);border-radius:6px;max-width:100%;height:auto}
svg.chart text{font-size:11px;fill:#333}
svg.chart text.ct{font-size:12.5px;font-weight:600}
svg.chart text.note{font-size:13px;font-weight:700;fill:#b3261e}
svg.chart .grid{stroke:#e6e9ee}svg.chart .axis{stroke:#555}svg.chart .tick{stroke:#555}
svg.chart path.series{fill:none;stroke-width:2}
svg.chart path.whisker{stroke:#222;stroke-width:1.2;fill:none}
.timeline{border-radius:6px}.timeline.alerted svg.chart{border:2px solid #f0a640}
figure.media{margin:0;max-width:100%;background:#fafbfc;border:1px solid var(--line);border-radius:6px;padding:6px}
figure.media figcaption{font-size:12px;color:var(--muted);max-width:640px}
.imgwrap{position:relative;display:inline-block;line-height:0}
.imgwrap img{max-width:100%;height:auto}
.imgwrap img.small{image-rendering:pixelated}
.imgwrap svg.boxes{position:absolute;left:0;top:0;width:100%;height:100%}
.masks{display:flex;flex-wrap:wrap;gap:6px;margin-top:4px}.masks figure{margin:0;font-size:11px;color:var(--muted)}
.missing{color:var(--muted);font-style:italic;border:1px dashed var(--line);padding:6px;border-radius:4px}
details{margin:4px 0}
summary{cursor:pointer;color:#34435a}
.scroll{overflow:auto;max-height:520px;max-width:100%}
.tables{display:flex;flex-wrap:wrap;gap:2px 22px;align-items:flex-start}.tables>details{max-width:100%}
table{border-collapse:collapse;font-size:12.5px;margin:4px 0;width:max-content}
th,td{border:1px solid var(--line);padding:2px 7px;text-align:left;vertical-align:top;max-width:34em;overflow-wrap:anywhere}
th{background:#eef1f6;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.alert td{background:var(--alert-bg);color:var(--alert);font-weight:600}
pre{background:#f3f5f8;border:1px solid var(--line);border-radius:4px;padding:8px;overflow:auto;max-height:420px;font-size:12px;white-space:pre-wrap}
.error pre{background:#fff}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.col{min-width:0}
.col-head{font-weight:700;padding:3px 8px;border-radius:5px;margin-bottom:6px;background:#e9eef8}
.col[data-run=b] .col-head{background:#f3e9f8}
.only-in{color:var(--muted);font-style:italic;border:1px dashed var(--line);padding:10px;border-radius:6px}
.target{border:1px solid var(--line);border-radius:6px;padding:6px 10px;margin:6px 0}
.target .caption{font-size:15px;font-weight:600}
.empty{color:var(--muted);font-style:italic}
"""

# Tabs per method: one epoch visible at a time (the last by default); following an anchor shows its epoch.
_JS = """
(function(){
  var shows = [];
  document.querySelectorAll('section[data-section]').forEach(function(sec){
    var links = Array.prototype.slice.call(sec.querySelectorAll('nav.epoch-nav a[data-epoch]'));
    var arts = Array.prototype.slice.call(sec.querySelectorAll('article.epoch'));
    if (!links.length || !arts.length) return;
    function show(ep){
      arts.forEach(function(a){ a.hidden = ep !== 'all' && a.getAttribute('data-epoch') !== ep; });
      links.forEach(function(l){ l.classList.toggle('active', l.getAttribute('data-epoch') === ep); });
    }
    links.forEach(function(l){ l.addEventListener('click', function(){ show(l.getAttribute('data-epoch')); }); });
    shows.push({arts: arts, show: show});
    show(arts[arts.length - 1].getAttribute('data-epoch'));
  });
  function follow(){
    var id = decodeURIComponent(location.hash.slice(1));
    var el = id && document.getElementById(id);
    if (!el) return;
    var art = el.closest('article.epoch');
    shows.forEach(function(s){ if (art && s.arts.indexOf(art) >= 0) s.show(art.getAttribute('data-epoch')); });
    el.scrollIntoView();
  }
  window.addEventListener('hashchange', follow);
  follow();
  document.body.setAttribute('data-js', 'ready');
})();
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="lightning-xai report">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n"
        f"<script>{_JS}</script>\n</body></html>\n"
    )


def _epoch_id(method: str, epoch: int) -> str:
    return f"epoch-{_slug(method)}-{epoch}"


def _method_heading(method: str, n_records: int, epochs: Sequence[int], n_err: int, n_alert: int) -> str:
    title = METHOD_TITLES.get(method, method)
    badges = (f' <span class="badge error">{_plural(n_err, "error")}</span>' if n_err else "") + (
        f' <span class="badge alert">{_plural(n_alert, "alert")}</span>' if n_alert else ""
    )
    span = (
        f"epochs {epochs[0]}–{epochs[-1]}"
        if len(epochs) > 1
        else f"epoch {epochs[0]}"
        if epochs
        else "no epochs"
    )
    return (
        f'<h2>{_e(title)} <span class="muted">{_e(method)}</span>{badges}</h2>'
        f'<p class="muted">{_plural(n_records, "record")} · {span}</p>'
    )


def _epoch_nav(method: str, epochs: Sequence[int], alert_epochs: set[int], error_epochs: set[int]) -> str:
    links = []
    for ep in epochs:
        cls = " ".join(
            c for c, on in (("has-alert", ep in alert_epochs), ("has-error", ep in error_epochs)) if on
        )
        mark = (" ⚠" if ep in alert_epochs else "") + (" ✖" if ep in error_epochs else "")
        links.append(
            f'<a href="#{_epoch_id(method, ep)}" data-epoch="{ep}"'
            + (f' class="{cls}"' if cls else "")
            + f">epoch {ep}{mark}</a>"
        )
    links.append(f'<a href="#method-{_slug(method)}" data-epoch="all">all epochs</a>')
    return f'<nav class="epoch-nav" aria-label="epochs of {_e(method)}">{"".join(links)}</nav>'


def _alert_box(run: RunRecords, alerts: Sequence[_Alert], box_id: str) -> str:
    if not alerts:
        return ""
    items = "".join(
        f'<li><a href="#{_epoch_id(a.method, a.epoch)}">epoch {a.epoch} · {_e(a.method)}</a>: {_e(a.message)}</li>'
        for a in alerts[:200]
    )
    more = f"<li>… {len(alerts) - 200} more in the drift section</li>" if len(alerts) > 200 else ""
    return (
        f'<div class="alert-box" id="{box_id}" role="alert"><h2>⚠ {len(alerts)} alert'
        f"{'s' if len(alerts) != 1 else ''} in {_e(run.label)}</h2><ul>{items}{more}</ul></div>"
    )


def _error_box(run: RunRecords, box_id: str) -> str:
    errors = run.errors
    if not errors:
        return ""
    items = []
    for r in errors:
        err, problem = typed(r)
        what = (
            f"<b>{_e(err.type)}</b>: {_e(_short(err.message, 300))}"
            if isinstance(err, ExplainerError)
            else _e(problem or "unreadable error record")
        )
        items.append(
            f'<li><a href="#{_epoch_id(r.method, r.epoch)}">epoch {r.epoch} · {_e(r.method)}</a>: {what}</li>'
        )
    items = "".join(items)
    return (
        f'<div class="error-box" id="{box_id}" role="alert"><h2>✖ {len(errors)} explainer error'
        f"{'s' if len(errors) != 1 else ''} in {_e(run.label)}</h2><ul>{items}</ul></div>"
    )


def _inline_alerts(run: RunRecords, alerts: Sequence[_Alert]) -> dict[tuple[str, int], list[_Alert]]:
    """Alerts to repeat at the epoch of the method whose explanation drifted (the drift section has them all)."""
    present = set(run.methods)
    out: dict[tuple[str, int], list[_Alert]] = {}
    for a in alerts:
        source = _source_method(a.source)
        if source in present and source != a.method:
            out.setdefault((source, a.epoch), []).append(a)
    return out


def _source_method(source: Any) -> str | None:
    """The method of a drift source: ``"logic_rules#2"`` (a second callback of a method) is ``logic_rules``."""
    return source.split("#", 1)[0] if isinstance(source, str) else None


def _header_meta(run: RunRecords, alerts: Sequence[_Alert]) -> str:
    epochs = run.epochs
    span = (
        f"{epochs[0]}–{epochs[-1]} ({len(epochs)} epoch{'s' if len(epochs) != 1 else ''}: "
        f"{', '.join(map(str, epochs[:40]))}{' …' if len(epochs) > 40 else ''})"
        if epochs
        else "none"
    )
    methods = (
        " ".join(f'<a class="badge" href="#method-{_slug(m)}">{_e(m)}</a>' for m in run.methods) or "none"
    )
    n_err, n_alert = len(run.errors), len(alerts)
    skipped = (
        f"<dt>skipped</dt><dd>{run.skipped_lines} unreadable line(s) of records.jsonl</dd>"
        if run.skipped_lines
        else ""
    )
    return (
        f'<dl class="meta" data-run-dir="{_e(run.run_dir)}"><dt>run</dt><dd><code>{_e(run.run_dir)}</code></dd>'
        f"<dt>records</dt><dd>{len(run.records)} in <code>{_e(run.records_path)}</code></dd>"
        f"<dt>epochs</dt><dd>{_e(span)}</dd><dt>methods</dt><dd>{methods}</dd>"
        f'<dt>errors</dt><dd><span class="badge {"error" if n_err else "ok"}" data-count="errors">{n_err}</span></dd>'
        f'<dt>alerts</dt><dd><span class="badge {"alert" if n_alert else "ok"}" data-count="alerts">{n_alert}</span></dd>'
        f"{skipped}</dl>"
    )


def _toc(methods: Sequence[str]) -> str:
    links = "".join(f'<a href="#method-{_slug(m)}">{_e(METHOD_TITLES.get(m, m))}</a>' for m in methods)
    return f'<nav id="toc" aria-label="methods"><a href="#top">↑ top</a>{links}</nav>'


def _generated() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _budget_note(budget: _MediaBudget) -> str:
    if not budget.skipped:
        return ""
    items = "".join(f"<li>{_e(s)}</li>" for s in budget.skipped[:50])
    return f'<details class="missing"><summary>{len(budget.skipped)} media not embedded</summary><ul>{items}</ul></details>'


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------
def render_report(
    run: str | os.PathLike | RunRecords,
    *,
    title: str | None = None,
    max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES,
    max_total_media_bytes: int = DEFAULT_MAX_TOTAL_MEDIA_BYTES,
) -> str:
    """The HTML of the report of one run, as a string (see the module docstring for the layout).

    Args:
        run: a run directory, ``xai`` dir or ``records.jsonl`` (see :func:`load_run`), or a loaded run.
        title: page title; default ``"lightning-xai report: <run name>"``.
        max_media_bytes: media files larger than this are not embedded (a note says so).
        max_total_media_bytes: embedding stops once this many bytes of media are in the page.

    Example:
        >>> page = render_report("runs/quickstart")  # doctest: +SKIP
        >>> 'data-section="logic_rules"' in page  # doctest: +SKIP
        True
    """
    run = run if isinstance(run, RunRecords) else load_run(run)
    budget = _MediaBudget(max_media_bytes, max_total_media_bytes)
    r = _Renderer(run, budget)
    alerts = run.alerts()
    inline = _inline_alerts(run, alerts)
    alert_epochs: dict[str, set[int]] = {}
    for a in alerts:
        alert_epochs.setdefault(a.method, set()).add(a.epoch)
        if _source_method(a.source):
            alert_epochs.setdefault(_source_method(a.source), set()).add(a.epoch)
    sections = []
    for method, epochs in run.by_method().items():
        recs = [x for rs in epochs.values() for x in rs]
        err_epochs = {x.epoch for x in recs if x.name == "error"}
        n_err = sum(1 for x in recs if x.name == "error")
        n_alert = sum(1 for a in alerts if a.method == method)
        parts = [
            f'<section id="method-{_slug(method)}" class="method" data-section="{_e(method)}">',
            _method_heading(method, len(recs), list(epochs), n_err, n_alert),
            _epoch_nav(method, list(epochs), alert_epochs.get(method, set()), err_epochs),
            r.overview(method, epochs),
        ]
        for epoch, records in epochs.items():
            notes = inline.get((method, epoch), [])
            parts.append(
                f'<article id="{_epoch_id(method, epoch)}" class="epoch" data-epoch="{epoch}" data-method="{_e(method)}">'
                f"<h3>Epoch {epoch}</h3>"
            )
            parts += [f'<div class="inline-alert">⚠ drift alert: {_e(a.message)}</div>' for a in notes]
            parts += [r.record(x) for x in records]
            parts.append("</article>")
        parts.append("</section>")
        sections.append("".join(parts))
    if not sections:
        sections.append(f'<p class="empty">{_e(run.records_path)} holds no records yet.</p>')
    title = title or f"lightning-xai report: {run.label}"
    body = (
        f'<header class="top" id="top" data-section="header"><h1>{_e(title)}</h1>{_header_meta(run, alerts)}'
        f'<p class="muted">generated {_generated()} · offline page: everything is embedded</p></header>'
        f"{_toc(run.methods)}<main>{_alert_box(run, alerts, 'alerts')}{_error_box(run, 'errors')}"
        + "".join(sections)
        + _budget_note(budget)
        + "</main>"
    )
    return _page(title, body)


def _write(out: Path, page: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)  # a reader never sees half a page
    return out


def build_report(
    run_dir: str | os.PathLike | RunRecords,
    out: str | os.PathLike | None = None,
    *,
    title: str | None = None,
    max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES,
    max_total_media_bytes: int = DEFAULT_MAX_TOTAL_MEDIA_BYTES,
    run_id: str | None = None,
) -> Path:
    """Write the report of a run to one self-contained HTML file and return its path.

    Args:
        run_dir: the run directory (holding ``xai/records.jsonl``), an ``xai`` dir or the records file
            (or a run loaded with :func:`load_run`).
        out: the HTML file; default ``<run dir>/xai/report.html`` (next to ``records.jsonl``).
        title, max_media_bytes, max_total_media_bytes: see :func:`render_report`.
        run_id: the run to show when the records file holds several (see :func:`load_run`).

    Raises:
        RecordsNotFoundError: if the run has no ``records.jsonl``.

    Example:
        >>> build_report("runs/quickstart")  # doctest: +SKIP
        PosixPath('runs/quickstart/xai/report.html')
    """
    run = run_dir if isinstance(run_dir, RunRecords) else load_run(run_dir, run_id=run_id)
    page = render_report(
        run, title=title, max_media_bytes=max_media_bytes, max_total_media_bytes=max_total_media_bytes
    )
    return _write(Path(out) if out is not None else run.root / "report.html", page)


def _labels(a: RunRecords, b: RunRecords) -> None:
    """Make the two runs' labels distinct (``version_0`` twice says nothing)."""
    if a.label == b.label:
        a.label = f"{a.run_dir.parent.name}/{a.run_dir.name}"
        b.label = f"{b.run_dir.parent.name}/{b.run_dir.name}"
        if a.label == b.label:
            a.label, b.label = f"A: {a.label}", f"B: {b.label}"


def render_compare(
    run_a: str | os.PathLike | RunRecords,
    run_b: str | os.PathLike | RunRecords,
    *,
    title: str | None = None,
    max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES,
    max_total_media_bytes: int = DEFAULT_MAX_TOTAL_MEDIA_BYTES,
) -> str:
    """The HTML of a side-by-side comparison of two runs (per method and epoch, run A left, run B right).

    Epochs (or whole methods) present in only one run get a note in the other run's column.

    Example:
        >>> page = render_compare("runs/a", "runs/b")  # doctest: +SKIP
        >>> page.count('data-run="a"') > 0 and page.count('data-run="b"') > 0  # doctest: +SKIP
        True
    """
    a = run_a if isinstance(run_a, RunRecords) else load_run(run_a)
    b = run_b if isinstance(run_b, RunRecords) else load_run(run_b)
    _labels(a, b)
    budget = _MediaBudget(max_media_bytes, max_total_media_bytes)
    runs = (("a", a, _Renderer(a, budget)), ("b", b, _Renderer(b, budget)))
    alerts = {key: run.alerts() for key, run, _ in runs}
    grouped = {key: run.by_method() for key, run, _ in runs}
    inline = {key: _inline_alerts(run, alerts[key]) for key, run, _ in runs}

    def col(key: str, run: RunRecords, content: str) -> str:
        return f'<div class="col" data-run="{key}"><div class="col-head">{key.upper()} · {_e(run.label)}</div>{content}</div>'

    sections = []
    for method in _order_methods([*a.methods, *b.methods]):
        per = {key: grouped[key].get(method, {}) for key, _, _ in runs}
        epochs = sorted({*per["a"], *per["b"]})
        recs = {key: [x for rs in per[key].values() for x in rs] for key in per}
        alert_epochs = {
            x.epoch for key in per for x in alerts[key] if method in (x.method, _source_method(x.source))
        }
        err_epochs = {x.epoch for key in per for x in recs[key] if x.name == "error"}
        n_err = sum(1 for key in per for x in recs[key] if x.name == "error")
        n_alert = sum(1 for key in per for x in alerts[key] if x.method == method)
        parts = [
            f'<section id="method-{_slug(method)}" class="method" data-section="{_e(method)}">',
            _method_heading(method, len(recs["a"]) + len(recs["b"]), epochs, n_err, n_alert),
            _epoch_nav(method, epochs, alert_epochs, err_epochs),
        ]
        overviews = {key: r.overview(method, per[key]) for key, _, r in runs}
        if any(overviews.values()):
            parts.append(
                '<div class="cols">'
                + "".join(
                    col(key, run, overviews[key] or '<p class="empty">no overview</p>')
                    for key, run, _ in runs
                )
                + "</div>"
            )
        for epoch in epochs:
            parts.append(
                f'<article id="{_epoch_id(method, epoch)}" class="epoch" data-epoch="{epoch}" data-method="{_e(method)}">'
                f'<h3>Epoch {epoch}</h3><div class="cols">'
            )
            for key, run, r in runs:
                records = per[key].get(epoch)
                if records:
                    notes = "".join(
                        f'<div class="inline-alert">⚠ drift alert: {_e(x.message)}</div>'
                        for x in inline[key].get((method, epoch), [])
                    )
                    content = notes + "".join(r.record(x) for x in records)
                else:
                    other = "B" if key == "a" else "A"
                    where = (
                        f"{method} has no records in this run at all"
                        if not per[key]
                        else f"explained epochs of this run: {', '.join(map(str, per[key]))}"
                    )
                    content = (
                        f'<p class="only-in" data-only-in="{"b" if key == "a" else "a"}">No {_e(method)} records at '
                        f"epoch {epoch} in run {key.upper()}; only run {other} has this epoch ({_e(where)}).</p>"
                    )
                parts.append(col(key, run, content))
            parts.append("</div></article>")
        parts.append("</section>")
        sections.append("".join(parts))
    if not sections:
        sections.append('<p class="empty">Neither run holds records yet.</p>')
    title = title or f"lightning-xai compare: {a.label} vs {b.label}"
    meta = "".join(
        f'<div data-run="{key}"><h2>{key.upper()} · {_e(run.label)}</h2>{_header_meta(run, alerts[key])}</div>'
        for key, run, _ in runs
    )
    boxes = "".join(
        col(
            key,
            run,
            (_alert_box(run, alerts[key], f"alerts-{key}") + _error_box(run, f"errors-{key}"))
            or '<p class="empty">no alerts, no errors</p>',
        )
        for key, run, _ in runs
    )
    body = (
        f'<header class="top" id="top" data-section="header"><h1>{_e(title)}</h1><div class="cols-meta">{meta}</div>'
        f'<p class="muted">generated {_generated()} · offline page: everything is embedded</p></header>'
        f'{_toc(_order_methods([*a.methods, *b.methods]))}<main><div class="cols">{boxes}</div>'
        + "".join(sections)
        + _budget_note(budget)
        + "</main>"
    )
    return _page(title, body)


def compare(
    run_a: str | os.PathLike,
    run_b: str | os.PathLike,
    out: str | os.PathLike,
    *,
    title: str | None = None,
    max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES,
    max_total_media_bytes: int = DEFAULT_MAX_TOTAL_MEDIA_BYTES,
) -> Path:
    """Write a side-by-side comparison of two runs to one self-contained HTML file; returns its path.

    Args:
        run_a, run_b: run directories (or ``xai`` dirs / records files); A is shown left, B right.
        out: the HTML file to write.
        title, max_media_bytes, max_total_media_bytes: see :func:`render_report`.

    Raises:
        RecordsNotFoundError: if either run has no ``records.jsonl``.

    Example:
        >>> compare("runs/seed0", "runs/seed1", "compare.html")  # doctest: +SKIP
        PosixPath('compare.html')
    """
    page = render_compare(
        load_run(run_a),
        load_run(run_b),
        title=title,
        max_media_bytes=max_media_bytes,
        max_total_media_bytes=max_total_media_bytes,
    )
    return _write(Path(out), page)
