"""Copy a tokenizer or model bundle into mm1d/assets/NAME with float weights stored as float16.

    python scripts/pack_asset.py SRC_BUNDLE NAME

The shipped assets must fit the package budget (30 MB for everything in mm1d/assets); weights load back
into float32 modules, so only storage precision changes.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from mm1d.checkpoint import ASSETS
from mm1d.utils import atomic_path


def pack(src: Path, name: str) -> Path:
    dst = ASSETS / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(f)).items()}
        with atomic_path(f) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
    return dst


if __name__ == "__main__":
    out = pack(Path(sys.argv[1]), sys.argv[2])
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {size / 1e6:.1f} MB")
