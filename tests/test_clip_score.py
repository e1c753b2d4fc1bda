"""CLIP score and CLIPSIM with a tiny random CLIP written to a temporary directory."""

from __future__ import annotations

import pytest
import torch

from mm1d.evaluation.clip_score import CLIPScorer, write_random_clip


@pytest.fixture(scope="module")
def scorer(tmp_path_factory) -> CLIPScorer:
    return CLIPScorer(write_random_clip(tmp_path_factory.mktemp("clip")), batch_size=3)


def test_clip_score_matches_the_model_forward(scorer: CLIPScorer) -> None:
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    texts = ["a red circle", "a big blue square moving left", "red", "a clip of a triangle!"]
    scores = scorer.image_text_scores(images, texts)
    assert scores.shape == (4,) and (scores >= 0).all() and (scores <= 100).all()
    tok = scorer.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = scorer.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                           pixel_values=scorer.preprocess(images))
    cos = (out.image_embeds * out.text_embeds).sum(-1)  # the model's own normalised embeddings
    assert torch.allclose(scores, 100 * cos.clamp(min=0), atol=1e-4)


def test_clipsim_of_a_still_video_equals_the_image_score(scorer: CLIPScorer) -> None:
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    texts = ["a small green diamond", "a purple square"]
    video = images.unsqueeze(2).expand(2, 3, 5, 32, 32)  # (B, 3, F, H, W), every frame the same
    assert torch.allclose(scorer.video_text_scores(video, texts), scorer.image_text_scores(images, texts), atol=1e-5)


def test_preprocess_crops_non_square_and_errors(scorer: CLIPScorer, tmp_path) -> None:
    assert scorer.preprocess(torch.zeros(1, 3, 20, 48)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="images for"):
        scorer.image_text_scores(torch.zeros(2, 3, 32, 32), ["one"])
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        CLIPScorer(tmp_path / "no_clip")
