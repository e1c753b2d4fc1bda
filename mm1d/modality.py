"""The one vocabulary registry: every id range, special token, budget token and offset lives here.

Layout of the single id space (contiguous ranges, offsets computed from the sizes)::

    [0, V_text)                         text (SentencePiece)
    [O_spec, O_spec + S)                specials: <bos> <eos> <pad> <boi> <eoi> <bov> <eov> <eot> <kauto>
                                        <bocf> <eocf> <nocond> <t2i> <i2t> <t2v> <v2t>,
                                        then budget tokens <k_1>..<k_N>, then length tokens <nt_1>..<nt_T>
    [O_img, O_img + C_img)              FlexTok image codes
    [O_vid, O_vid + C_vid)              VideoFlexTok video codes

With ``shared_visual`` the image and video codes share one range (``O_vid == O_img``, ``C_vid == C_img``):
one embedding row and one head row per code, as in Emu3's single visual vocabulary. The sequence
structure (``<boi>`` vs ``<bov> <nt_T>``) says which tokenizer decodes a span.

No other module hard-codes an offset: sequence building, embeddings, loss masks and the sampler all ask
this registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mm1d.config import VocabConfig

MODALITIES = ("text", "image", "video")

# Fixed specials, in id order. <bocf>/<eocf> wrap a conditioning first frame (text-image-to-video),
# <nocond> marks a dropped condition, task tokens are reserved.
FIXED_SPECIALS = (
    "<bos>",
    "<eos>",
    "<pad>",
    "<boi>",
    "<eoi>",
    "<bov>",
    "<eov>",
    "<eot>",
    "<kauto>",
    "<bocf>",
    "<eocf>",
    "<nocond>",
    "<t2i>",
    "<i2t>",
    "<t2v>",
    "<v2t>",
)


class UnknownModalityError(ValueError):
    """Raised for a modality name that is not one of ``MODALITIES``."""


def check_modality(modality: str) -> str:
    """Return ``modality`` if known, else raise a clear error listing the valid names."""
    if modality not in MODALITIES:
        raise UnknownModalityError(f"unknown modality {modality!r}; expected one of {list(MODALITIES)}")
    return modality


@dataclass(frozen=True)
class Vocab:
    """Id ranges of the unified vocabulary. Build with ``Vocab.from_config(VocabConfig(...))``."""

    text_size: int
    image_codebook: int
    video_codebook: int
    max_budget: int
    max_time_steps: int
    shared_visual: bool = False

    @classmethod
    def from_config(cls, cfg: VocabConfig) -> Vocab:
        for name in ("text_size", "image_codebook", "video_codebook", "max_budget", "max_time_steps"):
            if getattr(cfg, name) <= 0:
                raise ValueError(f"vocab.{name} must be positive, got {getattr(cfg, name)}")
        if cfg.shared_visual and cfg.image_codebook != cfg.video_codebook:
            raise ValueError(f"vocab.shared_visual needs image_codebook == video_codebook, got "
                             f"{cfg.image_codebook} and {cfg.video_codebook}")
        return cls(cfg.text_size, cfg.image_codebook, cfg.video_codebook, cfg.max_budget, cfg.max_time_steps,
                   cfg.shared_visual)

    # ---- sizes and offsets --------------------------------------------------------------------------
    @property
    def special_names(self) -> tuple[str, ...]:
        budgets = tuple(f"<k_{k}>" for k in range(1, self.max_budget + 1))
        lengths = tuple(f"<nt_{t}>" for t in range(1, self.max_time_steps + 1))
        return FIXED_SPECIALS + budgets + lengths

    @property
    def num_specials(self) -> int:
        return len(FIXED_SPECIALS) + self.max_budget + self.max_time_steps

    @property
    def special_offset(self) -> int:
        return self.text_size

    @property
    def image_offset(self) -> int:
        return self.special_offset + self.num_specials

    @property
    def video_offset(self) -> int:
        return self.image_offset if self.shared_visual else self.image_offset + self.image_codebook

    @property
    def size(self) -> int:
        """Total number of ids (the model's vocab size)."""
        return self.video_offset + self.video_codebook

    def range(self, modality: str) -> tuple[int, int]:
        """Half-open global id range ``[start, end)`` of a modality's payload ids."""
        check_modality(modality)
        return {
            "text": (0, self.text_size),
            "image": (self.image_offset, self.image_offset + self.image_codebook),
            "video": (self.video_offset, self.size),
        }[modality]

    def softmax_groups(self) -> tuple[tuple[int, int], ...]:
        """Half-open id ranges over which a grouped-softmax head normalizes (``model.grouped_softmax``).

        Text and specials, then image codes, then video codes (one visual range when ``shared_visual``). They
        are contiguous and cover ``[0, size)``. The sequence grammar fixes which range the next token lies in
        (a budget token counts the codes that follow it), so a softmax within that range is still a complete
        model of every document, the one the sampler's constraint masks draw from.
        """
        groups = [(0, self.image_offset), self.range("image")]
        if not self.shared_visual:
            groups.append(self.range("video"))
        return tuple(groups)

    def local_size(self, modality: str) -> int:
        start, end = self.range(modality)
        return end - start

    # ---- conversions --------------------------------------------------------------------------------
    def to_global(self, modality: str, local: torch.Tensor | int) -> torch.Tensor | int:
        """Local ids of ``modality`` (any shape) -> global ids. Raises if any id is out of range."""
        start, end = self.range(modality)
        size = end - start
        if isinstance(local, torch.Tensor):
            if local.numel() and (int(local.min()) < 0 or int(local.max()) >= size):
                bad = int(local.max()) if int(local.max()) >= size else int(local.min())
                raise ValueError(f"{modality} id {bad} outside its range [0, {size})")
            return local.long() + start
        if not 0 <= local < size:
            raise ValueError(f"{modality} id {local} outside its range [0, {size})")
        return local + start

    def to_local(self, modality: str, ids: torch.Tensor | int) -> torch.Tensor | int:
        """Global ids (all of ``modality``) -> local ids. Raises if any id belongs elsewhere."""
        start, end = self.range(modality)
        if isinstance(ids, torch.Tensor):
            if ids.numel() and (int(ids.min()) < start or int(ids.max()) >= end):
                raise ValueError(f"ids outside the {modality} range [{start}, {end})")
            return ids.long() - start
        if not start <= ids < end:
            raise ValueError(f"id {ids} outside the {modality} range [{start}, {end})")
        return ids - start

    def modality_of(self, gid: int) -> str:
        """'text', 'image', 'video' or 'special' for one global id ('visual' in a shared visual range)."""
        if not 0 <= gid < self.size:
            raise ValueError(f"id {gid} outside the vocabulary [0, {self.size})")
        if gid < self.text_size:
            return "text"
        if gid < self.image_offset:
            return "special"
        if self.shared_visual:
            return "visual"
        if gid < self.video_offset:
            return "image"
        return "video"

    def is_in(self, modality: str, ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask of ``ids`` (any shape) that fall in ``modality``'s range."""
        start, end = self.range(modality)
        return (ids >= start) & (ids < end)

    # ---- specials -----------------------------------------------------------------------------------
    def special(self, name: str) -> int:
        """Global id of a special token by name, e.g. ``special('<boi>')`` or ``special('<k_4>')``."""
        names = self.special_names
        try:
            return self.special_offset + names.index(name)
        except ValueError:
            raise KeyError(f"unknown special token {name!r}") from None

    def name_of(self, gid: int) -> str:
        """Name of a special id (raises for non-special ids)."""
        if not self.special_offset <= gid < self.image_offset:
            raise ValueError(f"id {gid} is not a special token (specials are [{self.special_offset}, "
                             f"{self.image_offset}))")
        return self.special_names[gid - self.special_offset]

    def budget_token(self, k: int) -> int:
        """Id of ``<k_k>``. Raises for k outside ``[1, max_budget]``."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.max_budget:
            raise ValueError(f"budget {k!r} out of range: must be an integer in [1, {self.max_budget}]")
        return self.special(f"<k_{k}>")

    def budget_of(self, gid: int) -> int:
        """Inverse of ``budget_token``."""
        lo = self.special("<k_1>")
        if not lo <= gid < lo + self.max_budget:
            raise ValueError(f"id {gid} is not a budget token")
        return gid - lo + 1

    def budget_range(self) -> tuple[int, int]:
        lo = self.special("<k_1>")
        return lo, lo + self.max_budget

    def length_token(self, t: int) -> int:
        """Id of ``<nt_t>`` (number of video time steps). Raises for t outside ``[1, max_time_steps]``."""
        if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= self.max_time_steps:
            raise ValueError(f"video length {t!r} out of range: must be an integer in [1, {self.max_time_steps}]")
        return self.special(f"<nt_{t}>")

    def length_of(self, gid: int) -> int:
        lo = self.special("<nt_1>")
        if not lo <= gid < lo + self.max_time_steps:
            raise ValueError(f"id {gid} is not a video length token")
        return gid - lo + 1

    def length_range(self) -> tuple[int, int]:
        lo = self.special("<nt_1>")
        return lo, lo + self.max_time_steps

    @property
    def pad_id(self) -> int:
        return self.special("<pad>")
