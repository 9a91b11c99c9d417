"""Tests of fl.partition: sizes, coverage, class histograms, determinism, and agreement with
slow literal references of the papers' procedures (FedPM's split_image_data, Flower's
sequential LDA sampler)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fl.partition as part
from fl.partition import (class_histogram, classes_per_client, contiguous_shards,
                          dirichlet_equal_size, holdout_split, iid, natural_writers)
from sparsecodec.errors import ConfigError

SETTINGS = settings(max_examples=50, deadline=None)


def assert_disjoint_cover(parts, n_samples):
    """Every index in [0, n_samples) appears in exactly one part; parts are sorted int64."""
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)
    joined = np.concatenate(parts) if parts else np.empty(0, np.int64)
    assert np.array_equal(np.sort(joined), np.arange(n_samples))


def balanced_labels(n_classes, per_class, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(n_classes), per_class))


# --------------------------------------------------------------------------- literal references

def reference_split_image_data(labels, n_clients, c, rng):
    """FedPM's split_image_data / clients_rand (sparse-random-networks, get_split_dataset.py)
    transcribed line by line with Python lists, np.random replaced by ``rng``. Also returns,
    per client, whether some take was cut short by an exhausted class."""
    n_data, n_labels = len(labels), int(np.max(labels)) + 1
    client_tmp = rng.integers(10, 100, n_clients)
    clients_dist = np.floor((client_tmp / np.sum(client_tmp)) * n_data).astype(int)
    data_per_client = list(clients_dist)
    data_per_client[-1] += n_data - clients_dist.sum()
    data_per_client_per_class = [max(1, nd // c) for nd in data_per_client]
    data_idcs = [[] for _ in range(n_labels)]
    for j, label in enumerate(labels):
        data_idcs[label] += [j]
    for idcs in data_idcs:
        rng.shuffle(idcs)
    clients, truncated = [], []
    for i in range(n_clients):
        client_idcs, budget, cut = [], data_per_client[i], False
        cls = rng.integers(n_labels)
        while budget > 0:
            take = min(data_per_client_per_class[i], len(data_idcs[cls]), budget)
            cut |= take < min(data_per_client_per_class[i], budget)
            client_idcs += data_idcs[cls][:take]
            data_idcs[cls] = data_idcs[cls][take:]
            budget -= take
            cls = (cls + 1) % n_labels
        clients.append(sorted(client_idcs))
        truncated.append(cut)
    return clients, data_per_client, truncated


def reference_lda_counts(proportions, remaining, n_draw, rng):
    """Flower's sample_without_replacement, one class draw at a time."""
    counts = np.zeros(len(remaining), dtype=np.int64)
    for _ in range(n_draw):
        open_ = counts < remaining
        law = np.where(open_, proportions + part.LDA_EPS, 0.0)
        counts[rng.choice(len(law), p=law / law.sum())] += 1
    return counts


# --------------------------------------------------------------------------- iid / shards

@SETTINGS
@given(n=st.integers(1, 500), k=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_iid_sizes_and_coverage(n, k, seed):
    if k > n:
        with pytest.raises(ConfigError):
            iid(n, k, np.random.default_rng(seed))
        return
    parts = iid(n, k, np.random.default_rng(seed))
    assert len(parts) == k
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert_disjoint_cover(parts, n)


def test_iid_determinism_and_randomness():
    a = iid(1000, 10, np.random.default_rng(5))
    b = iid(1000, 10, np.random.default_rng(5))
    c = iid(1000, 10, np.random.default_rng(6))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert not np.array_equal(a[0], np.arange(100))   # actually shuffled


def test_contiguous_shards_flare():
    parts = contiguous_shards(60000, 10, 600)
    for i, p in enumerate(parts):
        assert np.array_equal(p, np.arange(600 * i, 600 * (i + 1)))
    assert [len(p) for p in contiguous_shards(10, 3)] == [3, 3, 3]   # default shard n // k
    with pytest.raises(ConfigError):
        contiguous_shards(5999, 10, 600)
    with pytest.raises(ConfigError):
        contiguous_shards(100, 0, 10)


# --------------------------------------------------------------------------- Dirichlet / LDA

@SETTINGS
@given(n_classes=st.integers(1, 6), n=st.integers(1, 300), k=st.integers(1, 12),
       alpha=st.sampled_from([0.01, 0.1, 1.0, 1000.0]), seed=st.integers(0, 2**32 - 1))
def test_dirichlet_sizes_and_coverage(n_classes, n, k, alpha, seed):
    labels = np.random.default_rng(seed).integers(0, n_classes, n)
    if k > n:
        with pytest.raises(ConfigError):
            dirichlet_equal_size(labels, k, alpha, np.random.default_rng(seed))
        return
    parts = dirichlet_equal_size(labels, k, alpha, np.random.default_rng(seed))
    assert [len(p) for p in parts] == [n // k + (i < n % k) for i in range(k)]
    assert_disjoint_cover(parts, n)


def test_dirichlet_alpha_controls_concentration():
    labels = balanced_labels(10, 500)
    shares = {}
    for alpha in (0.1, 1000.0):
        parts = dirichlet_equal_size(labels, 50, alpha, np.random.default_rng(1337))
        hist = class_histogram(labels, parts, 10)
        shares[alpha] = (hist.max(axis=1) / hist.sum(axis=1)).mean()
    # Dir(0.1 * 1_10): the largest of 10 proportions is about 0.6 on average; with
    # alpha = 1000 each client is a near-uniform multinomial of 100 draws (top share ~0.18).
    assert shares[0.1] > 0.5
    assert shares[1000.0] < 0.25


def test_dirichlet_determinism():
    labels = balanced_labels(10, 100)
    a = dirichlet_equal_size(labels, 10, 0.5, np.random.default_rng(3))
    b = dirichlet_equal_size(labels, 10, 0.5, np.random.default_rng(3))
    c = dirichlet_equal_size(labels, 10, 0.5, np.random.default_rng(4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_dirichlet_rejects_bad_alpha():
    for alpha in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError):
            dirichlet_equal_size(np.zeros(10, np.int64), 2, alpha, np.random.default_rng(0))


@pytest.mark.parametrize("proportions, remaining, n_draw", [
    ([0.5, 0.3, 0.2, 0.0], [30, 20, 100, 0], 60),      # class 0 runs out about half the time
    ([0.6, 0.3, 0.1, 0.0], [5, 100, 100, 100], 60),    # class 0 always runs out; class 3 only eps
])
def test_lda_block_sampler_matches_sequential_law(proportions, remaining, n_draw):
    """The block sampler and Flower's one-at-a-time sampler have the same distribution:
    over 400 seeded trials each, the mean count of every class agrees within 5 standard
    errors, and the hard constraints hold in every trial."""
    proportions, remaining = np.array(proportions), np.array(remaining)
    trials = 400
    fast = np.array([part._lda_class_counts(proportions, remaining, n_draw, np.random.default_rng(s))
                     for s in range(trials)])
    slow = np.array([reference_lda_counts(proportions, remaining, n_draw, np.random.default_rng(10**6 + s))
                     for s in range(trials)])
    for counts in (fast, slow):
        assert np.all(counts.sum(axis=1) == n_draw)
        assert np.all(counts <= remaining)
    stderr = np.sqrt((fast.var(axis=0) + slow.var(axis=0)) / trials)
    assert np.all(np.abs(fast.mean(axis=0) - slow.mean(axis=0)) <= 5 * stderr + 1e-12)


# --------------------------------------------------------------------------- c classes per client

@SETTINGS
@given(n_classes=st.integers(1, 8), n=st.integers(1, 400), k=st.integers(1, 20),
       c=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_classes_per_client_matches_fedpm_code(n_classes, n, k, c, seed):
    labels = np.random.default_rng(seed).integers(0, n_classes, n)
    if k > n:
        with pytest.raises(ConfigError):
            classes_per_client(labels, k, c, np.random.default_rng(seed))
        return
    parts = classes_per_client(labels, k, c, np.random.default_rng(seed))
    expected, sizes, _ = reference_split_image_data(labels, k, c, np.random.default_rng(seed))
    assert [p.tolist() for p in parts] == expected
    assert [len(p) for p in parts] == sizes
    assert_disjoint_cover(parts, n)


def test_classes_per_client_histograms():
    labels = balanced_labels(10, 1000)
    c = 2
    parts = classes_per_client(labels, 50, c, np.random.default_rng(0))
    _, sizes, truncated = reference_split_image_data(labels, 50, c, np.random.default_rng(0))
    hist = class_histogram(labels, parts, 10)
    checked = 0
    for row, size, cut in zip(hist, sizes, truncated):
        if cut or size < c * c:
            continue   # met an exhausted class (or chunks smaller than c): more classes, by design
        checked += 1
        # c classes in chunks of size // c, plus the size % c (< c) leftover from one more class
        assert sorted(row[row >= c].tolist()) == [size // c] * c
        assert row[row < c].sum() == size % c and (row > 0).sum() <= c + 1
    assert checked >= 1
    top_c_share = np.sort(hist, axis=1)[:, -c:].sum(axis=1) / hist.sum(axis=1)
    assert top_c_share.mean() > 0.9          # pathological non-IID (IID would give ~0.2)


def test_classes_per_client_determinism():
    labels = balanced_labels(10, 100)
    a = classes_per_client(labels, 20, 2, np.random.default_rng(9))
    b = classes_per_client(labels, 20, 2, np.random.default_rng(9))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ConfigError):
        classes_per_client(labels, 20, 0, np.random.default_rng(9))
    with pytest.raises(ConfigError):
        classes_per_client(labels.astype(float), 20, 2, np.random.default_rng(9))


# --------------------------------------------------------------------------- writers, holdout

def test_natural_writers():
    writers = np.random.default_rng(0).integers(0, 30, 1000)
    parts = natural_writers(writers)
    assert len(parts) == len(np.unique(writers))
    assert_disjoint_cover(parts, 1000)
    for writer, p in zip(np.unique(writers), parts):
        assert np.all(writers[p] == writer)


@SETTINGS
@given(n=st.integers(0, 300), fraction=st.floats(0.0, 0.99), seed=st.integers(0, 2**32 - 1))
def test_holdout_split(n, fraction, seed):
    indices = np.random.default_rng(seed).permutation(10 * n)[:n]
    train, val = holdout_split(indices, fraction, np.random.default_rng(seed))
    assert len(val) == int(fraction * n)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.sort(indices))


def test_holdout_split_rejects_bad_fraction():
    with pytest.raises(ConfigError):
        holdout_split(np.arange(10), 1.0, np.random.default_rng(0))


def test_class_histogram_counts():
    labels = np.array([0, 0, 1, 2, 2, 2])
    hist = class_histogram(labels, [np.array([0, 3]), np.array([1, 2, 4, 5])], num_classes=4)
    assert hist.tolist() == [[1, 0, 1, 0], [1, 1, 2, 0]]


def test_doctests():
    assert doctest.testmod(part, raise_on_error=False).failed == 0
