"""Factorized visual-code rows: a training-time reparametrization of the embedding and the LM head.

A FlexTok / VideoFlexTok id is a mixed-radix number over its FSQ digits (``[8, 5, 5, 5]`` -> 1,000 ids), and
ids that share digits share meaning: each digit is one quantized channel of a register. A plain embedding
table learns every id's row alone, from that id's occurrences only. With code factors, each visual row is

    row(id) = W[id] + sum_d F[d, digit_d(id)]

for the input embedding and, with its own ``F``, for the head. ``F`` has one learned vector per (channel,
level) pair (23 per modality for ``[8, 5, 5, 5]``), so every occurrence of a code teaches the rows of all
the codes that share a digit with it. ``F`` starts at zero: at initialization the model is exactly the plain
one.

The sum is a fixed linear map of ``(W, F)``, so it folds away: ``fold_code_factors`` turns a training state
dict into plain ``model.embed_tokens.weight`` / ``lm_head.weight`` rows. Release bundles, the Hugging Face
export, the KV-cache decoder and the sampler never see the factors.

It is built on ``torch.nn.utils.parametrize``: ``embed_tokens.weight`` and ``lm_head.weight`` stay
ordinary attributes, computed as ``W + M @ F`` (``M`` the fixed ``(V, S)`` one-hot digit matrix), so every
reader of those weights (embedding lookup, chunked loss, the sampler, ``decode.py``) needs no change.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from mm1d.modality import Vocab
from mm1d.tokenization.fsq import ids_to_digits

# state-dict keys of a model with factors attached (parametrize's layout)
_ORIGINAL = "{}.parametrizations.weight.original"
_FACTORS = "{}.parametrizations.weight.0.factors"
TARGETS = ("model.embed_tokens", "lm_head")


def digit_matrix(vocab: Vocab, levels: dict[str, list[int]]) -> torch.Tensor:
    """The fixed one-hot map from ids to (modality, channel, level) slots.

    Args:
        vocab: the id registry.
        levels: FSQ levels per visual modality, e.g. ``{"image": [8, 5, 5, 5], "video": [8, 5, 5, 5]}``;
            each product must equal that modality's codebook. With ``vocab.shared_visual`` both ranges are
            one, so the levels must agree and the slots are shared.

    Returns:
        ``(V, S)`` float32, ``S = sum of the levels over the modalities``: row ``id`` has a 1 in the slot of
        each of its digits, and text / special rows are zero.

    Raises:
        ValueError: an unknown modality, a non-visual modality, or levels that do not fit the codebook.
    """
    ranges: dict[tuple[int, int], list[int]] = {}
    for modality, lv in levels.items():
        if modality not in ("image", "video"):
            raise ValueError(f"code factors apply to 'image' and 'video' codes, not {modality!r}")
        lv = [int(v) for v in lv]
        size = vocab.local_size(modality)
        if not lv or min(lv) < 2 or math.prod(lv) != size:
            raise ValueError(f"{modality} FSQ levels {lv} do not fit the {modality} codebook of {size} ids "
                             f"(their product must equal it)")
        rng = vocab.range(modality)
        if rng in ranges and ranges[rng] != lv:
            raise ValueError(f"image and video share one id range (vocab.shared_visual) but their FSQ levels "
                             f"differ: {ranges[rng]} vs {lv}")
        ranges[rng] = lv
    total = sum(sum(lv) for lv in ranges.values())
    m = torch.zeros(vocab.size, total)
    slot = 0
    for (start, end), lv in ranges.items():
        digits = ids_to_digits(torch.arange(end - start), lv)  # (C, D)
        offsets = torch.tensor([0, *lv[:-1]]).cumsum(0)  # first slot of each channel
        rows = torch.arange(start, end)[:, None].expand_as(digits)
        m[rows, slot + offsets + digits] = 1.0
        slot += sum(lv)
    return m


class CodeFactorization(nn.Module):
    """The parametrization ``W -> W + M @ F`` with a learned ``F`` ``(S, D)`` (zero at start).

    Args:
        digits: ``(V, S)`` one-hot digit matrix from ``digit_matrix`` (kept as a non-persistent buffer).
        dim: the row width ``D``.
    """

    def __init__(self, digits: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.register_buffer("digits", digits, persistent=False)
        self.factors = nn.Parameter(torch.zeros(digits.shape[1], dim, device=digits.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` ``(V, D)`` -> ``(V, D)``."""
        return weight + self.digits.to(weight.dtype) @ self.factors.to(weight.dtype)


def attach_code_factors(model: nn.Module, digits: torch.Tensor) -> None:
    """Reparametrize ``model.model.embed_tokens.weight`` and ``model.lm_head.weight`` in place.

    Args:
        model: an untied ``mm1d.model.transformer.Transformer``.
        digits: ``(V, S)`` from ``digit_matrix``.

    Raises:
        ValueError: tied embeddings (one matrix cannot carry two factorizations), or a digit matrix whose
            row count is not the model's vocabulary.
    """
    if model.config.tie_embeddings:
        raise ValueError("code factors need untied embeddings (model.tie_embeddings: false)")
    if digits.shape[0] != model.vocab_size:
        raise ValueError(f"digit matrix has {digits.shape[0]} rows, the model's vocabulary {model.vocab_size}")
    d = model.config.d_model
    for module in (model.model.embed_tokens, model.lm_head):
        device = module.weight.device
        parametrize.register_parametrization(module, "weight", CodeFactorization(digits.to(device), d))


def has_code_factors(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict comes from a model with factors attached."""
    return any(_FACTORS.format(t) in state for t in TARGETS)


def fold_code_factors(state: dict[str, torch.Tensor], digits: torch.Tensor) -> dict[str, torch.Tensor]:
    """A factored state dict -> the plain one (``W + M @ F`` written as the weight; factors dropped).

    Args:
        state: a state dict of a model with factors attached (full, not sharded).
        digits: the ``(V, S)`` matrix the model was built with.

    Returns:
        A new dict that loads into a plain ``Transformer`` (unchanged if it has no factors).
    """
    out = dict(state)
    for target in TARGETS:
        key_w, key_f = _ORIGINAL.format(target), _FACTORS.format(target)
        if key_f not in out:
            continue
        w, f = out.pop(key_w), out.pop(key_f)
        folded = w.float() + digits.to(w.device) @ f.float().to(w.device)
        out[f"{target}.weight"] = folded.to(w.dtype)
    return out
