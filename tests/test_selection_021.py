"""simtorch 0.2.1 scripts select layers by substring; simtorch prefers an exact name. The
difference is never silent (issue 13, case 3)."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from models import Tiny, data
from simtorch import CKA, SimilarityModel
from simtorch.layers import default_layers

torchvision = pytest.importorskip("torchvision")


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


def quiet_names(model: nn.Module, spec, **kw) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return SimilarityModel(model, layers_to_include=spec, **kw).layer_names


def test_exact_name_that_0_2_1_would_have_widened_warns_once_with_both_fixes():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        sm = SimilarityModel(resnet18(), "R", ["conv1", "fc"])
    assert sm.layer_names == ["conv1", "fc"]  # exact first, as before
    msgs = [str(w.message) for w in rec if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1, msgs
    msg = msgs[0]
    assert "'conv1'" in msg and "8 more" in msg and "layer1.0.conv1" in msg
    assert "match='exact'" in msg and "'**conv1**'" in msg and "match='substring'" in msg
    assert "'fc'" not in msg  # 'fc' is in no other name


def test_both_selections_on_request():
    model = resnet18()
    assert quiet_names(model, ["conv1"], match="exact") == ["conv1"]
    legacy = [n for n, _ in model.named_modules() if "conv1" in n]
    assert len(legacy) == 9
    assert quiet_names(model, ["conv1"], match="substring") == legacy
    assert quiet_names(model, ["**conv1**"]) == legacy


def test_a_name_with_only_its_own_children_stays_quiet():
    assert quiet_names(resnet18(), ["layer1"]) == ["layer1"]
    assert quiet_names(Tiny(), ["block1"]) == ["block1"]


def test_vit_like_norm():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2, self.fc = nn.LayerNorm(4), nn.LayerNorm(4), nn.Linear(4, 4)

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(*[Block() for _ in range(3)])
            self.norm = nn.LayerNorm(4)

    with pytest.warns(UserWarning, match=r"'norm' \(0.2.1 would also have taken 6 more"):
        assert SimilarityModel(ViT(), layers_to_include=["norm"]).layer_names == ["norm"]


def test_default_layers_do_not_warn():
    model = resnet18()
    names = quiet_names(model, default_layers(model))
    assert names[:2] == ["conv1", "maxpool"] and names[-2:] == ["avgpool", "fc"]


def test_match_is_validated():
    with pytest.raises(ValueError, match="match must be one of"):
        SimilarityModel(Tiny(), layers_to_include=["stem"], match="fuzzy")
    with pytest.raises(ValueError, match=r"'stem\.x' matches no module .*match='exact'"):
        SimilarityModel(Tiny(), layers_to_include=["stem.x"], match="exact")


def test_substring_catching_a_reused_module_names_the_0_2_1_difference_and_the_fix():
    # torchvision's BasicBlock applies its relu twice; 0.2.1's "layer" substring hooks it
    model = resnet18()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # containers with their children: warned elsewhere
        sm = SimilarityModel(model, "R", ["layer"])
    x = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with pytest.raises(RuntimeError, match=r"'layer1.0.relu' ran more than once.*substring entry 'layer'.*0.2.1.*"
                                           r"call_index=\{'layer1.0.relu': -1\}"):
        CKA(sm, sm, progress=False).compute(x)
    with pytest.raises(RuntimeError, match=r"substring entry 'relu'.*0.2.1"):
        SimilarityModel(model, "R", ["relu"], match="substring").activations(x[0])
    # the fix the message gives runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fixed = SimilarityModel(model, "R", ["relu"], match="substring", call_index=-1)
    g = CKA(fixed, fixed, progress=False, unbiased=False).compute(x)
    assert g.shape == (9, 9) and np.isfinite(np.diag(g)).all()


def test_activations_apply_call_index_as_the_computation_does():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.blk = nn.Linear(6, 6)

        def forward(self, x):
            return self.blk(torch.tanh(self.blk(x)))

    model = Shared()
    x = data(8)
    with pytest.raises(RuntimeError, match="'blk' ran more than once.*call_index"):
        SimilarityModel(model, layers_to_include=["blk"]).activations(x)
    first = SimilarityModel(model, layers_to_include=["blk"], call_index=0).activations(x)["blk"]
    with torch.no_grad():
        torch.testing.assert_close(first, model.blk(x))  # 0.3.0 returned the last call here
