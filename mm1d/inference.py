"""Generation in one call: ``mm1d.load`` -> ``Pipeline`` and ``mm1d.generate`` -> ``GenerationResult``.

Tasks (the sequence formats are those of ``mm1d.sequence``; the sampler is ``mm1d.sampling``):

* ``modality="image"``: text-to-image, one budget per sample (an int, ``"auto"`` or a list).
* ``modality="video"``: text-to-video; with ``images=[first_frame]`` text-image-to-video (the frame is
  given to the model as a FlexTok condition and its VideoFlexTok tokens are forced as time step 0, so
  they appear unchanged in the output, and the decoder keeps the frame clean: frame 0 reproduces it,
  its PSNR is in ``metadata["first_frame_psnr"]``); with ``videos=[clip]`` a continuation (the clip's
  steps are forced). Videos longer than one model window roll out causally, window after window, each
  new window seeing the last ``rollout_context`` time steps of the previous one.
* ``modality="text"``: captioning of ``images=`` or ``videos=`` (an optional ``prompt`` is a forced caption
  prefix).

Classifier-free guidance streams (batched with the conditional one, sharing its tokens):

* text-to-image / text-to-video / continuation: ``[caption, no caption]``, ``u + s (c - u)``; the
  unconditional prompt keeps ``<boi>``/``<bov>``, the length and the budget tokens.
* text-image-to-video (joint image-text guidance, STIV style): ``[caption + frame, frame only, neither
  (<nocond>)]`` mixed as ``l_none + s_img (l_frame - l_none) + s_txt (l_full - l_frame)`` with
  ``s_txt = cfg_scale`` and ``s_img = image_cfg_scale``; equal scales reduce to plain CFG against
  ``l_none``. A scale of 1 drops its stream.

Previews and streaming: ``preview_every=[4, 16]`` decodes an image's first k tokens (video: the first t
time steps) with ``preview_steps`` Euler steps as soon as they exist, between decode steps; ``callback``
receives each ``Preview``. For video, ``callback`` also receives every tokenizer chunk as soon as its time
steps are sampled (``kind="chunk"``; decoded with the final settings and seeds, so the frames equal the
final video's).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mm1d.checkpoint import GENERATION_FILE, load_release_bundle
from mm1d.config import GenerationConfig, SamplerPreset, from_dict
from mm1d.modality import Vocab, check_modality
from mm1d.sampling import (
    ConstraintTable,
    RowProgram,
    SamplingParams,
    sample,
)
from mm1d.tokenization.text import TextTokenizer
from mm1d.tokenization.video_latents import FRAMES_PER_STEP, check_num_frames
from mm1d.utils import default_device

__all__ = ["load", "generate", "Pipeline", "GenerationResult", "Preview", "DEFAULT_BUNDLE"]

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "assets" / "shapes-tiny"
DEFAULT_BUNDLE_COMMAND = "bash scripts/main_job.sh"
Budget = int | str


@dataclass
class Preview:
    """A decoded prefix handed to ``callback`` while sampling goes on.

    Attributes:
        kind: ``"preview"`` (few decoder steps) or ``"chunk"`` (a finished video chunk, final quality).
        sample: index of the sample in the batch.
        modality: ``"image"`` or ``"video"``.
        k: image tokens decoded, or video time steps decoded so far.
        image: the preview image (image previews).
        frames: video frames (a chunk's new frames, or the whole prefix for video previews).
    """

    kind: str
    sample: int
    modality: str
    k: int
    image: Any = None
    frames: list[Any] | None = None


@dataclass
class GenerationResult:
    """Output of ``generate``.

    Attributes:
        images: PIL images (``modality="image"``).
        videos: lists of PIL frames (``modality="video"``).
        texts: captions (``modality="text"``).
        tokens: per sample, the local ids of what was produced: image ``(k,)``, video ``(T, k)``, caption
            ``(n,)`` (long tensors); a visual span has exactly its budget's length.
        budgets: the budget of each sample (sampled by the model for ``"auto"``; the input's for captions).
        previews: every ``Preview`` made during sampling.
        metadata: seeds, prompts, timings (``sampling_s``, ``decode_s``), ``first_frame_psnr``, ...
    """

    images: list[Any] = field(default_factory=list)
    videos: list[list[Any]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    tokens: list[torch.Tensor] = field(default_factory=list)
    budgets: list[int | None] = field(default_factory=list)
    previews: list[Preview] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# Media helpers
# ----------------------------------------------------------------------------------------------------


def to_pil(x: torch.Tensor) -> Any:
    """float ``(3, H, W)`` in [-1, 1] -> PIL RGB image."""
    from PIL import Image

    arr = x.detach().float().cpu().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).numpy())


def _pil_to_tensor(im: Any, size: int) -> torch.Tensor:
    from PIL import Image

    im = im.convert("RGB")
    w, h = im.size
    s = min(w, h)
    if (w, h) != (size, size):
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        im = im.resize((size, size), Image.BICUBIC)
    arr = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H, W)
    return arr.float().div(127.5).sub(1)


def load_image(x: Any, size: int) -> torch.Tensor:
    """A PIL image, file path, uint8 ``(H, W, 3)`` array or ``(3, H, W)`` tensor -> float ``(3, size, size)``
    in [-1, 1] (centre-cropped to a square and resized when needed)."""
    from PIL import Image

    if isinstance(x, (str, Path)):
        if not Path(x).is_file():
            raise FileNotFoundError(f"image file not found: {x}")
        with Image.open(x) as im:
            return _pil_to_tensor(im, size)
    if isinstance(x, Image.Image):
        return _pil_to_tensor(x, size)
    if isinstance(x, np.ndarray):
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"an image array must be (H, W, 3) uint8, got shape {x.shape}")
        return _pil_to_tensor(Image.fromarray(x.astype(np.uint8)), size)
    if isinstance(x, torch.Tensor):
        if x.dim() != 3 or x.shape[0] != 3:
            raise ValueError(f"an image tensor must be (3, H, W), got shape {tuple(x.shape)}")
        t = x.float().div(127.5).sub(1) if x.dtype == torch.uint8 else x.float()
        if float(t.min()) < -1.001 or float(t.max()) > 1.001:
            raise ValueError("a float image tensor must be in [-1, 1]")
        if tuple(t.shape[1:]) != (size, size):
            t = torch.nn.functional.interpolate(t[None], size=(size, size), mode="bicubic", antialias=True)[0]
        return t.clamp(-1, 1)
    raise ValueError(f"cannot read an image from {type(x).__name__}")


def load_video(x: Any, size: int, fps: float | None = None) -> torch.Tensor:
    """A video file (mp4, or a multi-frame GIF), a list of frames or a ``(3, F, H, W)`` tensor -> float
    ``(3, F, size, size)`` in [-1, 1]. Files are trimmed to ``1 + 4m`` frames; tensors and frame lists
    must already have such a count."""
    if isinstance(x, (str, Path)):
        p = Path(x)
        if not p.is_file():
            raise FileNotFoundError(f"video file not found: {p}")
        if p.suffix.lower() == ".gif":
            from PIL import Image, ImageSequence

            with Image.open(p) as im:
                frames = [_pil_to_tensor(f, size) for f in ImageSequence.Iterator(im)]
            frames = frames[: 1 + FRAMES_PER_STEP * ((len(frames) - 1) // FRAMES_PER_STEP)]
            return torch.stack(frames, dim=1)  # (3, F, S, S)
        from mm1d.tokenization.video_io import read_video

        return read_video(p, fps=fps, size=size, as_float=True, round_to=FRAMES_PER_STEP)
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError("a video given as a list of frames needs at least one frame")
        v = torch.stack([load_image(f, size) for f in x], dim=1)  # (3, F, S, S)
    elif isinstance(x, torch.Tensor):
        if x.dim() != 4 or x.shape[0] != 3:
            raise ValueError(f"a video tensor must be (3, F, H, W), got shape {tuple(x.shape)}")
        v = torch.stack([load_image(x[:, f], size) for f in range(x.shape[1])], dim=1)
    else:
        raise ValueError(f"cannot read a video from {type(x).__name__}")
    check_num_frames(v.shape[1])
    return v


def psnr01(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of two [-1, 1] tensors measured on [0, 1] (capped at 100 dB for identical inputs)."""
    mse = float(((x.float() - y.float()) / 2).pow(2).mean())
    return 100.0 if mse <= 1e-10 else float(10 * np.log10(1.0 / mse))


# ----------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------


def _prompts(prompt: str | Sequence[str | None] | None, n_inputs: int) -> list[str | None]:
    if prompt is None:
        return [None] * max(n_inputs, 1)
    items = [prompt] if isinstance(prompt, str) else list(prompt)
    if not items:
        raise ValueError("the prompt list is empty; pass at least one prompt (or None for unconditional)")
    for p in items:
        if p is not None and not isinstance(p, str):
            raise ValueError(f"prompts must be strings or None, got {type(p).__name__}")
        if isinstance(p, str) and not p.strip():
            raise ValueError("a prompt is an empty string; pass None for an unconditional sample")
    return items


def check_budget(b: Any, n: int, allow_auto: bool = True) -> Budget:
    """Validate one budget: an int in ``[1, n]`` or ``"auto"``."""
    if isinstance(b, str):
        if b == "auto" and allow_auto:
            return b
        raise ValueError(f"budget {b!r} is not valid: use an integer in [1, {n}]"
                         + (" or 'auto'" if allow_auto else ""))
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
        raise ValueError(f"budget {b!r} is not an integer: use an integer in [1, {n}]"
                         + (" or 'auto'" if allow_auto else ""))
    if not 1 <= int(b) <= n:
        raise ValueError(f"budget {int(b)} is out of range: it must be in [1, {n}] (N tokens of the tokenizer, "
                         "capped by the vocabulary's budget tokens)")
    return int(b)


def _budgets(budget: Any, n_groups: int, per_group: int, n: int, default: int, allow_auto: bool) -> list[Budget]:
    """One budget per sample: an int / "auto" for all, or a list per sample or per prompt."""
    total = n_groups * per_group
    if budget is None:
        budget = default if default else n
        budget = min(budget, n)
    if isinstance(budget, (list, tuple)):
        items = [check_budget(b, n, allow_auto) for b in budget]
        if len(items) == total:
            return items
        if len(items) == n_groups:
            return [b for b in items for _ in range(per_group)]
        raise ValueError(f"got {len(items)} budgets for {total} samples ({n_groups} prompts x {per_group} samples)")
    return [check_budget(budget, n, allow_auto)] * total


def _seeds(seed: int | Sequence[int] | None, n: int) -> list[int]:
    if seed is None:
        base = int(torch.randint(0, 2**31 - 1, (1,)).item())
        return [base + i for i in range(n)]
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return [int(seed) + i for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} samples")
    return seeds


def _scale(value: float | None, default: float, name: str) -> float:
    v = default if value is None else value
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise ValueError(f"{name} must be a finite number (1 disables guidance), got {v!r}")
    return float(v)


def _inputs(x: Any) -> list[Any] | None:
    if x is None:
        return None
    items = list(x) if isinstance(x, (list, tuple)) else [x]
    if not items:
        raise ValueError("images= / videos= is an empty list")
    return items


# ----------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------


class Pipeline:
    """The model, its vocabulary and tokenizers, and the generation presets.

    Args:
        model: the ``mm1d.model.Transformer`` (eval mode).
        vocab: its vocabulary registry.
        text: the SentencePiece tokenizer.
        image: the FlexTok tokenizer (None: no image generation or image inputs).
        video: the VideoFlexTok tokenizer (None: no video generation or video inputs).
        config: sampler presets and decoding defaults.
        understanding_min_k: the smallest visual budget the model was trained to caption from (its
            ``data.sequence.understanding_min_k``; 0: any). A budget the model chooses for captioning never
            goes below it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        vocab: Vocab,
        text: TextTokenizer,
        image: Any = None,
        video: Any = None,
        config: GenerationConfig | None = None,
        understanding_min_k: int = 0,
    ) -> None:
        self.model, self.vocab, self.text, self.image, self.video = model.eval(), vocab, text, image, video
        self.config = config or GenerationConfig()
        self.understanding_min_k = understanding_min_k
        self.device = next(model.parameters()).device
        if text.vocab_size > vocab.text_size:
            raise ValueError(f"the text tokenizer has {text.vocab_size} pieces, more than the model's "
                             f"vocab.text_size={vocab.text_size}")
        for name, tok, size in (("image", image, vocab.image_codebook), ("video", video, vocab.video_codebook)):
            if tok is not None and tok.codebook_size != size:
                raise ValueError(f"the {name} tokenizer has {tok.codebook_size} codes but the model's vocabulary "
                                 f"expects {size}; the bundle mixes tokenizers")
        self.max_budget = {
            m: min(t.num_registers, vocab.max_budget) for m, t in (("image", image), ("video", video)) if t is not None
        }
        self.table = ConstraintTable(
            vocab, text.vocab_size, image.codebook_size if image else None, video.codebook_size if video else None,
            self.max_budget.get("image"), self.max_budget.get("video"), self.device,
        )

    @classmethod
    def from_bundle(
        cls, path: str | Path, config: GenerationConfig | None = None, device: str | torch.device | None = None
    ) -> Pipeline:
        """Load a release bundle (``mm1d.checkpoint``); a ``generation.json`` beside it sets the presets."""
        p = Path(path)
        if config is None:
            config = GenerationConfig()
            if (p / GENERATION_FILE).is_file():
                config = from_dict(GenerationConfig, json.loads((p / GENERATION_FILE).read_text()))
        dev = torch.device(device) if device is not None else (
            default_device() if config.device == "auto" else torch.device(config.device))
        # weights stored in float16 (the shipped bundle) compute in the configured dtype: float16 matmuls
        # are slow on CPUs and sample differently
        dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
        rb = load_release_bundle(p, device=dev, dtype=dtype)
        text = TextTokenizer.load(rb.text_path)
        image = video = None
        if rb.tokenizer_dir("image") is not None:
            from mm1d.tokenization.flextok import FlexTok

            image = FlexTok.from_pretrained(rb.tokenizer_dir("image"), device=dev)
        if rb.tokenizer_dir("video") is not None:
            from mm1d.tokenization.videoflextok import VideoFlexTok

            video = VideoFlexTok.from_pretrained(rb.tokenizer_dir("video"), device=dev)
        return cls(rb.model, rb.vocab, text, image, video, config, rb.understanding_min_k)

    # ---- helpers ------------------------------------------------------------------------------------
    def _need(self, modality: str) -> Any:
        tok = self.image if modality == "image" else self.video
        if tok is None:
            raise ValueError(f"this model bundle has no {modality} tokenizer, so it cannot handle {modality}s")
        return tok

    def _caption_ids(self, p: str | None) -> np.ndarray | None:
        if p is None:
            return None
        ids = np.asarray(self.text.encode(p), dtype=np.int64)
        if len(ids) == 0:
            raise ValueError(f"prompt {p!r} encodes to no text tokens")
        return ids

    def _sample(self, prompts: list[list[list[int]]], programs: list[RowProgram], params: SamplingParams,
                seeds: list[int], weights: torch.Tensor | None, hook: Callable | None = None,
                logprobs: bool = False) -> Any:
        return sample(self.model, prompts, programs, self.table, params, seeds, weights, self.vocab.pad_id,
                      self.model.config.max_seq_len, hook, return_logprobs=logprobs)

    def _decode_steps(self, tok: Any, steps: int | None) -> tuple[int, float]:
        cfg = self.config
        s = steps if steps is not None else (cfg.decoder_steps or tok.cfg.decode_steps)
        g = cfg.decoder_guidance or tok.cfg.guidance_scale
        return int(s), float(g)

    # ---- public -------------------------------------------------------------------------------------
    def generate(
        self,
        prompt: str | Sequence[str | None] | None = None,
        modality: str = "image",
        images: Any = None,
        videos: Any = None,
        budget: Budget | Sequence[Budget] | None = None,
        num_frames: int | None = None,
        num_samples: int = 1,
        seed: int | Sequence[int] | None = None,
        cfg_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        decoder_steps: int | None = None,
        preview_every: Sequence[int] | None = None,
        image_cfg_scale: float | None = None,
        max_new_tokens: int | None = None,
        callback: Callable[[Preview], None] | None = None,
        rerank: int | None = None,
        refine: int | None = None,
    ) -> GenerationResult:
        """Generate images, videos or captions (see the module docstring for the tasks).

        Args:
            prompt: one caption, a list of captions (a batch), or None (unconditional / captioning).
            modality: ``"image"``, ``"video"`` or ``"text"``.
            images: for ``"text"``, images to caption; for ``"video"``, first frames (text-image-to-video).
                PIL images, paths, ``(H, W, 3)`` uint8 arrays or ``(3, H, W)`` tensors; one per prompt.
            videos: for ``"text"``, videos to caption; for ``"video"``, clips to continue. Paths, frame lists
                or ``(3, F, H, W)`` tensors with ``F = 1 + 4m``; one per prompt.
            budget: tokens per image / per video time step: None (preset), an int in ``[1, N]``,
                ``"auto"`` (the model chooses), or a list (per sample or per prompt). For captioning, the
                input's budget.
            num_frames: video length ``1 + 4m`` (default: preset; continuation: the total with the clip).
            num_samples: samples per prompt.
            seed: int (sample i uses ``seed + i``), a list of per-sample seeds, or None.
            cfg_scale: text guidance scale (preset when None).
            temperature, top_k, top_p: sampling (preset when None).
            decoder_steps: Euler steps of the tokenizer decoder.
            preview_every: image: token counts; video: time-step counts at which to decode previews.
            image_cfg_scale: first-frame guidance scale for text-image-to-video.
            max_new_tokens: caption length limit.
            callback: receives each ``Preview`` (and each finished video chunk).
            rerank: also draw this many candidates per sample and keep the best (0 off, None: preset; a
                preset's rerank is skipped for unconditional samples and with ``preview_every``). Captions:
                by ``log p(caption | input) + w log p(input | caption)`` (``mm1d.scoring``). Images and
                videos: by ``log p(prompt | candidate)``, the model captioning each decoded candidate
                after tokenizing it again (needs a prompt; ``generation_tasks.best_of_visual``).
            refine: captions only: at most this many single-token edits of each kept caption, each one
                raising ``log p(caption | input)`` (edited token down-weighted) + w ``log p(input | caption)``
                (``mm1d.scoring.refine_captions``; 0 off, None: preset).

        Returns:
            A ``GenerationResult``.
        """
        check_modality(modality)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        imgs, vids = _inputs(images), _inputs(videos)
        preset: SamplerPreset = getattr(self.config, modality)
        params = SamplingParams(
            preset.temperature if temperature is None else temperature,
            preset.top_k if top_k is None else top_k,
            preset.top_p if top_p is None else top_p,
        )
        previews = sorted({int(k) for k in preview_every}) if preview_every else []
        if any(k < 1 for k in previews):
            raise ValueError(f"preview_every values must be >= 1, got {list(preview_every)}")
        opts = dict(num_samples=num_samples, seed=seed, params=params, preset=preset, decoder_steps=decoder_steps,
                    previews=previews, callback=callback)
        if modality == "text":
            if (imgs is None) == (vids is None):
                raise ValueError("modality='text' (captioning) needs images= or videos= (exactly one of them)")
            from mm1d.generation_tasks import caption

            n_new = preset.max_new_tokens if max_new_tokens is None else max_new_tokens
            if isinstance(n_new, bool) or not isinstance(n_new, int) or n_new < 1:
                raise ValueError(f"max_new_tokens must be a positive integer, got {n_new!r}")
            return caption(self, prompt, imgs, vids, budget, n_new, **opts,
                           rerank=preset.rerank if rerank is None else rerank,
                           refine=preset.refine if refine is None else refine)
        if refine:
            raise ValueError("refine edits captions (modality='text'); images and videos take rerank=")
        opts["rerank"] = preset.rerank if rerank is None else rerank
        if rerank is None and opts["rerank"] and (previews or prompt is None
                                                  or (not isinstance(prompt, str) and None in list(prompt))):
            # a preset's best of N needs a prompt to score each candidate against and cannot preview them all:
            # such calls draw once (an explicit rerank= still raises)
            opts["rerank"] = 0
        if modality == "image":
            if imgs is not None or vids is not None:
                raise ValueError("modality='image' takes no images=/videos=; caption them with modality='text', "
                                 "or animate a first frame with modality='video'")
            from mm1d.generation_tasks import text_to_image

            return text_to_image(self, prompt, budget, _scale(cfg_scale, preset.cfg_scale, "cfg_scale"), **opts)
        if imgs is not None and vids is not None:
            raise ValueError("modality='video' takes images= (first frames) or videos= (clips to continue), not both")
        from mm1d.generation_tasks import text_to_video

        return text_to_video(
            self, prompt, imgs, vids, budget, num_frames, _scale(cfg_scale, preset.cfg_scale, "cfg_scale"),
            _scale(image_cfg_scale, preset.image_cfg_scale, "image_cfg_scale"), **opts,
        )


# ----------------------------------------------------------------------------------------------------
# Module-level API
# ----------------------------------------------------------------------------------------------------

_CACHE: dict[str, Pipeline] = {}


def load(bundle_dir: str | Path | None = None, config: GenerationConfig | None = None,
         device: str | torch.device | None = None) -> Pipeline:
    """Load a release bundle as a ``Pipeline`` (default: the shipped tiny bundle ``mm1d/assets/shapes-tiny``).

    Raises:
        FileNotFoundError: the bundle does not exist (for the default one, naming the command that writes it).
    """
    if bundle_dir is None:
        if not (DEFAULT_BUNDLE / "config.json").is_file():
            raise FileNotFoundError(
                f"the default model bundle {DEFAULT_BUNDLE} does not exist yet; create it with "
                f"`{DEFAULT_BUNDLE_COMMAND}` (the quickstart trains the tiny ShapesWorld model and writes it "
                "there), or pass the path of a release bundle"
            )
        bundle_dir = DEFAULT_BUNDLE
    p = Path(bundle_dir)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"no mm1d release bundle at {p} (config.json missing)")
    return Pipeline.from_bundle(p, config=config, device=device)


def generate(prompt: str | Sequence[str | None] | None = None, modality: str = "image", *,
             model: str | Path | Pipeline | None = None, **kwargs: Any) -> GenerationResult:
    """``Pipeline.generate`` on ``model`` (a ``Pipeline``, a bundle path, or None for the default bundle).

    Loaded pipelines are cached by path, so repeated calls do not reload the bundle.
    """
    check_modality(modality)
    if isinstance(model, Pipeline):
        pipe = model
    else:
        key = str(Path(model).resolve()) if model is not None else str(DEFAULT_BUNDLE)
        if key not in _CACHE:
            _CACHE[key] = load(model)
        pipe = _CACHE[key]
    return pipe.generate(prompt, modality, **kwargs)
