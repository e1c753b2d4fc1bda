"""mm1d.tokenization: FlexTok and VideoFlexTok (visual), SentencePiece (text), and their shared parts."""

from __future__ import annotations

from typing import Any


def tokenizer_class(kind: str) -> Any:
    """The visual tokenizer class for a media kind: FlexTok for "image", VideoFlexTok for "video"."""
    if kind == "image":
        from mm1d.tokenization.flextok import FlexTok

        return FlexTok
    if kind == "video":
        from mm1d.tokenization.videoflextok import VideoFlexTok

        return VideoFlexTok
    raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
