"""simtorch.metrics.accumulate: grouped float64 sums (grouping, pairwise merging, totals,
leave-one-out, extras) and the delete-one-group jackknife, directly and through CKA's
standard error against a leave-one-batch-out recomputation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from models import DEEP_LAYERS_A, DEEP_LAYERS_B, deep_cka, deep_mlp, lowrank_batches
from simtorch import CKA, SimilarityModel
from simtorch.engine import stream
from simtorch.metrics import CKAMetric
from simtorch.metrics.accumulate import GroupedSums, jackknife
from simtorch.runner import build_result

CPU = torch.device("cpu")
LAYERS_A, LAYERS_B = DEEP_LAYERS_A, DEEP_LAYERS_B

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def jackknife_se(thetas: np.ndarray) -> np.ndarray:
    """se = sqrt((G−1)/G · Σ_g (θ₋g − θ̄)²), written out here independently of simtorch."""
    g = thetas.shape[0]
    mean = thetas.mean(axis=0)
    return np.sqrt((g - 1) / g * ((thetas - mean) ** 2).sum(axis=0))


def powers(n: int, max_groups: int) -> GroupedSums:
    """Batch k adds 2**k to ``x`` (so every group sum says exactly which batches it holds),
    k to ``k`` and 1 to ``one``."""
    sums = GroupedSums({"x": (), "k": (2,), "one": ()}, CPU, max_groups)
    for k in range(n):
        sums.add(x=torch.tensor(2.0**k, dtype=torch.float64), k=torch.tensor([k, -k], dtype=torch.float64),
                 one=torch.tensor(1.0, dtype=torch.float64))
    return sums


def members(value: float) -> list[int]:
    """The batches k whose 2**k make up ``value``."""
    v = int(value)
    assert v == value
    return [k for k in range(v.bit_length()) if v >> k & 1]


# ---------------------------------------------------------------- GroupedSums


def test_max_groups_4_over_10_batches_gives_contiguous_groups():
    sums = powers(10, 4)
    # after 4 batches pairs merge (block 2), after 8 again (block 4): [0-3], [4-7], [8-9]
    assert sums.block == 4 and sums.count == 10 and sums.n_groups == 3
    assert [members(v) for v in sums.groups("x").tolist()] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert sums.groups("x").tolist() == [15.0, 240.0, 768.0]  # exact sums
    assert sums.groups("k").tolist() == [[6.0, -6.0], [22.0, -22.0], [17.0, -17.0]]
    assert sums.groups("one").tolist() == [4.0, 4.0, 2.0]
    assert sums.total("x").item() == 2.0**10 - 1 and sums.total("k").tolist() == [45.0, -45.0]
    # the unused slots stay zero (an all-reduce sums them too)
    assert torch.count_nonzero(sums.buf["x"][3:]) == 0


@pytest.mark.parametrize("n", range(1, 18))
def test_groups_stay_contiguous_equal_and_bounded(n):
    sums = powers(n, 4)
    got = [members(v) for v in sums.groups("x").tolist()]
    assert sum(got, []) == list(range(n))  # every batch once, in order
    assert len(got) <= 4
    assert all(len(g) == sums.block for g in got[:-1]) and 1 <= len(got[-1]) <= sums.block


def test_one_group_per_batch_while_there_are_at_most_max_groups():
    sums = powers(6, 6)
    assert sums.block == 1 and sums.n_groups == 6
    assert sums.groups("x").tolist() == [2.0**k for k in range(6)]
    sums.add(x=torch.tensor(64.0, dtype=torch.float64), k=torch.zeros(2, dtype=torch.float64),
             one=torch.tensor(1.0, dtype=torch.float64))
    assert sums.block == 2 and [members(v) for v in sums.groups("x").tolist()] == [[0, 1], [2, 3], [4, 5], [6]]


def test_leave_one_out_is_total_minus_each_group():
    sums = powers(10, 4)
    loo = sums.leave_one_out()
    assert loo["x"].tolist() == [1023.0 - 15, 1023.0 - 240, 1023.0 - 768]
    assert loo["k"].shape == (3, 2) and loo["k"][:, 0].tolist() == [39.0, 23.0, 28.0]
    assert set(sums.totals()) == {"x", "k", "one"}


def test_extras_keep_totals_groups_and_batches_per_group():
    ex = powers(10, 4).extras("t")
    assert set(ex) == {"t_x", "t_k", "t_one", "t_groups_x", "t_groups_k", "t_groups_one", "t_group_batches"}
    assert all(isinstance(v, np.ndarray) for v in ex.values())
    assert ex["t_x"] == 1023.0 and ex["t_groups_x"].tolist() == [15.0, 240.0, 768.0]
    assert ex["t_groups_k"].shape == (3, 2) and ex["t_groups_k"].dtype == np.float64
    assert ex["t_group_batches"].tolist() == [4, 4, 2] and ex["t_group_batches"].dtype == np.int64
    assert set(powers(3, 4).extras()) >= {"hsic_x", "hsic_groups_x", "hsic_group_batches"}  # default prefix


def test_state_tensors_in_a_fixed_order():
    sums = powers(5, 4)
    assert [t.data_ptr() for t in sums.state_tensors()] == [sums.buf[k].data_ptr() for k in ("k", "one", "x")]


@pytest.mark.parametrize("bad", [0, 1, 3, 7])
def test_max_groups_must_be_even_and_at_least_2(bad):
    with pytest.raises(ValueError, match="even number"):
        GroupedSums({"x": ()}, CPU, bad)


# ---------------------------------------------------------------- jackknife, directly


def mean_sums(values: list[list[float]], max_groups: int = 64) -> GroupedSums:
    """Per batch: the sum of its values and its count, for the estimator 'mean'."""
    sums = GroupedSums({"s": (), "n": ()}, CPU, max_groups)
    for v in values:
        sums.add(s=torch.tensor(sum(v), dtype=torch.float64), n=torch.tensor(float(len(v)), dtype=torch.float64))
    return sums


def mean(t: dict[str, torch.Tensor]) -> torch.Tensor:
    return t["s"] / t["n"]


BATCHES = [[1.0, 2.0], [4.0], [0.5, 0.5, 3.0], [10.0, -2.0], [7.0], [2.5, 2.5]]


def test_jackknife_of_the_mean_by_hand():
    se = jackknife(mean, mean_sums(BATCHES)).item()
    # delete-one-group means, written out
    flat = [x for b in BATCHES for x in b]
    loo = np.array([(sum(flat) - sum(b)) / (len(flat) - len(b)) for b in BATCHES])
    want = np.sqrt(5 / 6 * ((loo - loo.mean()) ** 2).sum())
    assert se == pytest.approx(want, rel=1e-12)
    assert se != pytest.approx(loo.std(), rel=1e-3)  # not the naive spread of the θ₋g


def test_jackknife_of_equal_groups_is_the_standard_error_of_the_mean():
    # with one value per group the jackknife of the mean is exactly std(ddof=1) / sqrt(G)
    values = [3.0, -1.0, 4.0, 1.5, 9.0, 2.0, 6.5, 0.0]
    se = jackknife(mean, mean_sums([[v] for v in values])).item()
    assert se == pytest.approx(np.std(values, ddof=1) / np.sqrt(len(values)), rel=1e-12)


def test_jackknife_deletes_merged_groups():
    values = [[float(k), float(k * k % 7)] for k in range(10)]
    se = jackknife(mean, mean_sums(values, max_groups=4)).item()
    flat = [x for b in values for x in b]
    groups = [range(0, 4), range(4, 8), range(8, 10)]
    loo = np.array([np.mean([x for k, b in enumerate(values) if k not in g for x in b]) for g in groups])
    assert se == pytest.approx(jackknife_se(loo), rel=1e-12)
    per_batch = np.array([(sum(flat) - sum(b)) / (len(flat) - 2) for b in values])
    assert se != pytest.approx(jackknife_se(per_batch), rel=1e-3)  # the groups, not the batches


def test_jackknife_broadcasts_over_a_grid_and_is_nan_below_two_groups():
    sums = GroupedSums({"s": (2, 3), "n": (1, 1)}, CPU, 8)
    g = torch.Generator().manual_seed(0)
    cells = [torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(5)]
    for c in cells:
        sums.add(s=c, n=torch.ones(1, 1, dtype=torch.float64))
    se = jackknife(mean, sums)
    assert se.shape == (2, 3)
    want = np.std(torch.stack(cells).numpy(), axis=0, ddof=1) / np.sqrt(5)
    np.testing.assert_allclose(se.numpy(), want, rtol=1e-12)
    assert torch.isnan(jackknife(mean, mean_sums([[1.0, 2.0]]))).all()  # one group: no spread to measure
    assert torch.isnan(jackknife(mean, mean_sums([]))).all()


# ---------------------------------------------------------------- through CKA's standard error


@pytest.mark.parametrize("unbiased", [True, False])
def test_jackknife_matches_leave_one_batch_out(unbiased):
    data = lowrank_batches(6, 12, seed=3)
    full = deep_cka(data, unbiased=unbiased)
    loo = np.stack([deep_cka(data[:g] + data[g + 1 :], unbiased=unbiased).matrix for g in range(len(data))])
    want = jackknife_se(loo)
    assert np.all(want > 1e-4)  # a real spread, so the comparison means something
    np.testing.assert_allclose(full.stderr, want, rtol=1e-9, atol=1e-12)
    # and it is not some other spread, e.g. the naive std of the leave-one-out values
    assert not np.allclose(full.stderr, loo.std(axis=0), rtol=1e-3)


def test_jackknife_rbf_kernel():
    data = lowrank_batches(5, 10, seed=4)
    full = deep_cka(data, kernel="rbf")
    loo = np.stack([deep_cka(data[:g] + data[g + 1 :], kernel="rbf").matrix for g in range(len(data))])
    np.testing.assert_allclose(full.stderr, jackknife_se(loo), rtol=1e-9, atol=1e-12)


def test_jackknife_over_more_batches_than_groups_deletes_contiguous_groups():
    # the default keeps ≤ 64 groups; with max_groups=4 the same merging shows on 10 batches:
    # after 4 batches pairs merge, after 8 again, leaving groups [0-3], [4-7], [8-9]
    data = lowrank_batches(10, 6, seed=5)
    metric = CKAMetric(max_groups=4)
    a = SimilarityModel(deep_mlp(0), "A", LAYERS_A)
    b = SimilarityModel(deep_mlp(1), "B", LAYERS_B)
    stream(a, b, data, [metric], "cpu", progress=False)
    full = build_result(metric, a, b)
    groups = [range(0, 4), range(4, 8), range(8, 10)]
    loo = np.stack([deep_cka([b for i, b in enumerate(data) if i not in g]).matrix for g in groups])
    np.testing.assert_allclose(full.matrix, deep_cka(data).matrix, rtol=0, atol=1e-12)
    np.testing.assert_allclose(full.stderr, jackknife_se(loo), rtol=1e-9, atol=1e-12)
    assert full.extras["hsic_group_batches"].tolist() == [4, 4, 2]


def test_single_batch_has_no_standard_error():
    res = deep_cka(lowrank_batches(1, 20))
    assert np.isnan(res.stderr).all() and np.isfinite(res.matrix).all()


def test_skipped_batch_does_not_count_as_a_group():
    data = lowrank_batches(4, 10, seed=6) + [torch.randn(3, 12)]  # a last batch of 3: skipped (n < 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        full = deep_cka(data)
    assert full.n_skipped == 1 and full.n_batches == 4
    loo = np.stack([deep_cka(data[:g] + data[g + 1 : 4]).matrix for g in range(4)])
    np.testing.assert_allclose(full.stderr, jackknife_se(loo), rtol=1e-9, atol=1e-12)
