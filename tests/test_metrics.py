"""Known-answer tests for MIG, DCI and OMES (disentanglement_lib's mig_test / dci_test style):
an identity code scores ~1, constant and random codes ~0, mixed or duplicated codes lower, and
hand-built inputs check closed-form values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import mutual_info_score

from drlcore.analysis import metrics
from drlcore.errors import DrlError
from drlcore.analysis.metrics import associate_dims, compute_dci, compute_mig, compute_omes, dim_names

SIZES = np.array([4, 5, 3, 6])


def sample_factors(rng, n, sizes=SIZES):
    return rng.integers(0, sizes, size=(n, len(sizes)))


def identity_code(rng, factors, noise=1e-3):
    return factors.astype(float) + noise * rng.standard_normal(factors.shape)


def one_factor_pairs(rng, n, sizes):
    """Pairs (f1, f2) that differ in exactly one factor, which is resampled to a new value."""
    f1 = sample_factors(rng, n, sizes)
    changed = rng.integers(0, len(sizes), size=n)
    f2 = f1.copy()
    shift = rng.integers(1, sizes[changed])  # in [1, m): never the same value again
    f2[np.arange(n), changed] = (f1[np.arange(n), changed] + shift) % sizes[changed]
    return f1, f2, changed


# ------------------------------------------------------------------------------------------ MIG


class TestMIG:
    def test_identity_code_scores_one(self, rng):
        factors = sample_factors(rng, 4000)
        result = compute_mig(identity_code(rng, factors), factors)
        assert result["mig"] > 0.95
        assert result["best_dim"] == [0, 1, 2, 3]
        # MI of a code that copies a factor equals that factor's entropy.
        mi = np.asarray(result["mi_matrix"])
        np.testing.assert_allclose(np.diag(mi), result["factor_entropy"], rtol=1e-9)

    def test_constant_code_scores_zero(self, rng):
        factors = sample_factors(rng, 1000)
        result = compute_mig(np.ones((1000, 4)), factors)
        assert result["mig"] == 0.0
        assert np.all(np.asarray(result["mi_matrix"]) == 0.0)

    def test_random_code_scores_near_zero(self, rng):
        factors = sample_factors(rng, 4000)
        result = compute_mig(rng.standard_normal((4000, 4)), factors)
        assert result["mig"] < 0.05

    def test_mixed_code_scores_lower(self, rng):
        factors = sample_factors(rng, 4000)
        identity = compute_mig(identity_code(rng, factors), factors)["mig"]
        code = identity_code(rng, factors)
        code[:, 0] = factors[:, 0] + factors[:, 1]
        mixed = compute_mig(code, factors)["mig"]
        assert mixed < identity - 0.2

    def test_duplicated_code_scores_lower(self, rng):
        factors = sample_factors(rng, 4000)
        code = identity_code(rng, factors)
        duplicated = np.column_stack([code, code[:, 0]])
        result = compute_mig(duplicated, factors)
        # Factor 0 is in two codes: its gap vanishes, the others keep theirs.
        assert result["per_factor"][0] == pytest.approx(0.0, abs=1e-9)
        assert result["mig"] == pytest.approx(np.mean(result["per_factor"][1:]) * 3 / 4)

    def test_closed_form_two_binary_factors(self):
        # Balanced, independent binary factors: H = log 2 and MI(f0, f1) = 0 exactly.
        f0 = np.tile([0, 0, 1, 1], 25)
        f1 = np.tile([0, 1, 0, 1], 25)
        factors = np.column_stack([f0, f1])
        exact = compute_mig(factors.astype(float), factors)
        assert exact["mig"] == pytest.approx(1.0)
        np.testing.assert_allclose(exact["mi_matrix"], [[math.log(2), 0.0], [0.0, math.log(2)]], atol=1e-12)
        # Code 0 and 1 both copy f0: f0's gap is 0, f1's is 1.
        duplicated = compute_mig(np.column_stack([f0, f0, f1]).astype(float), factors)
        assert duplicated["per_factor"] == pytest.approx([0.0, 1.0])
        assert duplicated["mig"] == pytest.approx(0.5)

    def test_mi_matches_sklearn_and_disentanglement_lib_binning(self, rng):
        codes = rng.standard_normal((500, 3))
        factors = sample_factors(rng, 500, np.array([3, 7]))
        result = compute_mig(codes, factors, n_bins=20)
        for j in range(3):
            # disentanglement_lib: np.digitize(x, np.histogram(x, num_bins)[1][:-1])
            binned = np.digitize(codes[:, j], np.histogram(codes[:, j], 20)[1][:-1])
            for k in range(2):
                expected = mutual_info_score(factors[:, k], binned)
                assert result["mi_matrix"][j][k] == pytest.approx(expected, abs=1e-12)

    def test_single_valued_factor_is_excluded(self, rng):
        factors = sample_factors(rng, 2000)
        factors[:, 2] = 7
        result = compute_mig(identity_code(rng, factors), factors)
        assert result["excluded_factors"] == [2]
        assert result["per_factor"][2] is None
        assert result["mig"] > 0.95
        json.dumps(result, allow_nan=False)

    def test_invalid_input_raises_user_error(self, rng):
        factors = sample_factors(rng, 10)
        codes = rng.standard_normal((10, 3))
        codes[3, 1] = np.nan
        with pytest.raises(DrlError, match="NaN"):
            compute_mig(codes, factors)
        with pytest.raises(DrlError, match="rows"):
            compute_mig(rng.standard_normal((9, 3)), factors)
        with pytest.raises(DrlError, match="discrete"):
            compute_mig(rng.standard_normal((10, 3)), factors + 0.5)


# ------------------------------------------------------------------------------------------ DCI


def split(rng, n_train, n_test, encode):
    f_train, f_test = sample_factors(rng, n_train), sample_factors(rng, n_test)
    return encode(f_train), f_train, encode(f_test), f_test


class TestDCI:
    def test_identity_code_scores_one(self, rng):
        result = compute_dci(*split(rng, 600, 300, lambda f: identity_code(rng, f, noise=0.01)))
        assert result["disentanglement"] > 0.9
        assert result["completeness"] > 0.9
        assert result["informativeness_test"] > 0.95
        assert result["informativeness_train"] > 0.95
        importance = np.asarray(result["importance"])
        assert importance.shape == (4, 4)
        assert np.all(np.argmax(importance, axis=0) == np.arange(4))
        json.dumps(result, allow_nan=False)

    def test_constant_code_scores_zero(self, rng):
        result = compute_dci(*split(rng, 400, 200, lambda f: np.zeros((len(f), 4))))
        assert result["disentanglement"] == pytest.approx(0.0, abs=1e-6)
        assert result["completeness"] == pytest.approx(0.0, abs=1e-6)
        # Without information the trees predict the majority class: near chance.
        assert result["informativeness_test"] < 0.45

    def test_random_code_scores_low(self, rng):
        result = compute_dci(*split(rng, 600, 300, lambda f: rng.standard_normal((len(f), 4))))
        assert result["disentanglement"] < 0.2
        assert result["completeness"] < 0.2
        assert result["informativeness_test"] < 0.45

    def test_mixed_code_scores_lower(self, rng):
        def mixed(f):
            code = identity_code(rng, f, noise=0.01)
            # f0 and f1 both live in z0 (invertibly), z1 carries nothing.
            code[:, 0] = 10 * f[:, 0] + f[:, 1]
            code[:, 1] = rng.standard_normal(len(f))
            return code

        result = compute_dci(*split(rng, 600, 300, mixed))
        assert result["disentanglement"] < 0.8
        assert result["informativeness_test"] > 0.9
        importance = np.asarray(result["importance"])
        assert importance[0, 0] > 0.5 and importance[0, 1] > 0.5

    def test_single_valued_factor_is_excluded(self, rng):
        def encode(f):
            f = f.copy()
            f[:, 3] = 2
            return f

        codes_train, f_train, codes_test, f_test = split(rng, 400, 200, lambda f: identity_code(rng, encode(f)))
        result = compute_dci(codes_train, encode(f_train), codes_test, encode(f_test))
        assert result["excluded_factors"] == [3]
        assert result["accuracy_test"][3] is None
        assert result["disentanglement"] > 0.9

    def test_scores_match_reference_formula_on_hand_built_matrices(self):
        scores = metrics._dci_scores
        assert scores(np.eye(3))["disentanglement"] == pytest.approx(1.0)
        assert scores(np.eye(3))["completeness"] == pytest.approx(1.0)
        assert scores(np.ones((3, 3)))["disentanglement"] == pytest.approx(0.0, abs=1e-9)
        # Code 0 splits its importance evenly over both factors; code 1 is unused.
        # D = 0 (the only used code is fully mixed); C = 1 (each factor lives in one code).
        split_code = np.array([[1.0, 1.0], [0.0, 0.0]])
        assert scores(split_code)["disentanglement"] == pytest.approx(0.0, abs=1e-9)
        assert scores(split_code)["completeness"] == pytest.approx(1.0, abs=1e-9)
        # disentanglement_lib's formulas with scipy's entropy, on an arbitrary matrix.
        importance = np.random.default_rng(3).random((5, 3))
        d_per_code = 1 - scipy.stats.entropy(importance.T + 1e-11, base=3)
        c_per_factor = 1 - scipy.stats.entropy(importance + 1e-11, base=5)
        d = np.sum(d_per_code * importance.sum(axis=1) / importance.sum())
        c = np.sum(c_per_factor * importance.sum(axis=0) / importance.sum())
        assert scores(importance)["disentanglement"] == pytest.approx(d)
        assert scores(importance)["completeness"] == pytest.approx(c)

    def test_deterministic_for_a_seed(self, rng):
        data = split(rng, 300, 100, lambda f: f + rng.standard_normal(f.shape))
        assert compute_dci(*data, seed=4)["importance"] == compute_dci(*data, seed=4)["importance"]

    def test_mismatched_shapes_raise_user_error(self, rng):
        codes_train, f_train, codes_test, f_test = split(rng, 50, 20, lambda f: identity_code(rng, f))
        with pytest.raises(DrlError, match="dims"):
            compute_dci(codes_train, f_train, codes_test[:, :2], f_test)


# ------------------------------------------------------------------------------------------ OMES


class TestOMES:
    def test_relation_of_a_continuous_identity_code_is_identity(self, rng):
        # Continuous factors, so a copying dim decorrelates fully (rho ~ 0, R ~ 1) and the dims
        # left alone stay exactly equal (rho = 1, R = 0).
        n, k = 3000, 4
        z1 = rng.standard_normal((n, k))
        changed = rng.integers(0, k, size=n)
        z2 = z1.copy()
        z2[np.arange(n), changed] = rng.standard_normal(n)
        result = compute_omes(z1, z2, changed, num_factors=k)
        np.testing.assert_allclose(result["R"], np.eye(k), atol=0.1)
        assert result["omes"] > 0.9
        assert result["inactive_dims"] == []

    def test_identity_code_on_discrete_factors(self, rng):
        sizes = np.array([20, 25, 30])
        f1, f2, changed = one_factor_pairs(rng, 3000, sizes)
        result = compute_omes(identity_code(rng, f1), identity_code(rng, f2), changed, num_factors=3)
        # A copied factor with m values gives rho = -1/(m-1), so R = 1 - 1/(m-1).
        np.testing.assert_allclose(np.diag(result["R"]), 1 - 1 / (sizes - 1), atol=0.05)
        assert result["omes"] > 0.9

    def test_binary_factor_is_invisible(self, rng):
        # Documented limitation shared with the reference: a flipped binary value is perfectly
        # anti-correlated, so R = 1 - |-1| = 0.
        sizes = np.array([2, 20])
        f1, f2, changed = one_factor_pairs(rng, 1000, sizes)
        result = compute_omes(f1.astype(float), f2.astype(float), changed, num_factors=2)
        assert result["R"][0][0] == pytest.approx(0.0, abs=1e-9)
        assert result["per_factor"][0] == 0.0

    def test_constant_code_scores_zero(self, rng):
        f1, f2, changed = one_factor_pairs(rng, 500, SIZES)
        result = compute_omes(np.zeros((500, 4)), np.zeros((500, 4)), changed, num_factors=4)
        assert result["omes"] == 0.0
        assert result["inactive_dims"] == [0, 1, 2, 3]
        assert all(row == [None] * 4 for row in result["R"])

    def test_random_code_scores_low(self, rng):
        f1, f2, changed = one_factor_pairs(rng, 2000, np.array([20, 20, 20, 20]))
        result = compute_omes(rng.standard_normal((2000, 4)), rng.standard_normal((2000, 4)), changed, 4)
        # Every dim moves with every factor: R ~ 1 everywhere, O = M ~ 1/4.
        assert result["omes"] == pytest.approx(0.25, abs=0.05)

    def test_mixed_and_duplicated_codes_score_lower(self, rng):
        sizes = np.array([20, 20, 20])
        f1, f2, changed = one_factor_pairs(rng, 3000, sizes)
        identity_result = compute_omes(identity_code(rng, f1), identity_code(rng, f2), changed, 3)
        identity = identity_result["omes"]

        def mix(f):
            code = identity_code(rng, f)
            code[:, 0] = f[:, 0] + f[:, 1]
            return code

        mixed = compute_omes(mix(f1), mix(f2), changed, 3)
        assert mixed["omes"] < identity - 0.1
        duplicated = compute_omes(
            np.column_stack([identity_code(rng, f1), f1[:, 0]]),
            np.column_stack([identity_code(rng, f2), f2[:, 0]]),
            changed,
            3,
        )
        # Factor 0 now lives in two dims: multiple encoding drops, overlap does not.
        assert duplicated["multiple_per_factor"][0] < identity_result["multiple_per_factor"][0] - 0.15
        assert duplicated["overlap_per_factor"][0] == pytest.approx(identity_result["overlap_per_factor"][0], abs=0.05)
        assert duplicated["per_factor"][0] < identity_result["per_factor"][0] - 0.05

    def test_closed_form_on_hand_built_relations(self):
        # One dim encodes factor 0, one dim encodes nothing: factor 0 perfect, factor 1 absent.
        o, m, o_pool, m_pool = metrics._omes_from_relation(np.array([[1.0, 0.0], [0.0, 0.0]]))
        np.testing.assert_allclose(o, [[1.0, 0.0], [0.5, 0.5]])
        np.testing.assert_allclose(m, [[1.0, 0.5], [0.0, 0.5]])
        np.testing.assert_allclose(o_pool, [1.0, 0.0])
        np.testing.assert_allclose(m_pool, [1.0, 0.0])
        # One dim encodes both factors: O = 1/2 (overlap), M = 1 (single dim) -> S = 3/4 each.
        o, m, o_pool, m_pool = metrics._omes_from_relation(np.array([[1.0, 1.0]]))
        np.testing.assert_allclose(o_pool, [0.5, 0.5])
        np.testing.assert_allclose(m_pool, [1.0, 1.0])

    def test_omes_of_hand_built_pairs_matches_closed_form(self, rng):
        # z0 copies continuous factor 0, z1 never moves (but is active): R = [[1, 0], [0, 0]]
        # approximately, so S_0 ~ 1, S_1 = 0 and OMES ~ 0.5 (alpha = 0.5).
        n = 4000
        z1 = np.column_stack([rng.standard_normal(n), rng.standard_normal(n)])
        changed = np.repeat([0, 1], n // 2)
        z2 = z1.copy()
        z2[changed == 0, 0] = rng.standard_normal(n // 2)
        result = compute_omes(z1, z2, changed, num_factors=2)
        assert result["R"][1] == [0.0, 0.0]
        assert result["per_factor"][1] == 0.0
        assert result["omes"] == pytest.approx(0.5, abs=0.03)

    def test_inactive_dim_is_dropped(self, rng):
        sizes = np.array([20, 20])
        f1, f2, changed = one_factor_pairs(rng, 2000, sizes)
        base = compute_omes(identity_code(rng, f1), identity_code(rng, f2), changed, 2)
        padded = compute_omes(
            np.column_stack([identity_code(rng, f1), np.full(2000, 3.0)]),
            np.column_stack([identity_code(rng, f2), np.full(2000, 3.0) + 1e-3 * rng.standard_normal(2000)]),
            changed,
            2,
        )
        assert padded["inactive_dims"] == [2]
        assert padded["R"][2] == [None, None]
        assert padded["omes"] == pytest.approx(base["omes"], abs=0.02)
        json.dumps(padded, allow_nan=False)

    def test_factor_without_pairs_is_reported(self, rng):
        f1, f2, changed = one_factor_pairs(rng, 1000, np.array([20, 20]))
        result = compute_omes(f1.astype(float), f2.astype(float), changed, num_factors=3)
        assert result["missing_factors"] == [2]
        assert result["per_factor"][2] is None
        assert result["n_pairs"][2] == 0

    def test_alpha_weights_overlap_and_multiple(self, rng):
        f1, f2, changed = one_factor_pairs(rng, 1000, np.array([20, 20]))
        code1 = np.column_stack([f1[:, 0] + f1[:, 1], f1[:, 1]]).astype(float)
        code2 = np.column_stack([f2[:, 0] + f2[:, 1], f2[:, 1]]).astype(float)
        only_overlap = compute_omes(code1, code2, changed, 2, alpha=1.0)
        only_multiple = compute_omes(code1, code2, changed, 2, alpha=0.0)
        assert only_overlap["per_factor"] == pytest.approx(only_overlap["overlap_per_factor"])
        assert only_multiple["per_factor"] == pytest.approx(only_multiple["multiple_per_factor"])

    def test_invalid_input_raises_user_error(self, rng):
        z = rng.standard_normal((10, 2))
        with pytest.raises(DrlError, match="same shape"):
            compute_omes(z, z[:, :1], np.zeros(10, dtype=int), 2)
        with pytest.raises(DrlError, match=r"\[0, 2\)"):
            compute_omes(z, z, np.full(10, 2), 2)


# ------------------------------------------------------------------------------------------ naming


class TestDimNames:
    NAMES = ["shape", "scale", "orientation"]

    def test_names_follow_the_strongest_factor(self):
        relation = np.array(
            [
                [0.05, 0.90, 0.00],  # scale
                [0.00, 0.00, 0.00],  # encodes nothing
                [0.70, 0.00, 0.65],  # two factors almost equally
                [np.nan, np.nan, np.nan],  # inactive (NaN row)
                [0.10, 0.05, 0.40],  # orientation, weakly but clearly
            ]
        )
        assert associate_dims(relation, self.NAMES) == ["scale", None, None, None, "orientation"]
        assert dim_names(relation, self.NAMES) == [
            "z0: scale",
            "z1: unassigned",
            "z2: mixed (shape+orientation)",
            "z3: inactive",
            "z4: orientation",
        ]

    def test_listed_inactive_dims_and_none_rows(self):
        relation = [[0.9, 0.0, 0.0], [None, None, None], [0.0, 0.0, 0.8]]
        assert dim_names(relation, self.NAMES, inactive=[2]) == ["z0: shape", "z1: inactive", "z2: inactive"]

    def test_works_on_omes_output(self, rng):
        sizes = np.array([20, 20, 20])
        f1, f2, changed = one_factor_pairs(rng, 2000, sizes)
        code1 = np.column_stack([f1[:, 2], f1[:, 0], np.zeros(2000)]).astype(float)
        code2 = np.column_stack([f2[:, 2], f2[:, 0], np.zeros(2000)]).astype(float)
        result = compute_omes(code1, code2, changed, 3)
        assert dim_names(result["R"], self.NAMES, result["inactive_dims"]) == [
            "z0: orientation",
            "z1: shape",
            "z2: inactive",
        ]

    def test_shape_mismatch_raises_user_error(self):
        with pytest.raises(DrlError, match="factor names"):
            associate_dims(np.zeros((2, 2)), self.NAMES)
