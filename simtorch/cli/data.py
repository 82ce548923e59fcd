"""The command line's data: the ``DataLoader`` that ``--data``, ``--n``, ``--batch-size``,
``--image-size``, ``--seed``, ``--channels``, ``--max-length`` and ``--workers`` describe."""

from __future__ import annotations

import argparse
from typing import Any

from torch.utils.data import DataLoader

from ..data import make_dataset
from .errors import CLIError

__all__ = ["is_text_data", "make_loader"]


def is_text_data(args: argparse.Namespace) -> bool:
    """``--data text:FILE``."""
    return str(getattr(args, "data", "")).startswith("text:")


def make_loader(args: argparse.Namespace, tokenizer: Any = None) -> DataLoader:
    """An unshuffled loader (every pass sees the same batches) over the chosen images, or
    over the lines of a text file tokenised by ``tokenizer`` (batches are dicts of
    ``input_ids``, ``attention_mask``, …, which the model takes as keyword arguments)."""
    if args.n is not None and args.n < 1:
        raise CLIError(f"--n must be ≥ 1, got {args.n}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    if is_text_data(args) and tokenizer is None:
        raise CLIError(f"--data {args.data}: text needs a tokenizer, which hf:DIR models bring; for other models "
                       "use image data (synthetic, digits, imagefolder:PATH)")
    max_length = getattr(args, "max_length", 128)
    if max_length is not None and max_length < 1:
        raise CLIError(f"--max-length must be ≥ 1, got {max_length}")
    data = make_dataset(args.data, n=args.n, image_size=args.image_size, seed=args.seed,
                        channels=getattr(args, "channels", 3), tokenizer=tokenizer, max_length=max_length)
    return DataLoader(data, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
