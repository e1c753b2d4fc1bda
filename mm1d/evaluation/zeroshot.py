"""Zero-shot evaluation of a release bundle against the token budget: text-to-image, text-to-video, captioning.

One sweep serves all three tasks (``eval/eval_t2i.py``, ``eval/eval_t2v.py``, ``eval/eval_caption.py``). For
every budget k in ``cfg.budgets`` (default 1, 2, 4, ..., N) and for ``"auto"``, every group of inputs is run
through the model, scored, and compared with the tokenizer's own ceiling.

Groups (``mm1d.evaluation.zeroshot_data``):
- ShapesBench: ShapesWorld ``val`` (colour+shape combinations seen in training; metric prefix ``seen/``) and
  ``holdout`` (held-out combinations; ``heldout/``), ``cfg.num`` samples each, deterministic from
  ``cfg.data_seed``. Generation seeds are ``cfg.seed + split offset + sample``, the same at every budget.
- a prompt file (text-to-X) or a folder of images/videos with COCO-format references (captioning): no prefix.

Budgets: for generation, k is the number of tokens per image (per video time step) the model samples;
``"auto"`` lets the model choose (its ``<kauto>`` token). For captioning, k is how many tokens of the input
the model sees; ``"auto"`` is the adaptive rule used in pretokenization: the smallest k in 1, 2, 4, ..., N
whose reconstruction reaches ``cfg.auto_psnr`` dB. Each input's captions at that k (same seeds, same prompt)
were already made at budget k when the sweep ran it, so the ``"auto"`` row reuses them (its seconds per sample
are what those captions cost) and only inputs whose k the sweep did not run are captioned again.

Metrics per budget (``results.json``, layout of ``mm1d.evaluation.report``):
- judge accuracy on ShapesBench, ``<group>/all`` (every attribute of every object right), ``/count``,
  ``/shape``, ``/colour``, ``/size``, ``/position`` and for videos ``/motion`` plus the headline combination
  ``/motion_colour`` (text-to-video) or ``/motion_colour_shape`` (video captioning). Images are judged with
  ``judge_image``, videos with ``judge_video``, captions after ``parse_caption``.
- the tokenizer ceiling ``ceiling/<group>/<metric>``: the same judge on the tokenizer's reconstructions of the
  ground-truth inputs from their first k tokens (decoded with the pipeline's decoder settings and the same
  seeds). For ``"auto"`` it uses the k each sample ended with, so the model's own share is visible.
- text-to-image: ``fid`` (``--inception``; against ``--reference`` or the ShapesWorld renders),
  ``clip_score`` (``--clip``); text-to-video: ``fvd`` (``--i3d``), ``clipsim`` (``--clip``);
  captioning: ``<group>/cider`` and ``<group>/bleu_1..4`` against the references (ShapesWorld: the sample's
  caption plus four rewordings from the caption templates; tokenization recorded in the settings).
The ``"auto"`` row is stored in ``summary["auto"]`` with the mean chosen budget (``mean_budget``), since
``budgets`` holds integers only; ``summary`` also holds the headline metric names, issue 9's targets,
seconds per sample, and counts. Outputs: results.json, quality_vs_budget.png, samples/ (grids: rows are the
truth, the model and the ceiling per group; GIFs for videos; captioned sheets for captioning) and
``captions/<budget>.jsonl`` (every caption), plus GenEval's layout for text-to-image with ``geneval_out``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mm1d.config import AdaptiveBudgetConfig, ZeroShotEvalConfig
from mm1d.evaluation.judge import IMAGE_ATTRS, VIDEO_ATTRS, compare, judge_image, judge_video, parse_caption
from mm1d.evaluation.zeroshot_data import (
    Group,
    Meters,
    check_inputs,
    folder_group,
    iter_reference,
    load_meters,
    prompt_group,
    shapes_groups,
)
from mm1d.evaluation.zeroshot_media import CEILING, caption_sheet, plot_sweep, write_geneval

AUTO = "auto"
Budget = int | str
HEADLINE = {"t2i": "all", "t2v": "motion_colour", "caption-image": "all", "caption-video": "motion_colour_shape"}
COMBOS = {"t2v": {"motion_colour": ("motion", "colour")},
          "caption-video": {"motion_colour_shape": ("motion", "colour", "shape")}}
# issue 9's bar for the embedded default (ShapesBench, judge): seen / held-out combinations
TARGETS = {"t2i": {"seen": 0.90, "heldout": 0.60}, "caption-image": {"seen": 0.95, "heldout": 0.70},
           "t2v": {"seen": 0.85}, "caption-video": {"seen": 0.90}}
TITLES = {"t2i": "text-to-image", "t2v": "text-to-video", "caption-image": "image captioning",
          "caption-video": "video captioning"}


def task_kind(cfg: ZeroShotEvalConfig) -> str:
    """``t2i``, ``t2v``, ``caption-image`` or ``caption-video``."""
    return f"caption-{cfg.modality}" if cfg.task == "caption" else cfg.task


def parse_budgets(text: str) -> tuple[list[int], bool]:
    """``"1,2,4,auto"`` -> ``([1, 2, 4], True)``; raises ValueError on anything else."""
    ints, auto = [], False
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if item == AUTO:
            auto = True
        elif item.isdigit() and int(item) >= 1:
            ints.append(int(item))
        else:
            raise ValueError(f"budgets are positive integers or 'auto' (e.g. 1,2,4,8,auto), got {item!r}")
    if not ints and not auto:
        raise ValueError(f"no budget in {text!r}")
    return sorted(set(ints)), auto


def sweep_budgets(cfg: ZeroShotEvalConfig, n_max: int) -> list[Budget]:
    """The budgets of a run: ``cfg.budgets`` (default 1, 2, 4, ..., N) then ``"auto"`` when ``cfg.auto``."""
    ints = sorted(set(cfg.budgets)) if cfg.budgets else [1 << i for i in range(n_max.bit_length()) if 1 << i <= n_max]
    too_big = [b for b in ints if b > n_max]
    if too_big:
        raise ValueError(f"budgets {too_big} exceed the model's maximum of {n_max} tokens (the tokenizer's N, capped "
                         "by the vocabulary's budget tokens)")
    return [*ints, *([AUTO] if cfg.auto else [])]


def budget_label(b: Budget) -> str:
    return AUTO if b == AUTO else f"k{b}"


# ---- scoring ------------------------------------------------------------------------------------------------
def judge_metrics(preds: Sequence[dict], truths: Sequence[dict], keys: Sequence[str],
                  combos: dict[str, tuple[str, ...]] | None = None) -> dict[str, float]:
    """Accuracy of judged objects against ground truth (objects matched as sets, see ``judge.compare``).

    Returns:
        ``all`` (share of entries with every attribute of every object right), ``count`` (right object
        count), one share per key over ground-truth objects, and per combo the share of entries whose
        objects are right on all of the combo's keys.
    """
    if len(preds) != len(truths) or not truths:
        raise ValueError(f"got {len(preds)} judged entries for {len(truths)} ground-truth entries")
    combos = combos or {}
    exact = count = objects = 0
    hits = dict.fromkeys(keys, 0)
    combo_hits = dict.fromkeys(combos, 0)
    for p, t in zip(preds, truths):
        ok, correct, n = compare(p, t, keys)
        exact += ok
        count += len(p.get("objects", [])) == len(t.get("objects", []))
        objects += n
        for k in keys:
            hits[k] += correct[k]
        for name, ks in combos.items():
            combo_hits[name] += compare(p, t, ks)[0]
    out = {"all": exact / len(truths), "count": count / len(truths)}
    out.update({k: hits[k] / max(objects, 1) for k in keys})
    out.update({name: v / len(truths) for name, v in combo_hits.items()})
    return out


def _preds(kind: str, visuals: torch.Tensor | None, texts: Sequence[str] | None) -> list[dict[str, Any]]:
    """Judged objects of generated images/videos, or of captions parsed back into attributes."""
    video = kind in ("t2v", "caption-video")
    if texts is not None:
        return [parse_caption(t, "video" if video else "image") for t in texts]
    assert visuals is not None
    return [judge_video(v) if video else judge_image(v) for v in visuals]


def _scores(kind: str, preds: Sequence[dict], truths: Sequence[dict]) -> dict[str, float]:
    video = kind in ("t2v", "caption-video")
    return judge_metrics(preds, truths, VIDEO_ATTRS if video else IMAGE_ATTRS, COMBOS.get(kind))


def _pil_tensor(im: Any) -> torch.Tensor:
    """PIL RGB -> float ``(3, H, W)`` in [-1, 1]."""
    arr = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy())  # (H, W, 3)
    return arr.permute(2, 0, 1).float().div(127.5).sub(1.0)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


@dataclasses.dataclass
class Made:
    """What one group produced at one budget. Metrics are taken batch by batch, so only what the sample
    grids show is kept of the pixels (a 30k-prompt FID run never holds 30k images)."""

    group: Group
    chosen: list[int]  # budget per sample (B = inputs x samples, prompt-major)
    seconds: float  # sampling + decoding time
    preds: list[dict[str, Any]]  # judged objects per sample (ShapesBench), else empty
    texts: list[str] | None  # captions per sample (captioning)
    features: list[np.ndarray]  # FID/FVD features per batch, float64 (b, D)
    clip: list[np.ndarray]  # CLIP score / CLIPSIM per batch, (b,)
    visuals: torch.Tensor | None  # samples of the first grid_count inputs, float in [-1, 1]
    recon: torch.Tensor | None = None  # the ceiling's reconstructions of the first grid_count inputs


# ---- the sweep ----------------------------------------------------------------------------------------------
class Sweep:
    """State of one run: the pipeline, the groups, the tokenizer and the resolved sampler settings."""

    def __init__(self, cfg: ZeroShotEvalConfig, pipe: Any, meters: Meters) -> None:
        self.cfg, self.pipe, self.meters, self.kind = cfg, pipe, meters, task_kind(cfg)
        self.modality = "image" if self.kind in ("t2i", "caption-image") else "video"
        self.tok = getattr(pipe, self.modality, None)
        if self.tok is None:
            raise ValueError(f"the model bundle has no {self.modality} tokenizer, so it cannot run {cfg.task}")
        self.size = int(self.tok.cfg.image_size)
        self.frames = (cfg.frames or int(pipe.config.num_frames)) if self.modality == "video" else 0
        self.budgets = sweep_budgets(cfg, int(pipe.max_budget[self.modality]))
        self.steps, self.guidance = pipe._decode_steps(self.tok, cfg.decoder_steps)  # the pipeline's own decoder
        if cfg.benchmark == "shapes":
            self.groups = shapes_groups(cfg, self.modality, self.size, self.frames)
        elif cfg.benchmark == "prompts":
            self.groups = [prompt_group(cfg)]
        else:
            self.groups = [folder_group(cfg, self.size, self.frames)]
        self.ns = cfg.num_samples
        self.per_call = max(1, cfg.batch_size // self.ns)  # inputs per generate call
        self.features = meters.image_features if cfg.task == "t2i" else meters.video_features
        self.adaptive: dict[str, list[int]] = {}
        self.captioned: dict[tuple[str, int], Made] = {}  # captioning: what each fixed budget made, per group

    # -- settings -------------------------------------------------------------------------------------------
    def sampler(self) -> dict[str, Any]:
        """The sampler values actually used (preset where the config leaves None)."""
        c = self.cfg
        preset = getattr(self.pipe.config, "text" if c.task == "caption" else self.modality)
        out = {"temperature": preset.temperature if c.temperature is None else c.temperature,
               "top_k": preset.top_k if c.top_k is None else c.top_k,
               "top_p": preset.top_p if c.top_p is None else c.top_p,
               "rerank": preset.rerank if c.rerank is None else c.rerank}
        if c.task == "caption":
            out["max_new_tokens"] = preset.max_new_tokens if c.max_new_tokens is None else c.max_new_tokens
            if out["rerank"]:
                out.update(rerank_weight=preset.rerank_weight, rerank_temperature=preset.rerank_temperature)
            out["refine"] = preset.refine if c.refine is None else c.refine
            if out["refine"]:
                out.update(refine_alternatives=preset.refine_alternatives, refine_weight=preset.refine_weight,
                           refine_edit_weight=preset.refine_edit_weight)
            out["cfg_scale"] = 1.0  # captioning samples without guidance
        else:
            out["cfg_scale"] = preset.cfg_scale if c.cfg_scale is None else c.cfg_scale
        out.update(decoder_steps=self.steps, decoder_guidance=self.guidance)
        if self.modality == "video":
            out["num_frames"] = self.frames
        return out

    def seeds(self, g: Group, start: int, stop: int) -> list[int]:
        """Seeds of the samples of inputs ``start..stop-1`` (the same at every budget)."""
        return [self.cfg.seed + g.seed_offset + b for b in range(start * self.ns, stop * self.ns)]

    # -- generation -----------------------------------------------------------------------------------------
    def _generate(self, g: Group, budget: Budget, start: int, stop: int) -> Any:
        c = self.cfg
        kw: dict[str, Any] = dict(num_samples=self.ns, seed=self.seeds(g, start, stop), temperature=c.temperature,
                                  top_k=c.top_k, top_p=c.top_p)
        if c.task == "caption":
            b = self.adaptive[g.label][start:stop] if budget == AUTO else budget
            key = "images" if self.modality == "image" else "videos"
            return self.pipe.generate(None, "text", budget=b, max_new_tokens=c.max_new_tokens, rerank=c.rerank,
                                      refine=c.refine, **{key: list(g.batch(start, stop))}, **kw)
        if self.modality == "video":
            kw["num_frames"] = self.frames
        return self.pipe.generate(g.prompts[start:stop], self.modality, budget=budget, cfg_scale=c.cfg_scale,
                                  decoder_steps=c.decoder_steps, rerank=c.rerank, **kw)

    def produce(self, g: Group, budget: Budget, bar: tqdm, first_index: int = 0) -> Made:
        """Run the model on every input of ``g`` at ``budget`` and take its metrics batch by batch.

        Args:
            first_index: index of the group's first input among all groups (GenEval folder names).
        """
        reused = self._reuse_captions(g) if self.cfg.task == "caption" and budget == AUTO else None
        if reused is not None:
            bar.update(math.ceil(len(g) / self.per_call))
            return reused
        keep = self.cfg.grid_count
        made = Made(group=g, chosen=[], seconds=0.0, preds=[], texts=[] if self.cfg.task == "caption" else None,
                    features=[], clip=[], visuals=None)
        kept: list[torch.Tensor] = []
        for start in range(0, len(g), self.per_call):
            stop = min(len(g), start + self.per_call)
            res = self._generate(g, budget, start, stop)
            made.chosen += [int(k) for k in res.budgets]
            made.seconds += float(res.metadata.get("sampling_s", 0.0)) + float(res.metadata.get("decode_s", 0.0))
            texts, vis = None, None
            if self.cfg.task == "caption":
                texts = list(res.texts)
                made.texts += texts
            elif self.modality == "image":
                vis = torch.stack([_pil_tensor(im) for im in res.images])  # (b, 3, H, W)
            else:
                vis = torch.stack([torch.stack([_pil_tensor(f) for f in v], dim=1) for v in res.videos])  # (b,3,F,H,W)
            if g.attrs is not None:
                made.preds += _preds(self.kind, vis, texts)
            if vis is not None:
                prompts = [p for p in g.prompts[start:stop] for _ in range(self.ns)]
                if self.features is not None:
                    made.features.append(self.features(vis).double().numpy())
                if self.meters.clip is not None:
                    score = self.meters.clip.video_text_scores if vis.dim() == 5 else self.meters.clip.image_text_scores
                    made.clip.append(score(vis, prompts).double().numpy())
                if self.cfg.geneval_out and self.cfg.task == "t2i":
                    records = g.records[start:stop] or [{"prompt": p} for p in g.prompts[start:stop]]
                    write_geneval(Path(self.cfg.geneval_out) / budget_label(budget), records, vis, self.ns,
                                  first_index + start)
                if start < keep:
                    kept.append(vis[: (keep - start) * self.ns])
            bar.update(1)
        made.visuals = torch.cat(kept) if kept else None
        if self.cfg.task == "caption" and budget != AUTO:
            self.captioned[g.label, int(budget)] = made
        return made

    def _reuse_captions(self, g: Group) -> Made | None:
        """Captioning at ``"auto"``: each input's budget is a fixed k, and an input's captions at k (same seeds,
        same prompt) were already made at budget k. Assemble them; None when some k was not run."""
        ks = self.adaptive[g.label]
        if any((g.label, k) not in self.captioned for k in ks):
            return None
        made = Made(group=g, chosen=[], seconds=0.0, preds=[], texts=[], features=[], clip=[], visuals=None)
        for b in range(len(g) * self.ns):
            src = self.captioned[g.label, ks[b // self.ns]]
            assert src.texts is not None and made.texts is not None
            made.chosen.append(src.chosen[b])
            made.texts.append(src.texts[b])
            made.seconds += src.seconds / len(src.chosen)  # what this sample cost at its budget
            if src.preds:
                made.preds.append(src.preds[b])
        return made

    # -- the tokenizer ceiling ------------------------------------------------------------------------------
    def tokenize(self, g: Group) -> torch.Tensor:
        """Full token ids of the group's inputs (cached): ``(N, K)`` or ``(N, T, K)``."""
        if g.ids is None:
            parts = []
            with torch.no_grad():
                for i in range(0, len(g), self.cfg.batch_size):
                    x = g.batch(i, min(len(g), i + self.cfg.batch_size)).to(self.pipe.device)
                    parts.append(self.tok.tokenize(x).cpu())
            g.ids = torch.cat(parts)
        return g.ids

    def reconstruct(self, g: Group, ks: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
        """Decode input ``i // repeat`` from its first ``ks[i]`` tokens with ``seeds[i]``: float in [-1, 1]
        (``repeat = len(ks) // len(g)`` samples per input)."""
        ids = self.tokenize(g)
        repeat = len(ks) // len(g)
        out: list[torch.Tensor | None] = [None] * len(ks)
        for k in sorted(set(ks)):
            idx = [i for i, kk in enumerate(ks) if kk == k]
            for j in range(0, len(idx), self.cfg.batch_size):
                part = idx[j:j + self.cfg.batch_size]
                x = ids[[i // repeat for i in part]][..., :k].to(self.pipe.device)
                with torch.no_grad():
                    rec = self.tok.detokenize(x, steps=self.steps, guidance_scale=self.guidance,
                                              seed=[seeds[i] for i in part])
                for i, r in zip(part, rec.float().cpu().clamp(-1, 1)):
                    out[i] = r
        return torch.stack(out)  # type: ignore[arg-type]

    def adaptive_budgets(self, g: Group) -> list[int]:
        """Captioning ``"auto"``: per input the smallest k whose reconstruction reaches ``cfg.auto_psnr``,
        raised to the smallest budget the model was trained to caption from (``pipe.understanding_min_k``)."""
        from mm1d.data.pretokenize import adaptive_budget

        if g.label not in self.adaptive:
            acfg = AdaptiveBudgetConfig(enabled=True, psnr=self.cfg.auto_psnr, video_psnr=self.cfg.auto_video_psnr,
                                        steps=self.steps, guidance_scale=self.guidance, seed=self.cfg.seed)
            ids, ks = self.tokenize(g), []
            for i in range(0, len(g), self.cfg.batch_size):
                stop = min(len(g), i + self.cfg.batch_size)
                dev = self.pipe.device
                ks += adaptive_budget(self.tok, g.batch(i, stop).to(dev), ids[i:stop].to(dev), acfg)
            n_max = int(self.pipe.max_budget[self.modality])
            floor = min(self.pipe.understanding_min_k, n_max)
            self.adaptive[g.label] = [min(max(k, floor), n_max) for k in ks]
        return self.adaptive[g.label]


# ---- metrics that need more than the judge ------------------------------------------------------------------
def reference_features(sw: Sweep) -> np.ndarray | None:
    """FID/FVD features of the reference set: ``--reference``, else the ShapesWorld renders of every group."""
    from mm1d.evaluation.fid import extract_features

    if sw.features is None:
        return None
    if sw.cfg.reference:
        return extract_features(sw.features, iter_reference(sw.cfg, sw.modality, sw.size, sw.frames),
                                progress=sw.cfg.progress, desc="reference features")
    truth = [g.batch(0, len(g)) for g in sw.groups if g.pixels is not None]
    if not truth:
        raise ValueError("FID/FVD needs a reference set: pass --reference DIR")
    return extract_features(sw.features, torch.cat(truth))


def caption_scores(sw: Sweep, g: Group, texts: list[str]) -> dict[str, float]:
    """CIDEr-D and BLEU-1..4 of a group's captions against its references (``cfg.tokenization``)."""
    from mm1d.evaluation.captions import caption_metrics

    assert g.references is not None
    refs = {b: g.references[b // sw.ns] for b in range(len(texts))}
    m = caption_metrics(refs, dict(enumerate(texts)), tokenizer=sw.cfg.tokenization)
    return {g.prefix + "cider": m["CIDEr"], **{f"{g.prefix}bleu_{i}": m[f"BLEU-{i}"] for i in range(1, 5)}}


def pooled_scores(sw: Sweep, made: list[Made], ref_feats: np.ndarray | None) -> dict[str, float | None]:
    """FID/FVD and CLIP score/CLIPSIM over every generated sample of a budget (all groups)."""
    from mm1d.evaluation.fid import fid_from_features

    out: dict[str, float | None] = {}
    video = sw.modality == "video"
    feats = [f for m in made for f in m.features]
    if ref_feats is not None and feats:
        gen = np.concatenate(feats)
        out["fvd" if video else "fid"] = fid_from_features(ref_feats, gen) if len(gen) >= 2 else None
    scores = [s for m in made for s in m.clip]
    if scores:
        out["clipsim" if video else "clip_score"] = float(np.concatenate(scores).mean())
    return out


# ---- samples ------------------------------------------------------------------------------------------------
def write_samples(sw: Sweep, budget: Budget, made: list[Made]) -> list[str]:
    """Write the grid (images), GIF (videos) or captioned sheet (captioning) of one budget, and for captioning
    ``captions/<budget>.jsonl``; returns the grid's path relative to ``cfg.out``."""
    from mm1d.evaluation.report import save_image_grid, save_video_grid
    from mm1d.utils import atomic_write_text

    out, label, ns = Path(sw.cfg.out), budget_label(budget), sw.ns
    n = min(sw.cfg.grid_count, min(len(m.group) for m in made))
    if sw.cfg.task == "caption":
        lines = [json.dumps({"group": m.group.label, "index": b // ns, "sample": b % ns,
                             "budget": m.chosen[b], "caption": t, "truth": m.group.prompts[b // ns]})
                 for m in made for b, t in enumerate(m.texts or [])]
        atomic_write_text(out / "captions" / f"{label}.jsonl", "\n".join(lines) + "\n")
        visuals, texts = [], []
        for m in made:
            assert m.texts is not None
            shown = m.group.batch(0, n)
            for i in range(n):
                x = shown[i]
                if m.recon is not None and sw.modality == "image":
                    x = torch.stack([x, m.recon[i]])  # (2, 3, H, W): the input and what k tokens of it show
                visuals.append(x)
                tag = f"{m.group.label} " if m.group.label else ""
                texts.append([f"{tag}k={m.chosen[i * ns]}: {m.texts[i * ns]}", f"truth: {m.group.prompts[i]}"])
        rel = f"samples/caption_{label}.png"
        caption_sheet(visuals, texts, out / rel, columns=min(4, n))
        return [rel]
    rows = []
    for m in made:
        assert m.visuals is not None
        if m.group.pixels is not None:
            rows.append(m.group.batch(0, n))
        rows.append(m.visuals[::ns][:n])
        if m.recon is not None:
            rows.append(m.recon[::ns][:n])
    rel = f"samples/{sw.cfg.task}_{label}.{'png' if sw.modality == 'image' else 'gif'}"
    if sw.modality == "image":
        save_image_grid(rows, out / rel)
    else:
        save_video_grid(rows, out / rel, fps=sw.cfg.fps)
    return [rel]


# ---- the whole run ------------------------------------------------------------------------------------------
def run_budget(sw: Sweep, budget: Budget, bar: tqdm, ref_feats: np.ndarray | None
               ) -> tuple[dict[str, float | None], list[Made], float]:
    """Every group at one budget: (metrics row, what was made, seconds per sample)."""
    cfg, kind, keep = sw.cfg, sw.kind, sw.cfg.grid_count
    row: dict[str, float | None] = {}
    made: list[Made] = []
    first = 0
    for g in sw.groups:
        if cfg.task == "caption" and budget == AUTO:
            sw.adaptive_budgets(g)
        m = sw.produce(g, budget, bar, first)
        first += len(g)
        if g.attrs is not None:
            truths = [a for a in g.attrs for _ in range(sw.ns)]
            row.update({g.prefix + k: v for k, v in _scores(kind, m.preds, truths).items()})
            if cfg.ceiling:
                if cfg.task == "caption":  # the inputs the model saw, at the k it saw them
                    ks = sw.adaptive[g.label] if budget == AUTO else [int(budget)] * len(g)
                    seeds = [cfg.seed + g.seed_offset + i * sw.ns for i in range(len(g))]
                    truths = g.attrs
                else:  # each sample's ground truth, at the k the sample ended with
                    ks, seeds = m.chosen, sw.seeds(g, 0, len(g))
                recon = sw.reconstruct(g, ks, seeds)
                ceiling = _scores(kind, _preds(kind, recon, None), truths)
                row.update({CEILING + g.prefix + k: v for k, v in ceiling.items()})
                m.recon = recon[: keep * (len(ks) // len(g))]
        if m.texts is not None and g.references is not None:
            row.update(caption_scores(sw, g, m.texts))
        if budget == AUTO and g.prefix:
            row[g.prefix + "mean_budget"] = _mean(m.chosen)
        made.append(m)
    row.update(pooled_scores(sw, made, ref_feats))
    if budget == AUTO:
        row["mean_budget"] = _mean([k for m in made for k in m.chosen])
    return row, made, sum(m.seconds for m in made) / max(1, sum(len(m.chosen) for m in made))


def run_zeroshot(cfg: ZeroShotEvalConfig, pipe: Any, meters: Meters | None = None) -> dict[str, Any]:
    """Run the sweep described in the module docstring and write everything to ``cfg.out``.

    Args:
        cfg: the run's settings (task, benchmark, budgets, sampler, metric networks, ...).
        pipe: an ``mm1d.inference.Pipeline`` (``mm1d.load(bundle)``).
        meters: loaded metric networks (default: ``load_meters(cfg)``).

    Returns:
        The results dict written to ``cfg.out/results.json``.
    """
    from mm1d.evaluation.report import make_results, write_results

    check_inputs(cfg)
    meters = meters if meters is not None else load_meters(cfg)
    sw = Sweep(cfg, pipe, meters)
    ref_feats = reference_features(sw)
    bar = tqdm(total=len(sw.budgets) * sum(math.ceil(len(g) / sw.per_call) for g in sw.groups),
               desc=f"{cfg.task} sweep", unit="batch", disable=not cfg.progress)
    rows: dict[str, dict[str, float | None]] = {}
    timing: dict[str, float] = {}
    samples: dict[str, list[str]] = {}
    for budget in sw.budgets:
        rows[str(budget)], made, timing[budget_label(budget)] = run_budget(sw, budget, bar, ref_feats)
        samples[str(budget)] = write_samples(sw, budget, made)
    bar.close()

    kind, judged = sw.kind, [g for g in sw.groups if g.attrs is not None]
    ints = [b for b in sw.budgets if b != AUTO]
    summary: dict[str, Any] = {"headline": [g.prefix + HEADLINE[kind] for g in judged],
                               "counts": {g.label or "inputs": len(g) for g in sw.groups},
                               "samples_per_input": sw.ns, "seconds_per_sample": timing}
    if AUTO in sw.budgets:
        summary["auto"] = {k: v for k, v in rows[AUTO].items() if v is not None}
        if cfg.task == "caption":
            rule = AdaptiveBudgetConfig(psnr=cfg.auto_psnr, video_psnr=cfg.auto_video_psnr)
            psnr = rule.threshold(video=cfg.modality == "video")
            floor = pipe.understanding_min_k
            summary["auto_rule"] = (f"smallest k in 1, 2, 4, ..., N whose reconstruction reaches {psnr} dB"
                                    + (f", at least {floor} (the model's understanding_min_k)" if floor else ""))
    if judged:
        summary["targets"] = {g.prefix + HEADLINE[kind]: TARGETS[kind][g.label] for g in judged
                              if g.label in TARGETS[kind]}
    settings = {**dataclasses.asdict(cfg), "model": cfg.model or "(default bundle)", "sampler": sw.sampler(),
                "budgets_run": [budget_label(b) for b in sw.budgets],
                "tokenizer_info": {"class": type(sw.tok).__name__, "num_registers": int(sw.tok.num_registers),
                                   "codebook_size": int(sw.tok.codebook_size), "image_size": sw.size}}
    if cfg.task == "caption":
        settings["caption_tokenization"] = cfg.tokenization
    extra = ("fid", "clip_score", "fvd", "clipsim", "cider")
    names = summary["headline"] + [n for n in rows[str(sw.budgets[0])] if n.split("/")[-1] in extra]
    model_name = Path(cfg.model).name if cfg.model else "default bundle"
    rr, rf = settings["sampler"]["rerank"], settings["sampler"].get("refine", 0)
    results = make_results(
        f"{kind}-{cfg.benchmark}", settings, ints, {b: rows[str(b)] for b in ints},
        title=f"{TITLES[kind]}, {cfg.benchmark} ({model_name}{f', best of {rr + 1}' if rr else ''}"
              f"{f', up to {rf} caption edits' if rf else ''})",
        budget_name="k per time step" if sw.modality == "video" else "k", summary=summary, samples=samples,
        media=["quality_vs_budget.png"] if names else [])
    if names:
        plot_sweep(results, names, Path(cfg.out) / "quality_vs_budget.png")
    write_results(cfg.out, results)
    return results


__all__ = ["AUTO", "HEADLINE", "TARGETS", "Made", "Sweep", "judge_metrics", "parse_budgets", "run_zeroshot",
           "sweep_budgets", "task_kind"]
