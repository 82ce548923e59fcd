"""The one table of metric names: ``compare``, ``compare_checkpoints`` and the CLI read it."""

from __future__ import annotations

from .base import Metric

__all__ = ["REGISTRY", "register", "metric_class", "canonical_names"]

#: name or alias (lower case) → metric class
REGISTRY: dict[str, type[Metric]] = {}


def register(cls: type[Metric]) -> type[Metric]:
    """Class decorator: make ``cls`` reachable by its ``key`` and ``aliases``."""
    if not cls.key:
        raise ValueError(f"{cls.__name__} has no registry key")
    for name in (cls.key, *cls.aliases):
        other = REGISTRY.get(name.lower())
        if other is not None and other is not cls:
            raise ValueError(f"metric name {name!r} is taken by {other.__name__}")
        REGISTRY[name.lower()] = cls
    return cls


def metric_class(name: str) -> type[Metric]:
    """The metric class for a name or alias; a clear error listing the choices otherwise."""
    cls = REGISTRY.get(str(name).lower())
    if cls is None:
        import difflib

        close = difflib.get_close_matches(str(name).lower(), list(REGISTRY), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"unknown metric {name!r}; choose from {canonical_names()}.{hint}")
    return cls


def canonical_names() -> list[str]:
    """Every metric's key (no aliases), in registration order."""
    seen: list[str] = []
    for cls in REGISTRY.values():
        if cls.key not in seen:
            seen.append(cls.key)
    return seen
