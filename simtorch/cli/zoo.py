"""The command line's models (:func:`build_model`): a torchvision name, ``timm:NAME``
(``pip install timm``), ``hf:DIR`` (a local Hugging Face ``save_pretrained`` directory,
``pip install transformers``; its tokenizer reads ``--data text:FILE``) or
``package.module:function``, with random, pretrained or checkpoint weights."""

from __future__ import annotations

import difflib
import importlib
import os
from pathlib import Path
from typing import Any

from ..checkpoint_io import load_checkpoint, require_file
from .errors import CLIError

__all__ = ["CHECKPOINT_SUFFIXES", "build_model", "hf_tokenizer", "is_text_model", "model_default_layers"]

#: file name endings that make ``--weights`` a checkpoint path rather than a weight name
CHECKPOINT_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".tar", ".pkl", ".safetensors"}
#: the optional packages of the model prefixes, with the command that installs them
_EXTRAS = {"timm": "pip install timm", "hf": "pip install transformers"}


def _require(package: str, prefix: str, spec: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError:
        raise CLIError(f"{spec!r}: {prefix}: models need the {package} package: {_EXTRAS[prefix]} "
                       f"(or pip install simtorch[{package}])") from None


def is_text_model(arch: str) -> bool:
    """``hf:DIR`` models take tokenised text."""
    return arch.startswith("hf:")


def _hf_dir(arch: str) -> Path:
    path = Path(arch[3:]).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        raise CLIError(f"{arch!r}: hf: takes a local save_pretrained directory (with config.json); "
                       f"{str(path)!r} is not one (download a hub model first, e.g. with huggingface-cli download)")
    return path


def hf_tokenizer(arch: str) -> Any:
    """The tokenizer saved in an ``hf:DIR`` model's directory."""
    transformers = _require("transformers", "hf", arch)
    path = _hf_dir(arch)
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # OSError, ValueError: no tokenizer files
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise CLIError(f"{arch!r}: cannot load a tokenizer from {str(path)!r} ({reason}); save it next to the "
                       "model with tokenizer.save_pretrained(dir)") from None


def model_default_layers(arch: str, model: Any) -> list[str]:
    """The default layers the command line compares: for ``hf:`` transformers the
    embeddings and every block of the longest ``ModuleList`` (``encoder.layer.*``, ``h.*``,
    ``layers.*``), else :func:`simtorch.layers.default_layers`."""
    from torch import nn

    from ..layers import default_layers

    if is_text_model(arch):
        lists = [(name, len(m)) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
        if lists:
            best = max(lists, key=lambda t: t[1])[0]
            first = [n for n, _ in model.named_children() if "embed" in n.lower()][:1]
            return first + [f"{best}.*"]
    return default_layers(model)


def _is_path(text: str) -> bool:
    return os.sep in text or "/" in text or Path(text).suffix.lower() in CHECKPOINT_SUFFIXES or Path(text).exists()


def _construct(arch: str, **config: Any) -> Any:
    import torchvision

    if arch.startswith("timm:"):
        timm = _require("timm", "timm", arch)
        name = arch[5:]
        try:
            return timm.create_model(name, pretrained=False, **config)
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise CLIError(f"unknown timm model {name!r} ({' '.join(str(exc).split())[:120]}).{hint} "
                           "(python -c 'import timm; print(timm.list_models())' lists them)") from None
    if arch.startswith("hf:"):
        transformers = _require("transformers", "hf", arch)
        path = _hf_dir(arch)
        if config:
            raise CLIError(f"{arch!r}: --num-classes does not apply to hf: models (their config.json sets it)")
        try:
            model = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise CLIError(f"{arch!r}: cannot load the model from {str(path)!r} ({reason})") from None
        return model.eval()
    if ":" in arch and arch not in torchvision.models.list_models():
        module, _, attr = arch.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise CLIError(f"cannot import the model function {arch!r}: {exc}") from None
        return factory(**config)
    _check_arch(arch)
    return torchvision.models.get_model(arch, weights=None, **config)


def _check_arch(arch: str) -> None:
    import torchvision

    known = torchvision.models.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=4, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise CLIError(
            f"unknown model {arch!r}: not a torchvision model name nor 'package.module:function'.{hint} "
            "(python -c 'import torchvision; print(torchvision.models.list_models())' lists them)"
        )


def build_model(
    arch: str,
    weights: str | None = None,
    *,
    num_classes: int | None = None,
    seed: int = 0,
    trust_checkpoint: bool = False,
    state_key: str | None = None,
    strip_prefix: str | None = None,
) -> Any:
    """Build a model for the command line.

    Parameters
    ----------
    arch : str
        A torchvision model name (``"resnet18"``), ``"timm:NAME"`` (``timm.create_model``,
        random initialisation), ``"hf:DIR"`` (``transformers.AutoModel.from_pretrained`` of a
        local directory, with its weights) or ``"package.module:function"`` (called with no
        arguments, or ``num_classes=`` when given).
    weights : str, optional
        ``None``: random initialisation under ``seed``. A path: a checkpoint loaded with
        :func:`simtorch.checkpoints.load_checkpoint` (weights-only, strict key check; any
        format it reads, with ``state_key``/``strip_prefix``). Else a
        torchvision weight name: ``"DEFAULT"``, ``"IMAGENET1K_V1"`` or
        ``"ResNet18_Weights.IMAGENET1K_V1"`` (downloaded by torchvision, or found in its cache).
    num_classes : int, optional
        Passed to the constructor (for checkpoints trained on another number of classes).
    seed : int
        ``torch.manual_seed`` before a random initialisation, so runs repeat exactly.
    trust_checkpoint : bool
        Allow checkpoint files that hold pickled objects (only for files you trust).
    """
    import torch

    config: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    torch.manual_seed(seed)
    if weights is None or weights.lower() == "none":
        return _construct(arch, **config)
    if _is_path(weights):
        require_file(weights)
        return load_checkpoint(_construct(arch, **config), weights, trust_checkpoint=trust_checkpoint,
                               state_key=state_key, strip_prefix=strip_prefix)
    if ":" in arch:
        kind = "a timm:" if arch.startswith("timm:") else "an hf:" if arch.startswith("hf:") else "a custom"
        raise CLIError(f"--weights {weights!r}: {kind} model takes a checkpoint path, not a weight name"
                       + (" (without --weights it starts from random weights)" if kind == "a timm:" else ""))
    import torchvision

    _check_arch(arch)
    enum = torchvision.models.get_model_weights(arch)
    short = weights.split(".", 1)[1] if "." in weights else weights
    if "." in weights and weights.split(".", 1)[0] != enum.__name__:
        raise CLIError(f"weights {weights!r} are not {arch}'s; its weights are {enum.__name__}.{{{', '.join(enum.__members__)}}}")
    if short not in enum.__members__:
        raise CLIError(
            f"unknown weights {weights!r} for {arch}: use one of {list(enum.__members__)} "
            "or the path of a checkpoint file"
        )
    chosen = enum[short]  # DEFAULT is an alias: chosen.name is the real weights' name
    try:
        return torchvision.models.get_model(arch, weights=chosen, **config)
    except Exception as exc:  # urllib/HTTP/OS errors: the weights are not cached and the download failed
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CLIError(
            f"cannot get the torchvision weights {enum.__name__}.{chosen.name} for {arch} ({reason[:160]}); without "
            f"network access put the file into {torch.hub.get_dir()}/checkpoints or pass a checkpoint path"
        ) from None
