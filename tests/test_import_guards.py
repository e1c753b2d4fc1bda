"""Import hygiene: Hugging Face's ``tokenizers`` is not shadowed, ``import mm1d`` stays light, no name clashes."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("deepspeed", "wandb", "diffusers")
ENTRY_DIRS = ("tokenizers", "train", "eval")


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter from the repo root (so the repo is first on sys.path)."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_tokenizers_resolves_to_hugging_face() -> None:
    assert not (REPO / "tokenizers" / "__init__.py").exists(), "tokenizers/ holds entry points only: no __init__.py"
    info = json.loads(_run("import json, tokenizers; print(json.dumps([tokenizers.__file__, "
                           "hasattr(tokenizers, 'Tokenizer')]))"))
    path, has_tokenizer = info
    assert path is not None and (REPO / "tokenizers") not in Path(path).resolve().parents, path
    assert "site-packages" in Path(path).parts or "dist-packages" in Path(path).parts, path
    assert has_tokenizer


def test_import_mm1d_loads_no_heavy_dependency() -> None:
    loaded = json.loads(_run(f"import json, sys, mm1d; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"))
    assert loaded == []


def test_library_imports_without_heavy_dependencies() -> None:
    """With deepspeed, wandb and diffusers made unimportable, mm1d and every library module still import
    (training/ is where deepspeed may legitimately be imported, so it is left out)."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"for name in {HEAVY!r}: sys.modules[name] = None  # import now raises ImportError\n"
        "import mm1d\n"
        "names = [m.name for m in pkgutil.walk_packages(mm1d.__path__, 'mm1d.')\n"
        "         if not m.name.startswith('mm1d.training')]\n"
        "for n in names: importlib.import_module(n)\n"
        "print(json.dumps(names))\n"
    )
    names = json.loads(_run(code))
    assert "mm1d.config" in names and "mm1d.data.shapes" in names and "mm1d.evaluation.judge" in names


def _our_module_names() -> dict[str, Path]:
    """Importable-looking names defined by the repo: mm1d submodules/subpackages and entry-point scripts."""
    names: dict[str, Path] = {}
    for root in ("mm1d", *ENTRY_DIRS):
        base = REPO / root
        if not base.is_dir():
            continue
        for p in base.rglob("*"):
            if "__pycache__" in p.parts or p.name.startswith((".", "_")):
                continue
            if p.suffix == ".py":
                names[p.stem] = p
            elif p.is_dir() and root == "mm1d" and (p / "__init__.py").exists():
                names[p.name] = p
    return names


def test_no_module_named_like_stdlib_or_a_dependency() -> None:
    taken = set(sys.stdlib_module_names) | set(importlib.metadata.packages_distributions())
    taken.discard("mm1d")
    clashes = {n: str(p.relative_to(REPO)) for n, p in _our_module_names().items() if n in taken}
    assert clashes == {}, f"rename these; they shadow stdlib or installed packages: {clashes}"
    for top in ("mm1d", "train", "eval", "configs"):  # top-level folders (tokenizers/ is the known exception)
        assert top not in taken, top
