"""The package's layout rules, checked on its source: what the method cores may import, how long modules get."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_xai"
# the method cores and their shared plumbing: usable without Lightning and without the planted world
CORES = ("tcav", "logic", "hyperbolic", "permutation", "diffexplainer", "results", "generators")
PLUMBING = ("layers.py", "running.py", "feature_maps.py", "capture.py", "checks.py")


def _modules(*parts: str) -> list[Path]:
    out: list[Path] = []
    for part in parts:
        path = PACKAGE / part
        out.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return out


def _imports(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions (docstring examples excluded)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                package = path.relative_to(root).with_suffix("").parts[: -node.level]
                names.add(".".join((*package, *([node.module] if node.module else []))))
            elif node.module:
                names.add(node.module)
    return names


@pytest.mark.parametrize("path", _modules(*CORES, *PLUMBING), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_cores_import_neither_lightning_nor_the_world(path: Path) -> None:
    bad = sorted(
        n
        for n in _imports(path)
        if n.split(".")[0] in ("lightning", "pytorch_lightning") or n.startswith("lightning_xai.world")
    )
    assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_no_callback_over_300_lines_and_no_module_over_800() -> None:
    lengths = {p.relative_to(PACKAGE): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    callbacks = {p: n for p, n in lengths.items() if p.parts[0] == "callbacks" and p.name not in ("base.py",)}
    assert max(callbacks.values()) <= 300, {str(p): n for p, n in callbacks.items() if n > 300}
    assert max(lengths.values()) <= 800, {str(p): n for p, n in lengths.items() if n > 800}


def test_the_import_scan_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    module = tmp_path / "lightning_xai" / "tcav" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text("from ..world import render\n\ndef f():\n    import lightning.pytorch\n")
    assert _imports(module, root=tmp_path) == {"lightning_xai.world", "lightning.pytorch"}
