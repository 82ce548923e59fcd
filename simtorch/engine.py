"""The one streaming loop shared by every metric.

For each batch: unpack the model input, move it to each model's device, run every distinct
model once under ``torch.inference_mode`` with the capture hooks (:mod:`simtorch.capture`),
stack the Grams per side and hand them to every metric's ``update``. Metrics keep only
declared sums, so memory does not grow with the dataset, and the engine can all-reduce
them across processes without knowing what they mean.

The loop is this module's one job; its helpers have their own: :mod:`simtorch.options`
(:class:`RunOptions`), :mod:`simtorch.gram_batch` (:class:`GramBatch`),
:mod:`simtorch.interrupts` (whole, verified batches on Ctrl-C and late NaNs),
:mod:`simtorch.pass_state` (resumable passes) and :mod:`simtorch.distributed`
(error flag and all-reduce under ``torch.distributed``). ``RunOptions``, ``GramBatch`` and
``resolve_device`` stay importable from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack, nullcontext
from typing import Any

import torch
from torch import Tensor

from .batches import batch_size, call_model, dataset_size, move, to_device, unpack_batch
from .capture import LayerCapture, Workspace
from .distributed import (Peers, all_reduce_states, announce_failure, check_peers, from_peer, global_count,
                          is_distributed, rank_world)
from .gram_batch import GramBatch
from .interrupts import DeferInterrupt, VerifiedStates
from .metrics.base import Binding, Metric, Needs
from .model import SimilarityModel
from .options import RunOptions
from .pass_state import open_state, save_on_exit
from .placement import FiniteGuard, Placement, check_available, resolve_device
from .resume import batch_hash

__all__ = ["GramBatch", "RunOptions", "stream", "resolve_device"]


def _needs(metrics: Sequence[Metric]) -> Needs:
    needs = Needs()
    features: set[Callable] = set()  # equal transforms (same projection) share one set
    for m in metrics:
        nd = m.needs()
        if nd.features is not None:
            features.add(nd.features)
        needs = needs.merge(nd)
    if len(features) > 1:
        raise ValueError("several metrics of one pass ask for differently transformed features; run them separately")
    return needs


def _check_first_batch(needs: Needs, raw: Any) -> None:
    """Needs that one look at the first model input can settle, before any forward pass."""
    if needs.tensor_inputs and not isinstance(raw, Tensor):
        raise TypeError(
            f"a metric of this pass needs the model input as a tensor, but the loader's model input is a "
            f"{type(raw).__name__}. {needs.tensor_inputs_hint}".rstrip()
        )


def _run_devices(model_a: SimilarityModel, model_b: SimilarityModel, dev: torch.device) -> dict[int, torch.device]:
    out = {}
    for sm in (model_a, model_b):
        if sm.device is not None:
            check_available(sm.device, f"{sm.model_name}: SimilarityModel(device=...)")
        out[id(sm)] = sm.device if sm.device is not None else dev
    return out


def stream(
    model_a: SimilarityModel,
    model_b: SimilarityModel,
    loader: Iterable,
    metrics: Sequence[Metric],
    device: str | torch.device | None = None,
    *,
    options: RunOptions | None = None,
    report: dict[str, Any] | None = None,
    **run: Any,
) -> int:
    """Stream ``loader`` through both models once and feed every metric.

    ``options`` (or the same fields as keywords: ``progress``, ``input_key``,
    ``input_fn``, ``autocast``, ``channels_last``, ``desc``, ``state_path``, ``save_every``; see
    :class:`RunOptions`) say how the pass runs. Models that are the same module run once
    per batch with both sides' hooks. Hooks, train/eval flags and model placement are
    restored in ``finally``; the metrics keep the sums of every batch that completed, so a
    partial result survives an interruption. Returns the number of batches streamed (over
    every process, resumed ones included). ``report``, when given, receives facts about
    the pass for the result's settings (``resumed_batches``, ``state_path``).

    What an interruption leaves:

    * Ctrl-C is held back while the metrics update, so the sums always hold whole batches;
    * an exception inside a metric's ``update`` leaves that metric's sums torn: the
      exception's ``simtorch_torn`` lists it, and no partial result is built from it;
    * a NaN/inf activation found late (on an accelerator the check runs every 64 batches)
      rolls the metrics back to their copy at the last verified batch, so the bad batch is
      never in the partial result nor in a saved state.

    When ``torch.distributed`` is initialised, each rank streams its own shard and the
    metrics' declared states are all-reduced at the end, so every rank holds the
    whole-data result. Before that, every rank all-reduces an error flag: a rank that
    failed says so (with its error) and every other rank raises a ``RuntimeError`` naming
    it, instead of waiting forever in the all-reduce.
    """
    if options is None:
        options = RunOptions(device=device, **run)
    elif device is not None or run:
        raise TypeError("pass either options=RunOptions(...) or run options as keywords, not both")
    peers = Peers(is_distributed())
    try:
        return _stream(model_a, model_b, loader, metrics, options, report if report is not None else {}, peers)
    except BaseException as exc:
        if peers.on and not peers.exchanged:  # this rank failed: tell the others before raising
            peers.exchanged = True
            try:
                dev = resolve_device(options.device, model_a.model)
            except BaseException:
                dev = torch.device("cpu")
            announce_failure(exc, dev)
        raise


def _stream(model_a: SimilarityModel, model_b: SimilarityModel, loader: Iterable, metrics: Sequence[Metric],
            options: RunOptions, report: dict[str, Any], peers: Peers) -> int:
    dist_on = peers.on
    dev = resolve_device(options.device, model_a.model)
    same = model_a is model_b
    for metric in metrics:
        metric.bind(Binding(len(model_a.layer_names), len(model_b.layer_names), same, dev, dataset_size(loader)))
    needs = _needs(metrics)
    run_device = _run_devices(model_a, model_b, dev)
    # one forward pass per distinct module; several wrappers of it share that pass
    groups: dict[int, list[SimilarityModel]] = {}
    for sm in (model_a,) if same else (model_a, model_b):
        groups.setdefault(id(sm.model), []).append(sm)

    rank, world = rank_world() if dist_on else (0, 1)
    state, resume_from = open_state(model_a, model_b, loader, metrics, options, rank, world, report)

    iterator: Iterable = loader
    if options.progress:
        from tqdm.auto import tqdm

        iterator = tqdm(loader, desc=options.desc or "simtorch", unit="batch", leave=False)

    guard = FiniteGuard(dev)
    workspace = Workspace()
    autocast = options.autocast
    #: metric states at the last verified batch, when the NaN check is deferred
    verified = VerifiedStates(guard, metrics)

    placement = Placement((model_a, model_b), run_device)
    done = resume_from  # loader batches whose contributions are in the metrics' sums
    current: Metric | None = None
    verified.take(done)
    try:
        with ExitStack() as stack, torch.inference_mode(), DeferInterrupt() as interrupts:
            # hooks attached (and eval mode set) once for the whole pass; each batch only
            # resets the captures the hooks write into
            captures: dict[int, LayerCapture] = {}
            for members in groups.values():
                for sm in members:
                    captures[id(sm)] = LayerCapture(sm, workspace, needs.features, needs.raw_products,
                                                    autocast is not None, rerunnable=not dist_on)
                    stack.enter_context(captures[id(sm)].attached())
            for index, batch in enumerate(iterator):
                raw = unpack_batch(batch, options.input_key, options.input_fn)
                if index == 0:
                    if state is not None:
                        state.check_first_batch(batch_hash(raw))
                    _check_first_batch(needs, raw)
                if index < resume_from:
                    continue  # counted by the saved run: the models do not run on it
                n = batch_size(raw)
                for members in groups.values():
                    where = run_device[id(members[0])]
                    inputs = to_device(raw, where, options.channels_last)
                    caps = [captures[id(sm)] for sm in members]
                    _forward(members, caps, n, inputs, where, autocast, options.channels_last)
                    if not all(cap.verify() for cap in caps):
                        # a deferred κ check failed (the first rows of a layer were far from
                        # its mean): the batch runs again with every product checked in its
                        # hook, so all of this model's Grams still come from one forward pass
                        deferring = [cap.defer for cap in caps]
                        for cap in caps:
                            cap.defer = False
                        try:
                            _forward(members, caps, n, inputs, where, autocast, options.channels_last)
                        finally:
                            for cap, d in zip(caps, deferring):
                                cap.defer = d
                side_a = _stack(captures[id(model_a)], dev)
                side_b = side_a if same else _stack(captures[id(model_b)], dev)
                guard.add(index, model_a, side_a[1])
                if not same:
                    guard.add(index, model_b, side_b[1])
                gram_batch = GramBatch(
                    index=index, n=n, grams_a=side_a[0], energy_a=side_a[1], grams_b=side_b[0],
                    energy_b=side_b[1], same=same, inputs=to_device(raw, dev) if needs.inputs else None,
                    features_a=side_a[2], features_b=side_b[2], raw_a=side_a[3], raw_b=side_b[3],
                    workspace=workspace,
                )
                with interrupts.hold():
                    for metric in metrics:
                        current = metric
                        metric.update(gram_batch)
                    current = None
                    done = index + 1
                if verified.due():
                    verified.verify(done)
                if state is not None and state.due(done):
                    state.save(metrics, verified.verify(done))
        done = verified.verify(done)
        if state is not None and done > state.saved_batches:
            state.save(metrics, done, complete=True)
        for metric in metrics:
            metric.finish()
        if dist_on:
            peers.exchanged = True
            check_peers(dev)
            for metric in metrics:
                all_reduce_states(metric)
            done = global_count(done, dev)
    except BaseException as exc:
        if current is not None:  # the exception came from inside this metric's update
            exc.simtorch_torn = [*getattr(exc, "simtorch_torn", []), current]  # type: ignore[attr-defined]
        elif not from_peer(exc):
            # the sums must hold verified batches only, for the partial result and the state file
            if hasattr(exc, "simtorch_batches"):
                done = exc.simtorch_batches  # type: ignore[attr-defined]
            else:
                try:
                    done = verified.verify(done)
                except FloatingPointError as nan:
                    done = getattr(nan, "simtorch_batches", done)
                    exc.simtorch_torn = getattr(nan, "simtorch_torn", [])  # type: ignore[attr-defined]
                    exc.simtorch_nan = str(nan)  # type: ignore[attr-defined]
                except BaseException:
                    pass
            if state is not None and not getattr(exc, "simtorch_torn", None):
                save_on_exit(state, metrics, done)
        raise
    finally:
        placement.restore()
        if options.progress and hasattr(iterator, "close"):
            iterator.close()
    if done == 0:
        raise ValueError("the loader yielded no batches; nothing to compare")
    return done


def _forward(members: Sequence[SimilarityModel], caps: Sequence[LayerCapture], n: int, inputs: Any,
             where: torch.device, autocast: torch.dtype | None, channels_last: bool = False) -> None:
    """One forward pass of the module the ``members`` wrap, each member's hooks capturing."""
    for cap in caps:
        cap.reset(n, inputs)
    with torch.autocast(device_type=where.type, dtype=autocast) if autocast is not None else nullcontext():
        try:
            call_model(members[0].model, inputs)
        except RuntimeError as exc:
            hint = _reuse_hint(members, caps)
            if not hint and channels_last:
                hint = (f"({members[0].model_name} ran on channels_last inputs: if it runs without "
                        f"channels_last=True, its forward needs contiguous activations, e.g. "
                        f"x.view(n, -1) where x.reshape(n, -1) or torch.flatten would do)")
            if hint:
                raise RuntimeError(f"{exc} {hint}") from exc
            raise
    for cap in caps:
        cap.check()


def _reuse_hint(members: Sequence[SimilarityModel], caps: Sequence[LayerCapture]) -> str:
    """The 0.2.1 note for a module that ran twice (found from the capture's call counts)."""
    for sm, cap in zip(members, caps):
        for i, name in enumerate(sm.layer_names):
            if cap.calls[i] > 1 and sm.call_index(name) is None:
                return sm.reuse_hint(name)
    return ""


def _stack(cap: LayerCapture, device: torch.device) -> tuple[Tensor, Tensor, list[Tensor] | None, Any]:
    grams, energy = cap.finish()
    grams, energy = move(grams, device), move(energy, device)
    feats = None if cap.feature_fn is None else [move(f, device) for f in cap.features]  # type: ignore[arg-type]
    raw = None
    if cap.raw_products:
        raw = tuple(move(torch.stack([r[k] for r in cap.raw]), device) for k in range(4))  # type: ignore[index]
    return grams, energy, feats, raw
