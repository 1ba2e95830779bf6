"""The report's view of diffusion_explainer records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_xai.records import Record
from lightning_xai.report.html import _e, _fmt


def view(ren: Any, rec: Record, result: Any, used: set[str]) -> str:
    p = rec.payload
    targets = p.get("targets")
    if not isinstance(targets, list) or not targets:
        return ""
    media = [m for m in p.get("media") or [] if isinstance(m, Mapping)]
    out = [
        '<div class="view" data-view="generated"><h4>Optimised prompts and their generated images</h4>'
    ]
    for t in targets:
        if not isinstance(t, Mapping):
            continue
        label = str(t.get("label") or t.get("target") or "target")
        readout = t.get("readout") if isinstance(t.get("readout"), Mapping) else {}
        bias = t.get("bias") if isinstance(t.get("bias"), Mapping) else {}
        flagged = [str(f) for f in bias.get("flagged") or []]
        badges = "".join(f' <span class="badge alert">suspected bias: {_e(f)}</span>' for f in flagged)
        mine = [m for m in media if str(m.get("caption", "")).startswith(f"{label}:")]
        used.update(str(m.get("path")) for m in mine)
        out.append(
            f'<div class="target" data-target="{_e(label)}"><div><b>{_e(label)}</b>{badges}</div>'
            f'<div class="caption">“{_e(readout.get("caption", ""))}”</div>'
            f'<div class="muted">mean class probability {_fmt(t.get("mean_probability"))}, share predicted '
            f"{_fmt(t.get('share_predicted'))}, objective {_fmt(t.get('initial_objective'))} → "
            f"{_fmt(t.get('final_objective'))} in {_fmt(t.get('steps'))} steps</div>"
            + ('<div class="gallery">' + "".join(ren.figure(m) for m in mine) + "</div>" if mine else "")
            + "</div>"
        )
    out.append("</div>")
    return "".join(out)


