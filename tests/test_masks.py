"""Sequence outputs: which mask a layer uses, and which dimension holds the tokens, are never
a guess (issue 13, case 1).

Tiny modules stand in for the real layouts: an encoder–decoder like BART (two sequences, two
masks), a Wav2Vec2-like audio model (a mask over samples, outputs over frames), a Conv1d
(batch, channels, time), a 4-D conv map, and sequence-first modules whose token count equals
the batch size.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from models import ref_grid
from simtorch import CKA, SimilarityModel

B, S, D = 8, 6, 5


# ---------------------------------------------------------------- tiny models


class Seq2Seq(nn.Module):
    """BART-like: encoder over input_ids, decoder over decoder_input_ids (same length here,
    so a mask of the wrong sequence fits by shape)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(30, D)
        self.encoder = nn.Sequential(OrderedDict(layer=nn.Linear(D, D)))
        self.decoder = nn.Sequential(OrderedDict(layer=nn.Linear(D, D)))

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None):
        h = self.encoder(self.embed(input_ids))
        ctx = h.mean(1, keepdim=True)
        if decoder_input_ids is None:
            return h
        return self.decoder(self.embed(decoder_input_ids) + ctx)


def lengths_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    return (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).long()


def seq2seq_batches(n_batches: int = 4, with_decoder_mask: bool = True) -> list[dict]:
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n_batches):
        enc_len = torch.randint(1, S + 1, (B,), generator=g)
        dec_len = torch.randint(1, S + 1, (B,), generator=g)
        batch = {"input_ids": torch.randint(0, 30, (B, S), generator=g), "attention_mask": lengths_mask(enc_len, S),
                 "decoder_input_ids": torch.randint(0, 30, (B, S), generator=g)}
        if with_decoder_mask:
            batch["decoder_attention_mask"] = lengths_mask(dec_len, S)
        out.append(batch)
    return out


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask.double().unsqueeze(-1)
    return (h.double() * w).sum(1) / w.sum(1)


def seq2seq_acts(model: Seq2Seq, bb: dict, dec_mask_key: str) -> dict:
    with torch.no_grad():
        h = model.encoder.layer(model.embed(bb["input_ids"]))
        d = model.decoder.layer(model.embed(bb["decoder_input_ids"]) + h.mean(1, keepdim=True))
    return {"encoder.layer": masked_mean(h, bb["attention_mask"]), "decoder.layer": masked_mean(d, bb[dec_mask_key])}


LAYERS = ["encoder.layer", "decoder.layer"]


def test_two_masks_are_never_guessed():
    # 0.3.0 pooled the decoder with the encoder's mask here (same shape), without a word
    a = SimilarityModel(Seq2Seq(0), "A", LAYERS, sequence="mean")
    b = SimilarityModel(Seq2Seq(1), "B", LAYERS, sequence="mean")
    with pytest.raises(ValueError, match=r"several masks \['attention_mask', 'decoder_attention_mask'\].*mask_fn="):
        CKA(a, b, progress=False).compute(seq2seq_batches())


def test_a_decoder_input_without_its_mask_is_not_pooled_with_the_encoder_mask():
    a = SimilarityModel(Seq2Seq(0), "A", LAYERS, sequence="mean")
    with pytest.raises(ValueError, match=r"second sequence \(\['decoder_input_ids'\]\)"):
        CKA(a, a, progress=False).compute(seq2seq_batches(with_decoder_mask=False))


def test_masks_per_layer_give_each_layer_its_own_mask():
    ma, mb = Seq2Seq(0), Seq2Seq(1)
    masks = {"encoder.**": "attention_mask", "decoder.**": "decoder_attention_mask"}
    a = SimilarityModel(ma, "A", LAYERS, sequence="mean", mask_fn=masks)
    b = SimilarityModel(mb, "B", LAYERS, sequence="mean", mask_fn=masks)
    bs = seq2seq_batches()
    got = CKA(a, b, progress=False).compute(bs)
    want = ref_grid([seq2seq_acts(ma, bb, "decoder_attention_mask") for bb in bs],
                    [seq2seq_acts(mb, bb, "decoder_attention_mask") for bb in bs], LAYERS, LAYERS)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # the encoder's mask on the decoder is another number: the test can tell them apart
    wrong = ref_grid([seq2seq_acts(ma, bb, "attention_mask") for bb in bs],
                     [seq2seq_acts(mb, bb, "attention_mask") for bb in bs], LAYERS, LAYERS)
    assert np.abs(wrong[1] - want[1]).max() > 1e-3
    # a callable works the same way
    c = SimilarityModel(ma, "A", LAYERS, sequence="mean",
                        mask_fn={"encoder.layer": lambda inp: inp["attention_mask"],
                                 "decoder.layer": lambda inp: inp["decoder_attention_mask"]})
    np.testing.assert_allclose(CKA(c, b, progress=False).compute(bs), want, atol=1e-6)


def test_mask_fn_none_is_an_explicit_unmasked_mean():
    ma = Seq2Seq(0)
    a = SimilarityModel(ma, "A", LAYERS, sequence="mean", mask_fn=None)
    bs = seq2seq_batches()
    got = CKA(a, a, progress=False).compute(bs)
    assert np.isfinite(got).all()


def test_mask_fn_patterns_and_keys_are_checked():
    with pytest.raises(ValueError, match="'nope.\\*', which is none of the selected layers"):
        SimilarityModel(Seq2Seq(0), "A", LAYERS, sequence="mean", mask_fn={"nope.*": "attention_mask"})
    with pytest.raises(TypeError, match="mask_fn must be"):
        SimilarityModel(Seq2Seq(0), "A", LAYERS, sequence="mean", mask_fn=3)
    a = SimilarityModel(Seq2Seq(0), "A", LAYERS, sequence="mean", mask_fn="dec_mask")
    with pytest.raises(ValueError, match="mask_fn names the key 'dec_mask'"):
        CKA(a, a, progress=False).compute(seq2seq_batches())
    bad = SimilarityModel(Seq2Seq(0), "A", LAYERS, sequence="mean", mask_fn=lambda inp: inp["attention_mask"][:, :3])
    with pytest.raises(ValueError, match=r"'encoder.layer'.*\(8, 3\).*\(8, 6\) mask"):
        CKA(bad, bad, progress=False).compute(seq2seq_batches())


# ---------------------------------------------------------------- audio: a mask over samples, outputs over frames


class Audio(nn.Module):
    """Wav2Vec2-like: raw samples (B, 64) → Conv1d frames (B, 8, 15) → projection (B, 15, D)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.feature_extractor = nn.Conv1d(1, 8, kernel_size=8, stride=4)
        self.proj = nn.Linear(8, D)

    def forward(self, input_values, attention_mask=None):
        f = self.feature_extractor(input_values.unsqueeze(1))
        return self.proj(f.transpose(1, 2))


def audio_batches(n_batches: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(4)
    out = []
    for _ in range(n_batches):
        lengths = torch.randint(24, 65, (B,), generator=g)
        mask = lengths_mask(lengths, 64)
        out.append({"input_values": torch.randn(B, 64, generator=g) * mask, "attention_mask": mask})
    return out


def frame_mask(inputs: dict) -> torch.Tensor:
    """Frames whose whole receptive field lies inside the audio."""
    samples = inputs["attention_mask"].sum(1)
    frames = torch.div(samples - 8, 4, rounding_mode="floor") + 1
    return lengths_mask(frames, 15)


def test_audio_mask_over_samples_is_not_silently_dropped_on_frames():
    a = SimilarityModel(Audio(0), "A", ["proj"], sequence="mean")
    with pytest.raises(ValueError, match=r"'proj' has 15 tokens, but the batch's 'attention_mask' covers 64 positions"):
        CKA(a, a, progress=False).compute(audio_batches())


def test_audio_frame_mask_from_mask_fn():
    ma, mb = Audio(0), Audio(1)
    a = SimilarityModel(ma, "A", ["proj"], sequence="mean", mask_fn=frame_mask)
    b = SimilarityModel(mb, "B", ["proj"], sequence="mean", mask_fn=frame_mask)
    bs = audio_batches()
    got = CKA(a, b, progress=False).compute(bs)

    def acts(m):
        with torch.no_grad():
            return [{"proj": masked_mean(m(bb["input_values"]), frame_mask(bb))} for bb in bs]

    np.testing.assert_allclose(got, ref_grid(acts(ma), acts(mb), ["proj"], ["proj"]), atol=1e-6)


# ---------------------------------------------------------------- Conv1d (batch, channels, time)


class Conv1dNet(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv1d(3, 6, 3, padding=1)
        self.block = nn.Sequential(nn.Conv1d(6, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        h = self.block(self.conv(x))
        return self.head(h.mean(2))


def conv_batches(n_batches: int = 4, t: int = 10) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    # a shared slow signal over time, so the time mean carries information
    return [torch.randn(B, 3, 1, generator=g) + 0.3 * torch.randn(B, 3, t, generator=g) for _ in range(n_batches)]


def conv_acts(m: Conv1dNet, x: torch.Tensor, dim: int) -> dict:
    with torch.no_grad():
        c = m.conv(x)
        return {"conv": c.mean(dim), "block": m.block(c).mean(dim)}


def test_conv1d_mean_pools_over_time_not_channels():
    from simtorch.model.sim_model import detect_layout

    ma, mb = Conv1dNet(0), Conv1dNet(1)
    assert detect_layout(ma.conv) == "BCT" and detect_layout(ma.block) == "BCT"  # Sequential → its Conv1d
    a = SimilarityModel(ma, "A", ["conv", "block"], sequence="mean")
    b = SimilarityModel(mb, "B", ["conv", "block"], sequence="mean")
    xs = conv_batches()
    got = CKA(a, b, progress=False).compute(xs)
    time_mean = ref_grid([conv_acts(ma, x, 2) for x in xs], [conv_acts(mb, x, 2) for x in xs],
                         ["conv", "block"], ["conv", "block"])
    channel_mean = ref_grid([conv_acts(ma, x, 1) for x in xs], [conv_acts(mb, x, 1) for x in xs],
                            ["conv", "block"], ["conv", "block"])
    np.testing.assert_allclose(got, time_mean, atol=1e-6)
    assert np.abs(channel_mean - time_mean).max() > 1e-2  # 0.3.0's channel mean is another number


def test_declared_bct_layout_for_a_custom_block():
    class Custom(nn.Module):  # a (B, C, T) block the library cannot recognise
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.c = nn.Conv1d(3, 6, 3, padding=1)

        def forward(self, x):
            return torch.tanh(self.c(x))

    class Host(nn.Module):
        def __init__(self):
            super().__init__()
            self.blk = Custom()

        def forward(self, x):
            return self.blk(x)

    from simtorch.model.sim_model import detect_layout

    host = Host()
    assert detect_layout(host.blk) is None
    a = SimilarityModel(host, "A", ["blk"], sequence="mean", layout={"blk": "BCT"})
    xs = conv_batches()
    got = CKA(a, a, progress=False).compute(xs)
    other = SimilarityModel(Conv1dNet(1), "B", ["conv"], sequence="mean")
    grid = CKA(a, other, progress=False).compute(xs)
    with torch.no_grad():
        acts_a = [{"blk": host(x).mean(2)} for x in xs]
        acts_b = [{"conv": Conv1dNet(1).conv(x).mean(2)} for x in xs]
    np.testing.assert_allclose(grid, ref_grid(acts_a, acts_b, ["blk"], ["conv"]), atol=1e-6)
    assert np.isfinite(got).all()
    with pytest.raises(ValueError, match="layout must be"):
        SimilarityModel(host, "A", ["blk"], layout="BDT")


# ---------------------------------------------------------------- outputs the sequence rule does not fit


def test_mean_on_a_4d_conv_map_warns_naming_the_layer():
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), flat=nn.Flatten()))
    a = SimilarityModel(model, "C", ["conv", "flat"], sequence="mean")
    x = [torch.randn(B, 3, 6, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    with pytest.warns(UserWarning, match=r"C: layer 'conv': sequence='mean' applies to 3-D .* shape \(8, 4, 4, 4\); "
                                         r"it is flattened"):
        CKA(a, a, progress=False).compute(x)
    # per-layer modes keep it quiet
    quiet = SimilarityModel(model, "C", ["conv", "flat"], sequence={"flat": "mean"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CKA(quiet, quiet, progress=False).compute(x)


class SeqModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, D)
        self.enc = nn.Linear(D, D)

    def forward(self, input_ids, attention_mask=None, padding_mask=None):
        return self.enc(self.embed(input_ids))


def seq_batches(t: int = S, left: bool = False, key: str = "attention_mask") -> list[dict]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(3):
        lengths = torch.randint(1, t + 1, (B,), generator=g)
        mask = lengths_mask(lengths, t)
        if left:
            mask = mask.flip(1)
        out.append({"input_ids": torch.randint(0, 20, (B, t), generator=g), key: mask})
    return out


def test_flatten_with_a_mask_warns_with_the_fix():
    a = SimilarityModel(SeqModel(), "T", ["enc"])  # sequence="flatten" (the default)
    with pytest.warns(UserWarning, match=r"T: layer 'enc': sequence='flatten' ignores the batch's padding mask.*"
                                         r"sequence='mean'.*mask_fn=None"):
        CKA(a, a, progress=False).compute(seq_batches())
    said = SimilarityModel(SeqModel(), "T", ["enc"], mask_fn=None)  # padding meant: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CKA(said, said, progress=False).compute(seq_batches())


def test_feature_size_changing_between_batches_warns():
    a = SimilarityModel(SeqModel(), "T", ["enc"], mask_fn=None)
    bs = seq_batches(5)[:2] + seq_batches(7)[:2]
    with pytest.warns(UserWarning, match=r"'enc': its features per sample changed from 25 to 35"):
        CKA(a, a, progress=False).compute(bs)


def test_first_token_of_a_left_padded_batch_is_refused():
    a = SimilarityModel(SeqModel(), "T", ["enc"], sequence="first")
    with pytest.raises(ValueError, match="marks token 0 as padding.*left-padded"):
        CKA(a, a, progress=False).compute(seq_batches(left=True))
    assert np.isfinite(CKA(a, a, progress=False).compute(seq_batches())).all()  # right padding is fine


def test_a_mask_of_unknown_polarity_is_named_not_used():
    a = SimilarityModel(SeqModel(), "T", ["enc"], sequence="mean")
    with pytest.warns(UserWarning, match=r"\['padding_mask'\].*does not read as a padding mask"):
        CKA(a, a, progress=False).compute(seq_batches(key="padding_mask"))


# ---------------------------------------------------------------- sequence-first outputs with tokens == batch


class SeqFirst(nn.Module):
    """A custom block returning (tokens, batch, features), as code written for
    nn.Transformer's default layout does; here tokens == batch."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(D, D)

    def forward(self, x):  # x: (batch, tokens, features)
        return self.fc(x).transpose(0, 1)


class SeqFirstHost(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.inner = SeqFirst(seed)

    def forward(self, x):
        return self.inner(x)


def square_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.randn(B, 1, D, generator=g) + 0.5 * torch.randn(B, B, D, generator=g) for _ in range(4)]


def test_tokens_equal_to_batch_is_refused_until_the_layout_is_declared():
    xs = square_batches()
    ma, mb = SeqFirstHost(0), SeqFirstHost(1)
    a = SimilarityModel(ma, "A", ["inner"], sequence="mean")
    with pytest.raises(ValueError, match=r"'inner' produced shape \(8, 8, 5\).*cannot tell.*layout='TBD'"):
        CKA(a, a, progress=False).compute(xs)
    a = SimilarityModel(ma, "A", ["inner"], sequence="mean", layout="TBD")
    b = SimilarityModel(mb, "B", ["inner"], sequence="mean", layout={"inner": "TBD"})
    got = CKA(a, b, progress=False).compute(xs)
    with torch.no_grad():
        acts_a = [{"inner": ma.inner.fc(x).mean(1)} for x in xs]  # the real per-sample token mean
        acts_b = [{"inner": mb.inner.fc(x).mean(1)} for x in xs]
    np.testing.assert_allclose(got, ref_grid(acts_a, acts_b, ["inner"], ["inner"]), atol=1e-6)


def test_batch_first_seen_once_settles_later_square_batches():
    class BatchFirst(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = nn.Linear(D, D)

        def forward(self, x):
            return self.fc(x)

    m = BatchFirst()
    a = SimilarityModel(m, "A", ["fc"], sequence="mean")
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(B, 3, D, generator=g), torch.randn(B, B, D, generator=g)]  # (8, 3, ·) then (8, 8, ·)
    assert np.isfinite(CKA(a, a, progress=False, unbiased=False).compute(xs)).all()


def test_torch_sequence_first_modules_are_detected():
    from simtorch.model.sim_model import detect_layout

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=D, nhead=1, dim_feedforward=8, dropout=0.0)  # batch_first=False
    assert detect_layout(layer) == "TBD"
    assert detect_layout(nn.LSTM(D, 4)) == "TBD" and detect_layout(nn.LSTM(D, 4, batch_first=True)) == "BTD"

    class Host(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):  # x: (batch, tokens, d); the layer wants (tokens, batch, d)
            return self.layer(x.transpose(0, 1))

    host = Host().eval()
    sm = SimilarityModel(host, "T", ["layer"], sequence="mean")
    xs = square_batches()  # tokens == batch: only the module's own flag can tell
    got = CKA(sm, sm, progress=False).compute(xs)
    other = SimilarityModel(SeqFirstHost(1), "B", ["inner"], sequence="mean", layout="TBD")
    grid = CKA(sm, other, progress=False).compute(xs)
    with torch.no_grad():
        acts_a = [{"layer": layer(x.transpose(0, 1)).transpose(0, 1).mean(1)} for x in xs]
        acts_b = [{"inner": SeqFirstHost(1).inner.fc(x).mean(1)} for x in xs]
    np.testing.assert_allclose(grid, ref_grid(acts_a, acts_b, ["layer"], ["inner"]), atol=1e-5)
    assert np.isfinite(got).all()
