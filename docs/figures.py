"""Regenerate the figures of the documentation from a fresh run of the demo.

    python docs/figures.py            # runs examples/quickstart.py (about 3 minutes on a CPU), then copies
    python docs/figures.py --run DIR  # reuse a finished quickstart run in DIR

Each guide page shows one image that a callback logged in that run (the last explained epoch's), and the
README shows the run's HTML report as rendered by headless Chromium. `make figures` runs this script; the
images are committed, so the docs build needs no run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "figures"
# method -> the logged media keys to show, best first (the first one the run has is used)
FIGURES = {
    "logic_rules": ("grounding_images", "survival_plot"),
    "concept_attribution": ("concept_maps", "tcav_plot"),
    "symbolic_tree": ("class_tree",),
    "concept_permutation": ("importance_plot",),
    "diffusion_explainer": ("images",),
}


def _run_demo(directory: Path, epochs: int) -> Path:
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "quickstart.py"),
            "--out",
            str(directory),
            "--epochs",
            str(epochs),
        ],
        check=True,
        env={**__import__("os").environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )
    return directory


def _records_dir(out: Path) -> Path:
    """The run dir of the demo's records (the W&B run's own folder below ``--out``)."""
    if (out / "xai" / "records.jsonl").is_file():
        return out
    return next(out.rglob("xai/records.jsonl")).parent.parent


def _media(run: Path, method: str, keys: tuple[str, ...]) -> Path | None:
    from lightning_xai.records import read_records

    records = [r for r in read_records(run, method=method) if r.name == "epoch" and r.payload.get("media")]
    if not records:
        return None
    media = records[-1].payload["media"]
    for key in keys:
        for entry in media:
            if entry["key"].split("/")[-1].startswith(key):
                return run / "xai" / entry["path"]
    return run / "xai" / media[0]["path"]


def _cka_chart(run: Path, out: Path) -> None:
    """The representation-drift series of the run, as the report draws it: CKA of the features per epoch."""
    from PIL import Image

    from lightning_xai.charts import line_chart
    from lightning_xai.records import read_records
    from lightning_xai.results import read_result

    results = [read_result(r) for r in read_records(run, method="representation_drift", name="epoch")]
    if not results:
        return
    epochs = [r.epoch for r in read_records(run, method="representation_drift", name="epoch")]
    reps = list(results[0].cka_prev)
    values = [[res.cka_prev[rep] for res in results] for rep in reps]
    values += [[res.cka_ref[rep] for res in results] for rep in reps]
    names = [f"{rep} vs previous" for rep in reps] + [f"{rep} vs first" for rep in reps]
    pixels = line_chart(
        epochs, values, names, title="Linear CKA (1 = unchanged)", xlabel="epoch", ylim=(0, 1.05)
    )
    Image.fromarray(pixels).save(out)


def _report_screenshot(run: Path, out: Path) -> None:
    from lightning_xai.report import build_report

    page = build_report(run, run / "report.html")
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        print("no headless Chromium on PATH: the report screenshot is left as it is", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
             "--hide-scrollbars", f"--screenshot={out}", "--window-size=1280,900", Path(page).resolve().as_uri()],
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished quickstart run to take the figures from")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the demo run (default: 4)")
    args = parser.parse_args()
    out = args.run or _run_demo(
        Path(tempfile.mkdtemp(prefix="lightning-xai-figures-")) / "quickstart", args.epochs
    )
    run = _records_dir(out)
    OUT.mkdir(parents=True, exist_ok=True)
    for method, keys in FIGURES.items():
        source = _media(run, method, keys)
        if source is None:
            print(
                f"{method}: the run logged no image; docs/figures/{method}.png is left as it is",
                file=sys.stderr,
            )
            continue
        shutil.copyfile(source, OUT / f"{method}.png")
        print(f"{method}: {source.relative_to(run)} -> docs/figures/{method}.png")
    _cka_chart(run, OUT / "representation_drift.png")
    _report_screenshot(run, OUT / "report.png")
    print(f"report -> docs/figures/report.png (run: {run})")


if __name__ == "__main__":
    main()
