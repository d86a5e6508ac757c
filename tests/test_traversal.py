import numpy as np
import pandas as pd
import pytest

from drlcore.analysis.compare import cohens_d, effect_sizes
from drlcore.errors import DrlError
from drlcore.analysis.traversal import traversal_grid, traversal_indices, traversal_values


def test_traversal_walks_the_axis_in_order_on_a_line():
    # Objects on a line along dim 1, other dims constant: the nearest objects to the quantile
    # points are exactly the rows at those quantiles, in increasing order.
    n = 101
    z = np.zeros((n, 3))
    z[:, 1] = np.arange(n)
    rows = traversal_indices(z, dim=1, n_steps=5, quantiles=(0.0, 1.0))
    assert rows == [0, 25, 50, 75, 100]
    np.testing.assert_allclose(traversal_values(z, 1, 5, (0.0, 1.0)), [0, 25, 50, 75, 100])


def test_traversal_holds_other_dims_at_median():
    # Two copies of the axis, one far from the median in dim 0: the traversal must pick the
    # copy at the median of dim 0 (rows 0..10), not the offset copy (rows 11..21).
    axis = np.arange(11.0)
    near = np.column_stack([np.zeros(11), axis])
    far = np.column_stack([np.full(11, 5.0), axis])
    extra = np.column_stack([np.zeros(3), [100.0, 100.0, 100.0]])  # keeps median of dim 0 at 0
    z = np.vstack([near, far, extra])
    rows = traversal_indices(z, dim=1, n_steps=3, quantiles=(0.0, 0.5))
    assert all(r < 11 for r in rows)


def test_traversal_rows_unique_when_possible_and_repeat_otherwise():
    z = np.array([[0.0], [0.0], [10.0]])
    rows = traversal_indices(z, 0, n_steps=3, quantiles=(0.0, 0.0))
    assert sorted(rows) == [0, 1, 2]
    rows = traversal_indices(np.array([[1.0], [2.0]]), 0, n_steps=4, quantiles=(0.0, 1.0))
    assert rows == [0, 0, 1, 1]


def test_traversal_rejects_bad_input():
    with pytest.raises(DrlError, match="does not exist"):
        traversal_indices(np.zeros((5, 2)), 2)
    with pytest.raises(DrlError, match="NaN"):
        traversal_indices(np.array([[np.nan], [1.0]]), 0)


def test_cohens_d_known_answer():
    a = np.array([1.0, 2.0, 3.0])   # mean 2, var 1
    b = np.array([3.0, 4.0, 5.0])   # mean 4, var 1
    assert cohens_d(a, b) == pytest.approx(-2.0)
    assert np.isnan(cohens_d(np.array([1.0]), b))
    assert np.isnan(cohens_d(np.ones(3), np.ones(4)))


def test_effect_sizes_ranks_the_separating_column_first(rng):
    n = 200
    mask = np.zeros(n, dtype=bool)
    mask[:50] = True
    df = pd.DataFrame({
        "noise": rng.normal(size=n),
        "shifted": rng.normal(size=n) + np.where(mask, 3.0, 0.0),
        "partly_nan": np.where(np.arange(n) % 10 == 0, np.nan, rng.normal(size=n)),
    })
    out = effect_sizes(df, mask, ["noise", "shifted", "partly_nan"])
    assert out["column"].iloc[0] == "shifted"
    assert out["cohens_d"].iloc[0] > 2.0
    assert out.set_index("column").loc["partly_nan", "n_selected"] == 45
    with pytest.raises(DrlError, match="unknown columns"):
        effect_sizes(df, mask, ["nope"])


def test_traversal_grid_rows_are_nearest_first_and_distinct():
    from drlcore.analysis.traversal import traversal_grid, traversal_indices

    rng = np.random.default_rng(1)
    z = rng.normal(size=(500, 4))
    grid = traversal_grid(z, dim=2, n_steps=7, n_rows=3)
    assert grid.shape == (3, 7)
    assert len(set(grid.ravel().tolist())) == 21
    assert grid[0].tolist() == traversal_indices(z, dim=2, n_steps=7)
    # Each column climbs along the axis: the column means of z[:, 2] increase with the step.
    assert np.all(np.diff(z[grid, 2].mean(axis=0)) > 0)


def test_traversal_grid_with_few_objects_repeats_nearest():
    from drlcore.analysis.traversal import traversal_grid

    z = np.c_[np.arange(5, dtype=float), np.zeros(5)]
    grid = traversal_grid(z, dim=0, n_steps=3, n_rows=4, quantiles=(0.0, 1.0))
    assert grid.shape == (4, 3)
    assert grid[0].tolist() == [0, 2, 4]


def test_nearest_first_keeps_stable_argsort_order_and_every_boundary_tie():
    from drlcore.analysis.traversal import _nearest_first

    d2 = np.array([3.0, 1.0, 2.0, 1.0, 0.5, 2.0, 2.0, 9.0])
    full = np.argsort(d2, kind="stable")
    got = _nearest_first(d2, 4)  # the 4th smallest is 2.0, shared by rows 2, 5 and 6
    assert got.tolist() == full[:6].tolist() == [4, 1, 3, 2, 5, 6]
    assert _nearest_first(d2, 20).tolist() == full.tolist()


def test_traversal_picks_match_a_brute_force_sweep():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(5000, 4))
    dim, n_steps = 2, 7
    values = traversal_values(z, dim, n_steps)
    targets = np.repeat(np.median(z, axis=0, keepdims=True), n_steps, axis=0)
    targets[:, dim] = values
    expected, taken = [], set()
    for t in targets:
        order = np.argsort(((z - t) ** 2).sum(axis=1), kind="stable")
        pick = next(int(i) for i in order if int(i) not in taken)
        expected.append(pick)
        taken.add(pick)
    assert traversal_indices(z, dim, n_steps) == expected
    assert traversal_grid(z, dim, n_steps, n_rows=2)[0].tolist() == expected
