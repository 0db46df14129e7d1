"""The layering rule that has broken before: nothing outside `twilio_dg_proxy.fakes` (and the
tests) imports the test doubles, so the product's own run path never loads them."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import twilio_dg_proxy

from ..timing import S

PACKAGE = "twilio_dg_proxy"
FAKES = f"{PACKAGE}.fakes"
ROOT = Path(twilio_dg_proxy.__file__).resolve().parent


def module_name(path: Path) -> str:
    """The dotted name of the module at `path` under the package."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> Iterator[str]:
    """Every module the file at `path` imports, relative imports resolved to absolute names.

    ``from X import Y`` yields X and ``X.Y`` (Y may be a submodule), so importing a fakes
    module by ``from . import fakes`` is caught too.
    """
    name = module_name(path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # A package's own name is its anchor; a module's anchor is its package.
                anchor = name.split(".")
                if not is_package:
                    anchor.pop()
                base = anchor[: len(anchor) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module
            for alias in node.names:
                yield f"{module}.{alias.name}"


def is_fakes(module: str) -> bool:
    return module == FAKES or module.startswith(FAKES + ".")


def fakes_importers(root: Path) -> list[str]:
    """``importer -> imported`` for every module outside fakes under `root` importing fakes
    (a name imported from a fakes module is not listed beside that module)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        importer = module_name(path)
        if is_fakes(importer):
            continue
        imported = {m for m in imported_modules(path) if is_fakes(m)}
        found += [
            f"{importer} -> {m}"
            for m in sorted(imported)
            if not any(m.startswith(other + ".") for other in imported)
        ]
    return found


def test_relative_imports_resolve_to_absolute_module_names() -> None:
    # The resolution the rule rests on, on files whose imports are known.
    engine_server = set(imported_modules(ROOT / "engine" / "server.py"))
    assert f"{PACKAGE}.deepgram_server_protocol" in engine_server
    assert f"{PACKAGE}.engine.results" in engine_server
    fakes_package = set(imported_modules(ROOT / "fakes" / "deepgram.py"))
    assert f"{PACKAGE}.engine.synthetic.SyntheticEngine" in fakes_package


def test_no_module_outside_fakes_imports_fakes() -> None:
    found = fakes_importers(ROOT)
    assert not found, "only fakes/ and the tests may import fakes/:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "module", [f"{PACKAGE}.engine", f"{PACKAGE}.engine.server", f"{PACKAGE}.server"]
)
def test_importing_the_product_loads_no_fakes_module(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"print(sorted(m for m in sys.modules if m == {FAKES!r} or m.startswith({FAKES!r} + '.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60 * S
    ).stdout
    assert out.strip() == "[]", f"importing {module} loaded {out.strip()}"
