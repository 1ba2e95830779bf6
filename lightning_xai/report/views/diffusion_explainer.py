"""The report's view of diffusion_explainer records: each target's optimised prompt and its images."""

from __future__ import annotations

from typing import Any

from lightning_xai.records import Record
from lightning_xai.report.html import _e, _fmt
from lightning_xai.results.diffusion_explainer import DiffusionExplainerResult


def view(ren: Any, rec: Record, result: DiffusionExplainerResult, used: set[str]) -> str:
    if not result.targets:
        return ""
    media = ren.stored_media(rec)
    out = ['<div class="view" data-view="generated"><h4>Optimised prompts and their generated images</h4>']
    for t in result.targets:
        label = t.label
        badges = "".join(f' <span class="badge alert">suspected bias: {_e(f)}</span>' for f in t.flagged)
        mine = [m for m in media if m.caption.startswith(f"{label}:")]  # the callback captions them so
        used.update(m.path for m in mine)
        caption = "" if t.readout is None else t.readout.caption
        out.append(
            f'<div class="target" data-target="{_e(label)}"><div><b>{_e(label)}</b>{badges}</div>'
            f'<div class="caption">“{_e(caption)}”</div>'
            f'<div class="muted">mean class probability {_fmt(t.mean_probability)}, share predicted '
            f"{_fmt(t.share_predicted)}, objective {_fmt(t.initial_objective)} → "
            f"{_fmt(t.final_objective)} in {_fmt(t.steps)} steps</div>"
            + ('<div class="gallery">' + "".join(ren.figure(m) for m in mine) + "</div>" if mine else "")
            + "</div>"
        )
    out.append("</div>")
    return "".join(out)
