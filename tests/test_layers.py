"""simtorch.layers: which modules an entry of ``layers_to_include`` selects (exact names,
path-style globs, module types, 0.2.1 substrings), close-match suggestions, wrappers
looked through, and the default layers per architecture."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np
import pytest
from torch import nn

from models import Tiny, batches, conv_net, data
from simtorch import CKA, SimilarityModel
from simtorch.layers import default_layers, glob_to_regex, select, suggest, unwrap_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: see conftest.py


def names(model: nn.Module, spec, **kw) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SimilarityModel(model, layers_to_include=spec, **kw).layer_names


# ---------------------------------------------------------------- selection through SimilarityModel


def test_exact_name_wins_over_substring():
    assert names(Tiny(), ["block1"]) == ["block1"]
    assert names(Tiny(), "block2.inner.fc") == ["block2.inner.fc"]


def test_glob_star_stays_inside_one_component():
    assert names(Tiny(), ["block?.*"]) == ["block1.fc", "block1.act", "block2.fc", "block2.act", "block2.inner"]
    assert names(Tiny(), ["*.fc"]) == ["block1.fc", "block2.fc"]
    assert names(Tiny(), ["block[2].f?"]) == ["block2.fc"]


def test_glob_double_star_crosses_dots():
    assert names(Tiny(), ["block2.**"]) == ["block2.fc", "block2.act", "block2.inner", "block2.inner.fc"]
    assert names(Tiny(), ["**.fc"]) == ["block1.fc", "block2.fc", "block2.inner.fc"]


def test_substring_as_in_021():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing nested among the hits: no warning
        assert names(Tiny(), ["fc"]) == ["block1.fc", "block2.fc", "block2.inner.fc"]


def test_substring_warns_when_container_and_children_are_picked():
    with pytest.warns(UserWarning, match="containers together with modules inside them") as rec:
        got = SimilarityModel(Tiny(), layers_to_include=["inner"]).layer_names
    assert got == ["block2.inner", "block2.inner.fc"]
    assert "block2.inner" in str(rec[0].message)


def test_layer_selection_exact_glob_substring():
    A = conv_net(0)
    # exact name preferred: "conv1" does not also pick other names containing it
    assert SimilarityModel(A, layers_to_include=["conv1"], device="cpu").layer_names == ["conv1"]
    # glob
    assert SimilarityModel(A, layers_to_include=["conv*"], device="cpu").layer_names == ["conv1", "conv2"]
    # substring fallback
    assert SimilarityModel(A, layers_to_include=["relu"], device="cpu").layer_names == ["relu1"]


def test_module_type_selection_and_model_order():
    assert names(Tiny(), [nn.Linear]) == ["stem", "block1.fc", "block2.fc", "block2.inner.fc", "head"]
    # order is the model's, not the request's; duplicates collapse
    assert names(Tiny(), ["head", "stem", nn.Tanh, "stem"]) == ["stem", "block2.act", "head"]
    sm = SimilarityModel(Tiny(), model_name="T", layers_to_include=["head", "stem"])
    assert sm.layer_names == ["stem", "head"] and sm.n_layers == 2 and sm.model_name == "T"


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="blok1") as e:
        SimilarityModel(Tiny(), layers_to_include=["stem", "blok1"])
    assert "block1" in str(e.value)
    with pytest.raises(ValueError, match="hed") as e:
        SimilarityModel(Tiny(), layers_to_include=["hed"])
    assert "head" in str(e.value)
    with pytest.raises(ValueError, match="matches no module"):
        SimilarityModel(Tiny(), layers_to_include=["nothing.*"])
    with pytest.raises(ValueError, match="matches no module"):
        SimilarityModel(Tiny(), layers_to_include=[nn.Conv2d])


def test_unknown_resnet_layer_suggests_real_ones():
    torchvision = pytest.importorskip("torchvision")
    with pytest.raises(ValueError) as e:
        SimilarityModel(torchvision.models.resnet18(), layers_to_include=["layer5"])
    assert "layer4" in str(e.value)


@pytest.mark.parametrize("empty", [[], None, ()])
def test_empty_layers_is_an_error(empty):
    with pytest.raises(ValueError, match="empty"):
        SimilarityModel(Tiny(), layers_to_include=empty)


def test_bad_layer_spec_types():
    with pytest.raises(TypeError):
        SimilarityModel(Tiny(), layers_to_include=[int])
    with pytest.raises(TypeError):
        SimilarityModel(Tiny(), layers_to_include=[3])
    with pytest.raises(TypeError):
        SimilarityModel("not a model", layers_to_include=["x"])


def test_dataparallel_names_have_no_module_prefix():
    base = Tiny()
    dp = nn.DataParallel(base)  # on CPU this just runs the module
    sm = SimilarityModel(dp, layers_to_include=["stem", "block?.fc"])
    assert sm.layer_names == ["stem", "block1.fc", "block2.fc"]
    assert not any(n.startswith("module") for n in sm.available_layers())
    assert sm.model is dp  # the wrapper still runs the forward
    x = data()
    plain = SimilarityModel(base, layers_to_include=["stem", "block?.fc"])
    other = SimilarityModel(Tiny(1), layers_to_include=["head"])
    g1 = CKA(sm, other, progress=False).compute(batches(x, 12))
    g2 = CKA(plain, other, progress=False).compute(batches(x, 12))
    np.testing.assert_allclose(g1, g2, atol=1e-12)


# ---------------------------------------------------------------- the functions themselves


@pytest.mark.parametrize(
    "pattern, hits, misses",
    [
        ("layer?.*", ["layer1.0", "layer4.12"], ["layer1", "layer1.0.conv1", "layer10.0"]),
        ("*.fc", ["a.fc", "block2.fc"], ["fc", "a.b.fc", "a.fc1"]),
        ("**.fc", ["a.fc", "a.b.fc"], ["fc", "a.fc.x"]),
        ("layer[12].*", ["layer1.0", "layer2.3"], ["layer3.0"]),
        ("layer[!12].*", ["layer3.0"], ["layer1.0", "layer2.0"]),
        ("blocks.0", ["blocks.0"], ["blocksX0", "blocks.01"]),  # a dot is literal
        ("a[", ["a["], ["a", "ab"]),  # an unclosed bracket is literal
    ],
)
def test_glob_to_regex_path_style(pattern, hits, misses):
    rx = glob_to_regex(pattern)
    for name in hits:
        assert rx.fullmatch(name), (pattern, name)
    for name in misses:
        assert not rx.fullmatch(name), (pattern, name)


def test_select_precedence_type_exact_glob_substring():
    named = [(n, m) for n, m in Tiny().named_modules() if n]
    assert select(named, nn.ReLU) == ["block1.act"]
    assert select(named, "block2.inner") == ["block2.inner"]  # exact, not also block2.inner.fc
    assert select(named, "block2.*") == ["block2.fc", "block2.act", "block2.inner"]
    assert select(named, "act") == ["block1.act", "block2.act"]
    assert select(named, "conv") == []
    with pytest.raises(TypeError, match="not an nn.Module subclass"):
        select(named, dict)
    with pytest.raises(TypeError, match="str or nn.Module"):
        select(named, 1.5)


def test_suggest_close_and_prefix_matches():
    pool = ["layer1", "layer2", "layer3", "layer4", "fc"]
    assert "layer4" in suggest("layer5", pool)
    assert "'fc'" in suggest("fcc", pool)
    assert suggest("zzzzzz", pool) == ""
    assert suggest(nn.Linear, pool) == ""  # types get no suggestion


def test_unwrap_model_looks_through_nested_wrappers():
    base = Tiny()
    assert unwrap_model(base) is base
    assert unwrap_model(nn.DataParallel(nn.DataParallel(base))) is base


# ---------------------------------------------------------------- default layers per architecture


class ResNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(nn.Identity(), nn.Identity())
        self.layer2 = nn.Sequential(nn.Identity())
        self.AuxLogits = nn.Linear(4, 2)  # training-only head: left out
        self.fc = nn.Linear(4, 2)  # no avgpool: that pattern is dropped


class FeaturesNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.aux1 = nn.Linear(4, 2)
        self.classifier = nn.Linear(4, 2)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Identity(), nn.Identity())
        self.ln = nn.LayerNorm(4)


class ViTLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_proj = nn.Conv2d(3, 4, 2)
        self.encoder = Encoder()
        self.heads = nn.Linear(4, 2)


def test_default_layers_per_architecture():
    assert default_layers(ResNetLike()) == ["conv1", "maxpool", "layer?.*", "fc"]
    assert default_layers(FeaturesNet()) == ["features.*", "classifier"]
    assert default_layers(ViTLike()) == ["conv_proj", "encoder.layers.*", "heads"]
    plain = nn.Sequential(OrderedDict(a=nn.Linear(2, 2), b=nn.ReLU()))
    assert default_layers(plain) == ["a", "b"]
    assert default_layers(nn.DataParallel(ResNetLike())) == ["conv1", "maxpool", "layer?.*", "fc"]
    with pytest.raises(ValueError, match="no sub-modules"):
        default_layers(nn.Linear(2, 2))


def test_default_layers_select_real_modules():
    # the patterns are meant for SimilarityModel: each selects what the docstring says
    sm = SimilarityModel(ResNetLike(), layers_to_include=default_layers(ResNetLike()))
    assert sm.layer_names == ["conv1", "maxpool", "layer1.0", "layer1.1", "layer2.0", "fc"]
    vit = SimilarityModel(ViTLike(), layers_to_include=default_layers(ViTLike()))
    assert vit.layer_names == ["conv_proj", "encoder.layers.0", "encoder.layers.1", "heads"]
