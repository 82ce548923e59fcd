"""Image data sets that need no download, for examples, the CLI and tests.

Real data belongs to the user (any ``DataLoader`` works); these exist so that the README's
commands run on a machine without internet: scikit-learn's bundled handwritten digits, an
``ImageFolder`` directory, or seeded synthetic images.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

__all__ = ["digits_dataset", "synthetic_images", "image_folder", "make_dataset"]

# ImageNet statistics, so torchvision models (random or pretrained) see inputs of the usual scale
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def digits_dataset(image_size: int = 32, n: int | None = None, channels: int = 3) -> TensorDataset:
    """scikit-learn's 1,797 handwritten 8×8 digits (shipped with the package, no download),
    upsampled bilinearly to ``image_size`` and repeated over ``channels``, normalised with
    ImageNet statistics; labels as the second tensor. Needs ``pip install scikit-learn``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the digits data set needs scikit-learn: pip install scikit-learn") from exc
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    if n is not None:
        if n > len(x):
            raise ValueError(f"the digits data set has {len(x)} images; asked for n={n}")
        x, y = x[:n], y[:n]
    if image_size != 8:
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.repeat(1, channels, 1, 1)
    if channels == 3:
        x = (x - _MEAN) / _STD
    return TensorDataset(x, y)


def synthetic_images(n: int, image_size: int = 32, channels: int = 3, seed: int = 0) -> TensorDataset:
    """``n`` seeded images with natural-image-like spatial correlation (white noise
    low-pass filtered at a few scales), standardised per channel; labels are zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, channels, image_size, image_size)
    for scale in (1, 2, 4, 8):
        side = max(1, math.ceil(image_size / scale))
        noise = torch.randn(n, channels, side, side, generator=g)
        x += torch.nn.functional.interpolate(noise, size=(image_size, image_size), mode="bilinear",
                                             align_corners=False) * math.sqrt(scale)
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
    return TensorDataset(x, torch.zeros(n, dtype=torch.long))


def image_folder(path: str | Path, image_size: int = 224) -> Dataset:
    """A torchvision ``ImageFolder`` (one sub-folder per class), resized, centre-cropped
    and normalised with ImageNet statistics."""
    from torchvision import datasets, transforms

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder {str(path)!r} does not exist or is not a directory")
    tf = transforms.Compose([
        transforms.Resize(image_size),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(_MEAN.flatten().tolist(), _STD.flatten().tolist()),
    ])
    return datasets.ImageFolder(str(path), transform=tf)


def make_dataset(spec: str, n: int | None = None, image_size: int = 32, seed: int = 0) -> Dataset:
    """``"synthetic"``, ``"digits"`` or ``"imagefolder:PATH"`` → a data set of at most ``n``
    images (all of them when ``n`` is None; synthetic needs ``n``)."""
    if spec == "synthetic":
        return synthetic_images(n or 1024, image_size, seed=seed)
    if spec == "digits":
        return digits_dataset(image_size, n)
    if spec.startswith("imagefolder:"):
        ds = image_folder(spec.split(":", 1)[1], image_size)
        if n is not None and n < len(ds):
            ds = torch.utils.data.Subset(ds, range(n))
        return ds
    raise ValueError(f"unknown data {spec!r}: use 'synthetic', 'digits' or 'imagefolder:PATH'")
