"""Symmetric noise: both conventions, both sampling modes, seeding, transition matrix."""
from __future__ import annotations

import numpy as np
import pytest

from noisybench.errors import ConfigError
from noisybench.noise import transition_matrix
from noisybench.noise.none import NoNoise
from noisybench.noise.symmetric import SymmetricNoise

N, K = 20000, 10


@pytest.fixture
def labels():
    return np.random.default_rng(123).integers(0, K, N)


def within_binomial(observed: float, p: float, n: int, sigmas: float = 4.0) -> bool:
    return abs(observed - p) <= sigmas * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.8])
def test_inclusive_realised_rate_is_rate_times_k_minus_1_over_k(labels, rate):
    noisy = SymmetricNoise(rate, include_true_class=True, seed=1)(labels, K)
    assert within_binomial(np.mean(noisy != labels), rate * (K - 1) / K, N)


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.8])
def test_exclusive_realised_rate_is_nominal(labels, rate):
    noisy = SymmetricNoise(rate, include_true_class=False, seed=1)(labels, K)
    assert within_binomial(np.mean(noisy != labels), rate, N)


def test_wrong_labels_are_uniform_over_other_classes(labels):
    noisy = SymmetricNoise(0.6, include_true_class=False, seed=2)(labels, K)
    counts, T = transition_matrix(labels, noisy, K)
    off = T[~np.eye(K, dtype=bool)]
    assert np.allclose(off, 0.6 / (K - 1), atol=0.015)
    assert np.allclose(np.diag(T), 0.4, atol=0.03)
    assert np.allclose(T.sum(1), 1.0) and counts.sum() == N


def test_exact_mode_changes_exactly_round_rate_n(labels):
    noisy = SymmetricNoise(0.37, include_true_class=False, sampling="exact", seed=3)(labels, K)
    assert int(np.sum(noisy != labels)) == round(0.37 * N)


def test_exact_inclusive_selects_exact_count_some_keep_their_label(labels):
    noisy = SymmetricNoise(0.5, include_true_class=True, sampling="exact", seed=3)(labels, K)
    changed = int(np.sum(noisy != labels))
    assert changed < 0.5 * N and within_binomial(changed / (0.5 * N), (K - 1) / K, int(0.5 * N))


def test_binary_exclusive_is_a_plain_flip():
    y = np.random.default_rng(0).integers(0, 2, 5000)
    noisy = SymmetricNoise(0.3, include_true_class=False, seed=0)(y, 2)
    changed = noisy != y
    assert np.all(noisy[changed] == 1 - y[changed])


def test_same_seed_same_labels_other_seed_other_labels(labels):
    a = SymmetricNoise(0.4, seed=7)(labels, K)
    b = SymmetricNoise(0.4, seed=7)(labels, K)
    c = SymmetricNoise(0.4, seed=8)(labels, K)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_noise_ignores_global_rng(labels):
    np.random.seed(0)
    a = SymmetricNoise(0.4, seed=7)(labels, K)
    np.random.seed(999)
    b = SymmetricNoise(0.4, seed=7)(labels, K)
    assert np.array_equal(a, b)


def test_zero_rate_changes_nothing(labels):
    assert np.array_equal(SymmetricNoise(0.0, seed=1)(labels, K), labels)
    assert np.array_equal(NoNoise()(labels, K), labels)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_rate_outside_unit_interval_rejected(rate):
    with pytest.raises(ConfigError, match=r"noise.rate"):
        SymmetricNoise(rate)


def test_bad_sampling_and_none_with_rate_rejected():
    with pytest.raises(ConfigError, match="sampling"):
        SymmetricNoise(0.2, sampling="sometimes")
    with pytest.raises(ConfigError, match="noise=symmetric"):
        NoNoise(rate=0.3)


def test_transition_matrix_counts():
    clean = np.array([0, 0, 1, 1, 1, 2])
    noisy = np.array([0, 1, 1, 1, 0, 2])
    counts, T = transition_matrix(clean, noisy, 4)
    assert counts.tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert np.allclose(T[1], [1 / 3, 2 / 3, 0, 0]) and np.all(T[3] == 0)
