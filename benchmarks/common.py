"""Shared pieces of the benchmark suite: workloads, memory probes and timed phases (the
float64 reference is in ``reference64.py``). Imported by ``run.py``, ``peers.py`` and the
prototypes (not part of simtorch).
"""

from __future__ import annotations

import gc
import importlib.util
import inspect
import json
import os
import re
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# this checkout's simtorch only where no other is importable (a checkout without `pip install
# -e .`): PYTHONPATH=<another tree> must win, so that an older commit can be timed with
# today's benchmarks (putting ROOT first made such a "before" run time this tree's code)
if importlib.util.find_spec("simtorch") is None:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import simtorch  # noqa: E402
from simtorch import SimilarityModel  # noqa: E402
from simtorch.data import synthetic_images  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def save_json(path: str | None, prefix: str, payload: dict) -> Path:
    """Write a run's ``payload`` (its ``meta`` holds ``total_s``) to ``path``, or to
    ``results/<prefix>-<time>.json`` (git-ignored), and say where."""
    out = Path(path) if path else RESULTS / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, default=str))
    print(f"\nJSON: {out}  (total {payload['meta']['total_s']:.0f} s)")
    return out


MiB = 1024.0 * 1024.0

# ----------------------------------------------------------------------------- memory


def _status_kib(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{key}:\s+(\d+)\s+kB", f.read(), re.M)
        return float(m.group(1)) if m else None
    except OSError:
        return None


def rss_mib() -> float:
    v = _status_kib("VmRSS")
    if v is None:  # not Linux: best effort through the lifetime maximum
        return maxrss_mib()
    return v / 1024.0


def maxrss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


class PeakRSS:
    """Peak resident set size over a block of code.

    On Linux the kernel's high-water mark (VmHWM) is reset by writing ``5`` to
    ``/proc/self/clear_refs`` and read back afterwards: exact and free. Where that is not
    allowed, a thread samples VmRSS every millisecond (may miss sub-millisecond spikes).
    """

    def __init__(self) -> None:
        self.before = self.peak = self.after = 0.0
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled = 0.0

    def __enter__(self) -> "PeakRSS":
        self.before = rss_mib()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM"
        except OSError:
            self.method = "sampled"
            self._sampled = self.before
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._sampled = max(self._sampled, rss_mib())
            time.sleep(0.001)

    def __exit__(self, *exc: Any) -> None:
        self.after = rss_mib()
        if self.method == "VmHWM":
            self.peak = (_status_kib("VmHWM") or 0.0) / 1024.0
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self.peak = max(self._sampled, self.after)

    @property
    def growth(self) -> float:
        return self.peak - self.before


# ----------------------------------------------------------------------------- workloads

W1_LAYERS = ["conv1", "maxpool", "layer?.*", "avgpool", "fc"]


def deep_stack(depth: int = 100, width: int = 256, in_dim: int = 3 * 32 * 32, seed: int = 0) -> nn.Sequential:
    """``depth`` Linear layers of ``width`` units with ReLU between them; Kaiming-normal
    weights (ReLU gain) keep the activation scale constant over 100 layers (the default
    init would shrink it by ~6× per layer into denormals)."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    d = in_dim
    for i in range(depth):
        lin = nn.Linear(d, width)
        with torch.no_grad():
            lin.weight.normal_(0.0, (2.0 / d) ** 0.5, generator=g)
            lin.bias.zero_()
        layers.append(lin)
        if i < depth - 1:
            layers.append(nn.ReLU())
        d = width
    return nn.Sequential(*layers)


@dataclass
class Workload:
    name: str
    description: str
    image_size: int = 32
    n: int = 1024
    batch: int = 128
    kind: str = "resnet"  # resnet | stack
    layers: Any = field(default_factory=lambda: list(W1_LAYERS))
    metric: str = "cka"  # cka | compare3
    breakdown: bool = False  # also time a Gram-only pass (Gram part vs pairwise part)
    repeats: int = 5
    target: float | None = None  # ratio to forward-only
    target_note: str = ""


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("W1", "resnet18 vs resnet34 block outputs, 32x32, CKA", target=1.05, breakdown=True),
        Workload("W1-wide", "W1 at 64x64", image_size=64, target=1.03, repeats=3, breakdown=True),
        Workload("W1-many", "every Conv2d of both models, CKA", layers=[nn.Conv2d], target=1.15, breakdown=True),
        Workload("grid100", "100x100 grid: 100 Linear(256) layers per model, CKA", kind="stack",
                 layers=[nn.Linear], breakdown=True,
                 target_note="pairwise part <= 50% of the Gram part"),
        Workload("compare3", "W1 with CKA + dCKA + II in one pass (simtorch.compare)", metric="compare3",
                 target=1.15, repeats=3),
    ]
}


def build_models(w: Workload) -> tuple[nn.Module, nn.Module]:
    if w.kind == "stack":
        return deep_stack(seed=0, in_dim=3 * w.image_size**2).eval(), deep_stack(seed=1, in_dim=3 * w.image_size**2).eval()
    import torchvision

    torch.manual_seed(0)
    a = torchvision.models.resnet18(weights=None)
    torch.manual_seed(1)
    b = torchvision.models.resnet34(weights=None)
    return a.eval(), b.eval()


def prototype_setup(default: str = "W1-many", rounds: int = 3, n: int = 1024) -> tuple[Any, int, nn.Module, nn.Module,
                                                                            SimilarityModel, SimilarityModel, Any]:
    """What the in-pass prototypes share: ``argv[1]`` the workload (``default``), ``argv[2]``
    the rounds; returns ``(workload, rounds, model_a, model_b, wrapper_a, wrapper_b, loader)``
    with N = ``n`` on the CPU."""
    w = WORKLOADS[sys.argv[1] if len(sys.argv) > 1 else default]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else rounds
    ma, mb = build_models(w)
    sa, sb = wrap(w, ma, mb)
    return w, rounds, ma, mb, sa, sb, make_loader(n, w.image_size, w.batch, torch.device("cpu"))


def make_loader(n: int, image_size: int, batch: int, device: torch.device) -> torch.utils.data.DataLoader:
    ds = synthetic_images(n, image_size, seed=0)
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, num_workers=0,
                                       pin_memory=device.type == "cuda")


def wrap(w: Workload, ma: nn.Module, mb: nn.Module) -> tuple[SimilarityModel, SimilarityModel]:
    names = ("ResNet-18", "ResNet-34") if w.kind == "resnet" else ("stack-0", "stack-1")
    # names and globs as written (W1's "conv1" is that one module)
    kw = {"match": "exact"} if "match" in inspect.signature(SimilarityModel).parameters else {}
    return (SimilarityModel(ma, names[0], list(w.layers), **kw), SimilarityModel(mb, names[1], list(w.layers), **kw))


# ----------------------------------------------------------------------------- phases


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class ChannelsLastLoader:
    """``loader`` with each batch's images in the channels_last memory format, converted as
    the batch is drawn (what a user would do to give a peer such inputs)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        for batch in self.loader:
            yield (_layout(batch[0], True), *batch[1:])


def forward_only(models: tuple[nn.Module, ...], loader: Any, device: torch.device,
                 channels_last: bool = False) -> Callable[[], None]:
    """The floor: both models over the loader under inference mode, nothing else
    (``channels_last``: the images in that memory format, as ``RunOptions(channels_last=True)``
    gives them)."""

    def run() -> None:
        with torch.inference_mode():
            for batch in loader:
                x = _layout(batch[0].to(device, non_blocking=True), channels_last)
                for m in models:
                    m(x)

    return run


def grams_only(sa: SimilarityModel, sb: SimilarityModel, loader: Any, device: torch.device,
               channels_last: bool = False) -> Callable[[], None]:
    """Forward passes plus one bare GEMM ``X Xᵀ`` per hooked layer (the activation flattened,
    float32, no centring, the result dropped): the floor of exact Grams ("forward + bare
    GEMM Grams", issue 12), with plain hooks registered once, no stacking, no HSIC. With
    ``channels_last`` the images are in that format and each activation is multiplied in
    its memory order (a view, :func:`simtorch.functional.product_rows`)."""
    rows = simtorch.functional.product_rows if channels_last else (lambda t: t.reshape(t.shape[0], -1))

    def run() -> None:
        handles = []

        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            x = rows(out.detach())
            torch.mm(x, x.T)

        try:
            for sm in (sa, sb):
                for name in sm.layer_names:
                    handles.append(sm.base_model.get_submodule(name).register_forward_hook(hook))
            with torch.inference_mode():
                for batch in loader:
                    x = _layout(batch[0].to(device, non_blocking=True), channels_last)
                    sa.model(x)
                    sb.model(x)
        finally:
            for h in handles:
                h.remove()

    return run


def engine_only(sa: SimilarityModel, sb: SimilarityModel, loader: Any, device: torch.device) -> Callable[[], None] | None:
    """simtorch's streaming loop with a metric that does nothing: hooks, output reduction,
    Grams, per-batch hook/mode set-up, stacking and checks, but no HSIC. ``None`` when the
    engine's internal API is not there (it is not public and may change)."""
    try:
        from simtorch.engine import stream
        from simtorch.metrics import Computed, Metric
    except ImportError:
        return None

    class NoOp(Metric):
        name = "noop"

        def update(self, batch: Any) -> None:
            pass

        def compute(self) -> Computed:
            return Computed(torch.zeros(self.binding.layers_a, self.binding.layers_b))

    def run() -> None:
        stream(sa, sb, loader, [NoOp()], device, progress=False)

    return run


def similarity(w: Workload, sa: SimilarityModel, sb: SimilarityModel, loader: Any, device: torch.device,
               out: dict, metric: str | None = None, channels_last: bool = False) -> Callable[[], None]:
    """The similarity computation under test (``metric`` overrides the workload's); the
    CKA grid lands in ``out['grid']``."""

    if (metric or w.metric) == "cka":

        def run() -> None:
            out["grid"] = simtorch.CKA(sa, sb, device=device, progress=False,
                                       channels_last=channels_last).compute(loader)

    else:

        def run() -> None:
            res = simtorch.compare(sa, sb, loader, metrics=("cka", "dcka", "ii"), device=device, progress=False)
            out["grid"] = res["cka"].matrix
            out["extra_shapes"] = {k: list(v.matrix.shape) for k, v in res.items()}

    return run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device) -> dict[str, float]:
    gc.collect()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda0 = torch.cuda.memory_allocated(device)
    with PeakRSS() as mem:
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    # minor page faults: memory the allocator handed back to the OS and took again, whose
    # first touch the kernel zeroes; they depend on the heap's history in this process
    rec = {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": mem.peak, "rss_before_mib": mem.before,
           "rss_growth_mib": mem.growth, "rss_after_mib": mem.after, "minor_faults": faults}
    if device.type == "cuda":
        rec["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / MiB
        rec["cuda_growth_mib"] = (torch.cuda.max_memory_allocated(device) - cuda0) / MiB
    return rec


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
