"""Reading checkpoint files as researchers have them: the object a file or directory holds,
and the step/epoch it stores, for every accepted format.

- a file written by ``torch.save`` (``.pt``, ``.pth``, ``.bin``, Lightning ``.ckpt``), read
  with ``torch.load(weights_only=True)``: reading never unpickles code by default;
- a ``.safetensors`` file, read with the ``safetensors`` package (``pip install safetensors``),
  never through ``torch.load``;
- a Hugging Face ``save_pretrained`` directory: ``model.safetensors``, sharded
  ``model-0000k-of-0000n.safetensors`` with ``model.safetensors.index.json``,
  ``pytorch_model.bin`` or sharded ``.bin`` files with ``pytorch_model.bin.index.json``;
- a mapping or an ``nn.Module``, passed through as they are.

What a file holds is not judged here: finding the state dict in a nested training
checkpoint, renaming its keys and checking them against the model is
:mod:`simtorch.checkpoint_io`'s job.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn

__all__ = ["CheckpointSource", "HF_WEIGHT_FILES", "checkpoint_metadata", "format_keys", "is_hf_directory",
           "looks_like_state_dict", "read_checkpoint", "require_file", "source_name"]

#: a checkpoint: a file (torch.save or .safetensors), a save_pretrained directory, a
#: (possibly nested) state dict, or a module
CheckpointSource = Union[str, os.PathLike, Mapping[str, Any], nn.Module]
#: the weight files of a Hugging Face ``save_pretrained`` directory, in the order they are looked for
HF_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                   "pytorch_model.bin", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_SAFETENSORS_HINT = "reading .safetensors files needs the safetensors package: pip install safetensors"


def looks_like_state_dict(obj: Any) -> bool:
    """A non-empty mapping whose every value is a tensor."""
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def is_hf_directory(path: str | os.PathLike) -> bool:
    """A directory holding one of :data:`HF_WEIGHT_FILES` (a ``save_pretrained`` directory)."""
    p = Path(path)
    return p.is_dir() and any((p / f).is_file() for f in HF_WEIGHT_FILES)


def require_file(source: Any) -> None:
    """``FileNotFoundError`` naming ``source`` when it is a path that is neither a file nor a
    ``save_pretrained`` directory (a directory without weights names the files looked for)."""
    if not isinstance(source, (str, os.PathLike)):
        return
    p = Path(source)
    if p.is_file() or is_hf_directory(p):
        return
    if p.is_dir():
        raise FileNotFoundError(
            f"checkpoint {str(source)!r} is a directory without model weights: a save_pretrained directory "
            f"holds one of {', '.join(HF_WEIGHT_FILES)}"
        )
    raise FileNotFoundError(f"checkpoint {str(source)!r} does not exist or is not a file")


def source_name(source: Any) -> str:
    """How errors name a checkpoint: its path (quoted), the module's type, or "the state dict"."""
    if isinstance(source, (str, os.PathLike)):
        return repr(str(source))
    if isinstance(source, nn.Module):
        return f"module {type(source).__name__}"
    return "the state dict"


def format_keys(keys: Sequence[str], limit: int = 8) -> str:
    """``[a, b, …]`` for error messages: the first ``limit`` keys and how many more."""
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', … ({len(keys) - limit} more)' if len(keys) > limit else ''}]"


# ----------------------------------------------------------------------------- torch.save files
def _torch_load(path: Path, map_location: Any, trust_checkpoint: bool, mmap: bool = False) -> Any:
    require_file(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust_checkpoint,
                          **({"mmap": True} if mmap else {}))
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found and not trust_checkpoint:
            raise ValueError(
                f"refusing to load checkpoint {str(path)!r}: it holds a pickled Python object "
                f"({found.group(1)}), and unpickling an untrusted file can run arbitrary code. Only if you "
                "trust this file, pass trust_checkpoint=True (command line: --trust-checkpoint)"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:\n\n|$)", text, re.S)
        why = " ".join(detail.group(1).split()) if detail else text.splitlines()[0]
        raise ValueError(
            f"cannot read checkpoint {str(path)!r} ({why}): it is corrupt or not written by torch.save"
            + ("" if trust_checkpoint else "; if it is a trusted full pickle, pass trust_checkpoint=True")
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {first}") from None


# ----------------------------------------------------------------------------- .safetensors files
def _safetensors_device(map_location: Any) -> str:
    if map_location is None:
        return "cpu"
    if isinstance(map_location, (str, torch.device)):
        return str(torch.device(map_location))
    raise ValueError(f"map_location={map_location!r}: .safetensors files take a device (str or torch.device)")


def _safetensors_load(path: Path, map_location: Any) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ImportError(_SAFETENSORS_HINT) from None
    try:
        return load_file(str(path), device=_safetensors_device(map_location))
    except (ValueError, ImportError):
        raise
    except Exception as exc:  # SafetensorError (not a public class), OSError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read checkpoint {str(path)!r}: not a valid .safetensors file ({first})") from None


def _load_weight_file(path: Path, map_location: Any, trust_checkpoint: bool) -> Any:
    if path.suffix == ".safetensors":
        return _safetensors_load(path, map_location)
    return _torch_load(path, map_location, trust_checkpoint)


# ----------------------------------------------------------------------------- save_pretrained directories
def _hf_load(directory: Path, map_location: Any, trust_checkpoint: bool) -> Any:
    """What a ``save_pretrained`` directory holds: its one weight file's content, or the
    state dict its index's shards make together."""
    for name in HF_WEIGHT_FILES:
        f = directory / name
        if not f.is_file():
            continue
        if not name.endswith(".index.json"):
            return _load_weight_file(f, map_location, trust_checkpoint)
        try:
            weight_map = json.loads(f.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read the shard index {str(f)!r}: {exc}") from None
        state: dict[str, Any] = {}
        for shard in dict.fromkeys(weight_map.values()):  # each shard once, in index order
            shard_path = directory / shard
            if not shard_path.is_file():
                raise FileNotFoundError(f"{str(f)!r} names the shard {shard!r}, which is not in {str(directory)!r}")
            state.update(_load_weight_file(shard_path, map_location, trust_checkpoint))
        absent = [k for k in weight_map if k not in state]
        if absent:
            raise ValueError(f"the shards of {str(directory)!r} lack {len(absent)} tensors their index names: "
                             f"{format_keys(absent)}")
        return state
    require_file(directory)  # raises: a directory without weights
    raise AssertionError("unreachable")


def read_checkpoint(source: CheckpointSource, map_location: Any = "cpu", trust_checkpoint: bool = False) -> Any:
    """What ``source`` holds, read by its format (see the module docstring): a file's or a
    directory's content, or a mapping/module as given. Raises ``FileNotFoundError``,
    ``ImportError`` (no safetensors package, naming the pip command) or ``ValueError``
    (pickled objects without ``trust_checkpoint``, a file that cannot be read)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return _hf_load(path, map_location, trust_checkpoint)
        require_file(path)
        return _load_weight_file(path, map_location, trust_checkpoint)
    return source


def checkpoint_metadata(source: CheckpointSource, *, trust_checkpoint: bool = False) -> dict[str, Any]:
    """The top-level scalar entries a checkpoint stores next to its weights (e.g. Lightning's
    ``global_step`` and ``epoch``), without loading the weights into memory where the format
    allows it: ``torch.load(mmap=True)`` for torch files, the header of ``.safetensors``
    files, ``trainer_state.json`` of a Hugging Face Trainer checkpoint directory. Returns
    ``{}`` when there are none or the file cannot be read (loading it reports that)."""
    obj: Any = source
    try:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if path.is_dir():
                state = path / "trainer_state.json"
                return dict(json.loads(state.read_text(encoding="utf-8"))) if state.is_file() else {}
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), "pt") as fh:
                    return dict(fh.metadata() or {})
            try:
                obj = _torch_load(path, "cpu", trust_checkpoint, mmap=True)
            except ValueError:  # a legacy (non-zip) file cannot be memory-mapped
                obj = _torch_load(path, "cpu", trust_checkpoint)
    except Exception:
        return {}
    if not isinstance(obj, Mapping) or looks_like_state_dict(obj):
        return {}
    out = {}
    for k, v in obj.items():
        if isinstance(v, Tensor):
            if v.dim() == 0:
                out[k] = v.item()
        elif isinstance(v, (bool, int, float, str)) or v is None:
            out[k] = v
    return out
