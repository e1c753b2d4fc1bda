"""results.json layout, media helpers and the offline HTML report (checked in headless Chromium when present)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mm1d.evaluation.report import (
    find_runs,
    make_results,
    read_results,
    render_report,
    save_budget_plot,
    save_image_grid,
    save_video_grid,
    write_results,
)

REPO = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def _make_run(root: Path, name: str, offset: float) -> Path:
    run = root / name
    (run / "samples").mkdir(parents=True)
    g = torch.Generator().manual_seed(int(offset * 10))
    budgets = [1, 2, 4, 8]
    samples = {}
    for k in budgets:
        imgs = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
        save_image_grid([imgs, imgs * 0.5], run / "samples" / f"k{k}.png")
        samples[k] = [f"samples/k{k}.png"]
    save_video_grid([torch.rand(2, 3, 5, 8, 8, generator=g) * 2 - 1], run / "samples" / "k8.gif", fps=4)
    samples[8].append("samples/k8.gif")
    metrics = {k: {"psnr": 10 + offset + math.log2(k), "ssim": 0.1 * math.log2(2 * k), "judge/all": None}
               for k in budgets}
    metrics[8]["psnr"] = math.inf  # stored as null
    results = make_results("reconstruction-image", {"tokenizer": "x", "seeds": [0, 1], "decode": {"steps": 4}},
                           budgets, metrics, title=name, metrics_std={k: {"psnr": 0.2} for k in budgets},
                           summary={"num_images": 4}, samples=samples, media=["quality_vs_k.png"],
                           series={"codebook usage": {"x": [1, 2, 3], "y": [0.5, 0.4, 0.3]},
                                   "psnr per frame": {"x": [0, 1], "y": {"1": [10.0, 9.0], "8": [20.0, None]}}})
    save_budget_plot(results, run / "quality_vs_k.png")
    write_results(run, results)
    return run


def test_results_round_trip_and_validation(tmp_path) -> None:
    run = _make_run(tmp_path, "a", 0.0)
    data = read_results(run)
    assert data["budgets"] == [1, 2, 4, 8] and data["metrics"]["8"]["psnr"] is None  # inf -> null
    assert data["metrics"]["2"]["psnr"] == pytest.approx(11.0) and data["settings"]["decode"]["steps"] == 4
    assert json.loads((run / "results.json").read_text())["format"] == "mm1d-eval-results"
    with pytest.raises(ValueError, match="must be a number"):
        make_results("x", {}, [1], {1: {"psnr": "high"}})
    with pytest.raises(FileNotFoundError, match="no results.json"):
        read_results(tmp_path / "nothing")
    assert find_runs([tmp_path]) == [run]


def _img_sources(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)


def test_report_is_self_contained(tmp_path) -> None:
    runs = [_make_run(tmp_path, "a", 0.0), _make_run(tmp_path, "b", 2.0)]
    page = render_report(runs)
    sources = _img_sources(page)
    # per run: 4 PNG grids + 1 GIF + plot + 2 series + media plot; plus the all-runs comparison plot
    assert len(sources) == 2 * 9 + 1
    assert all(s.startswith("data:image/") for s in sources)
    assert sum(s.startswith("data:image/gif") for s in sources) == 2
    assert "missing:" not in page and "ssim" in page and "±" in page


def _browser() -> str | None:
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


def test_report_script_opens_in_headless_chromium(tmp_path) -> None:
    runs = [_make_run(tmp_path, "a", 0.0), _make_run(tmp_path, "b", 1.0)]
    out = tmp_path / "report.html"
    proc = subprocess.run([sys.executable, str(REPO / "eval" / "report.py"), "--runs", *map(str, runs),
                           "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    total = len(_img_sources(out.read_text()))
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium); the HTML itself was checked")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--virtual-time-budget=10000", "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'id="image-status"[^>]*data-loaded="(\d+)"[^>]*data-total="(\d+)"', dom)
    assert m, f"the page's image check did not run; DOM starts with {dom[:300]!r}"
    assert int(m.group(2)) == total and int(m.group(1)) == total, m.group(0)
