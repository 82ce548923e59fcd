"""Data sets that need no download, for examples, the CLI and tests.

Real data belongs to the user (any ``DataLoader`` works); these exist so that the README's
commands run on a machine without internet: scikit-learn's bundled handwritten digits, an
``ImageFolder`` directory, seeded synthetic images, or the lines of a text file tokenised
by a Hugging Face tokenizer.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from typing import Any

from torch.utils.data import Dataset, TensorDataset

__all__ = ["TokenizedText", "digits_dataset", "synthetic_images", "image_folder", "make_dataset", "text_dataset"]

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


class TokenizedText(Dataset):
    """Tokenised text: item ``i`` is ``{"input_ids": (T,), "attention_mask": (T,), …}``, so
    a ``DataLoader`` yields dicts of ``(B, T)`` tensors that a Hugging Face model takes as
    ``model(**batch)``. Every item has the same length ``T`` (padded to the longest line,
    at most ``max_length``), so flattened token outputs have one size."""

    def __init__(self, encoded: dict[str, torch.Tensor], lines: list[str]) -> None:
        self.encoded = encoded
        self.lines = lines

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.encoded.items()}


def text_dataset(path: str | Path, tokenizer: Any, n: int | None = None, max_length: int = 128) -> TokenizedText:
    """The non-empty lines of a UTF-8 text file (at most ``n``), tokenised by ``tokenizer``
    (a Hugging Face tokenizer: ``AutoTokenizer.from_pretrained(dir)``), padded to the longest
    line and truncated to ``max_length`` tokens."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {str(path)!r} does not exist or is not a file")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"text file {str(path)!r} has no non-empty lines")
    if n is not None:
        lines = lines[:n]
    if getattr(tokenizer, "pad_token", "") is None:  # GPT-2-style tokenizers have no pad token
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(lines, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    return TokenizedText({k: v for k, v in encoded.items() if isinstance(v, torch.Tensor)}, lines)


def make_dataset(spec: str, n: int | None = None, image_size: int = 32, seed: int = 0, channels: int = 3,
                 tokenizer: Any = None, max_length: int = 128) -> Dataset:
    """``"synthetic"``, ``"digits"`` or ``"imagefolder:PATH"`` → a data set of at most ``n``
    images (all of them when ``n`` is None; synthetic makes 1024 then) with ``channels``
    channels (image folders: 3 only); ``"text:PATH"`` → the file's lines tokenised by
    ``tokenizer`` (:func:`text_dataset`)."""
    if spec.startswith("text:"):
        if tokenizer is None:
            raise ValueError(f"{spec!r}: text data needs a tokenizer (command line: hf:DIR models; in Python "
                             "text_dataset(path, tokenizer))")
        return text_dataset(spec.split(":", 1)[1], tokenizer, n, max_length)
    if spec == "synthetic":
        return synthetic_images(n or 1024, image_size, channels, seed=seed)
    if spec == "digits":
        return digits_dataset(image_size, n, channels)
    if spec.startswith("imagefolder:"):
        if channels != 3:
            raise ValueError(f"channels={channels} works with 'synthetic' or 'digits' data, not {spec!r}")
        ds = image_folder(spec.split(":", 1)[1], image_size)
        if n is not None and n < len(ds):
            ds = torch.utils.data.Subset(ds, range(n))
        return ds
    raise ValueError(f"unknown data {spec!r}: use 'synthetic', 'digits', 'imagefolder:PATH' or 'text:FILE'")
