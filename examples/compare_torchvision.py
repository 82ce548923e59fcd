"""Compare two torchvision models layer by layer with CKA and save the heatmap.

The README's main job. By default: ResNet-18 vs ResNet-34, random initialisation with
fixed seeds (pretrained weights cannot be downloaded everywhere), scikit-learn's bundled
digits upsampled to 32×32, unbiased linear CKA, heatmap into assets/.

    python examples/compare_torchvision.py --out assets/cka_resnet18_resnet34.png
    python examples/compare_torchvision.py --weights-a DEFAULT --weights-b DEFAULT \\
        --data imagefolder:/data/imagenet/val --image-size 224 --n 5000 --device cuda

``--weights-*`` takes a torchvision weight name (``DEFAULT``, ``IMAGENET1K_V1``; needs
the download or a cached copy) or the path of a saved state dict. ``--timing`` also times
both models' forward passes alone over the same loader and prints the ratio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader

from simtorch import CKA, SimilarityModel
from simtorch.checkpoints import load_checkpoint
from simtorch.data import make_dataset

RESNET_LAYERS = ["conv1", "maxpool", "layer?.*", "avgpool", "fc"]  # every residual block


def build(arch: str, weights: str | None, seed: int) -> torch.nn.Module:
    """A torchvision model: random init under ``seed``, torchvision weights, or a state dict."""
    torch.manual_seed(seed)
    if weights is None:
        return torchvision.models.get_model(arch, weights=None)
    if Path(weights).is_file():  # weights_only loading, every key checked
        return load_checkpoint(torchvision.models.get_model(arch, weights=None), weights)
    return torchvision.models.get_model(arch, weights=weights)


def forward_only(models: list[torch.nn.Module], loader: DataLoader, device: str) -> float:
    """Seconds to run every model over the loader under inference mode, nothing else."""
    for m in models:
        m.eval().to(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for x, *_ in loader:
            x = x.to(device)
            for m in models:
                m(x)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-a", default="resnet18")
    p.add_argument("--model-b", default="resnet34")
    p.add_argument("--weights-a", default=None, help="torchvision weight name or state-dict path")
    p.add_argument("--weights-b", default=None)
    p.add_argument("--data", default="digits", help="digits | synthetic | imagefolder:PATH")
    p.add_argument("--n", type=int, default=1024, help="number of images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--kernel", default="linear", choices=["linear", "rbf"])
    p.add_argument("--biased", action="store_true", help="HSIC0 instead of the unbiased HSIC1")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="assets/cka_resnet18_resnet34.png")
    p.add_argument("--timing", action="store_true", help="also time the forward passes alone")
    args = p.parse_args()

    model_a = build(args.model_a, args.weights_a, seed=0)
    model_b = build(args.model_b, args.weights_b, seed=1)
    layers = lambda arch: RESNET_LAYERS if arch.startswith("resnet") else [n for n, _ in model_a.named_children()]
    sm_a = SimilarityModel(model_a, model_name=args.model_a, layers_to_include=layers(args.model_a))
    sm_b = SimilarityModel(model_b, model_name=args.model_b, layers_to_include=layers(args.model_b))

    data = make_dataset(args.data, n=args.n, image_size=args.image_size)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False)

    cka = CKA(sm_a, sm_b, device=args.device, kernel=args.kernel, unbiased=not args.biased)
    if args.timing:  # warm up (first-call kernel selection) so neither timing pays for it
        forward_only([model_a, model_b], [next(iter(loader))], args.device)
    start = time.perf_counter()
    grid = cka.compute(loader)
    seconds = time.perf_counter() - start
    res = cka.result
    print(res)
    print(f"CKA grid {grid.shape} in {seconds:.2f} s; diagonal-ish cells:")
    for i, name in enumerate(res.layers_a):
        j = round(i * (len(res.layers_b) - 1) / max(1, len(res.layers_a) - 1))
        print(f"  {name:>10} vs {res.layers_b[j]:<10} {grid[i, j]:.3f} ± {res.stderr[i, j]:.3f}")
    if args.timing:
        base = forward_only([model_a, model_b], loader, args.device)
        print(f"forward passes alone: {base:.2f} s; CKA / forward-only = {seconds / base:.3f}")

    title = f"{'unbiased' if not args.biased else 'biased'} {args.kernel} CKA: {args.model_a} vs {args.model_b}"
    cka.plot_similarity(title=title, savefig=True, save_path=args.out)
    print(f"heatmap written to {args.out}")


if __name__ == "__main__":
    main()
