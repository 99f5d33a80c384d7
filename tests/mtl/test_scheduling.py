"""Tests for metalax.mtl.scheduling: target distributions, exact orders, jit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from metalax.mtl import scheduling

KEY = jax.random.key(0)
SIZES = np.array([50, 200, 800, 3200])


@pytest.mark.parametrize("temperature,expected", [
    (1.0, SIZES / SIZES.sum()),
    (2.0, np.sqrt(SIZES) / np.sqrt(SIZES).sum()),
    (math.inf, np.full(4, 0.25)),
])
def test_task_probabilities_regimes(temperature, expected):
  p = scheduling.task_probabilities(SIZES, temperature=temperature)
  np.testing.assert_allclose(p, expected, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(
      lambda s: scheduling.task_probabilities(s, temperature=temperature))(SIZES), expected,
      rtol=1e-6)


def test_task_probabilities_cap_before_temperature_and_extremes():
  # T5: the cap K applies to the sizes before the temperature.
  p = scheduling.task_probabilities(SIZES, temperature=2.0, size_cap=800)
  capped = np.sqrt(np.minimum(SIZES, 800))
  np.testing.assert_allclose(p, capped / capped.sum(), rtol=1e-6)
  # Huge sizes and a small temperature neither overflow nor lose the largest task.
  p = scheduling.task_probabilities([1e9, 2e9], temperature=0.05)
  assert np.all(np.isfinite(p)) and p[1] > 0.999


def test_task_probabilities_rejects_bad_arguments():
  with pytest.raises(ValueError, match="positive"):
    scheduling.task_probabilities([10, 0])
  with pytest.raises(ValueError, match=r"shape \[T\]"):
    scheduling.task_probabilities([])
  with pytest.raises(ValueError, match="temperature"):
    scheduling.task_probabilities([1, 2], temperature=0.0)


@pytest.mark.parametrize("temperature", [1.0, 2.0, math.inf])
def test_sample_tasks_frequencies_match_target(temperature):
  p = scheduling.task_probabilities(SIZES, temperature=temperature)
  num_draws = 20_000
  task_ids = scheduling.sample_tasks(KEY, p, num_draws)
  assert task_ids.shape == (num_draws,) and task_ids.dtype == jnp.int32
  counts = np.bincount(np.asarray(task_ids), minlength=4)
  expected = np.asarray(p, np.float64) / np.sum(np.asarray(p, np.float64))
  assert stats.chisquare(counts, num_draws * expected).pvalue > 1e-3
  # The test has power: the same counts are far from a different regime.
  other = np.full(4, 0.25) if temperature != math.inf else SIZES / SIZES.sum()
  assert stats.chisquare(counts, num_draws * other).pvalue < 1e-6


def test_sample_tasks_without_replacement_distinct_and_checked():
  task_ids = scheduling.sample_tasks(KEY, jnp.ones(5), 5, replace=False)
  assert sorted(np.asarray(task_ids).tolist()) == [0, 1, 2, 3, 4]
  with pytest.raises(ValueError, match="only 5 tasks"):
    scheduling.sample_tasks(KEY, jnp.ones(5), 6, replace=False)
  with pytest.raises(ValueError, match="batch_size"):
    scheduling.sample_tasks(KEY, jnp.ones(5), 0)


def test_round_robin_order_is_exact():
  batches = [scheduling.round_robin_tasks(step, num_tasks=3, batch_size=2).tolist()
             for step in range(4)]
  assert batches == [[0, 1], [2, 0], [1, 2], [0, 1]]
  jitted = jax.jit(lambda step: scheduling.round_robin_tasks(step, 3, 2))
  assert [jitted(jnp.int32(step)).tolist() for step in range(4)] == batches
  # batch_size larger than T wraps within a batch.
  assert scheduling.round_robin_tasks(0, 2, 5).tolist() == [0, 1, 0, 1, 0]


@pytest.mark.parametrize("replace", [True, False])
def test_sample_examples_in_range_and_uniform(replace):
  sizes = jnp.array([3, 7])
  task_ids = jnp.array([0, 1] * 2000)
  indices = scheduling.sample_examples(KEY, sizes, task_ids, 3, replace=replace)
  assert indices.shape == (4000, 3) and indices.dtype == jnp.int32
  indices = np.asarray(indices)
  row_sizes = np.asarray(sizes)[np.asarray(task_ids)]
  assert np.all(indices >= 0) and np.all(indices < row_sizes[:, None])
  if not replace:
    assert all(len(set(row)) == 3 for row in indices.tolist())
  for task, size in ((0, 3), (1, 7)):
    counts = np.bincount(indices[np.asarray(task_ids) == task].ravel(), minlength=size)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_sample_examples_without_replacement_needs_enough_examples():
  with pytest.raises(ValueError, match=r"tasks \[0\] have only \[3\]"):
    scheduling.sample_examples(KEY, [3, 7], jnp.array([0, 1]), 4, replace=False)


def test_jit_agrees_with_eager_and_sizes_may_be_traced():
  sizes = jnp.array([5, 40, 9])
  eager = scheduling.sample_task_batch(KEY, sizes, 6, 4, temperature=2.0)
  jitted = jax.jit(lambda k, s: scheduling.sample_task_batch(k, s, 6, 4, temperature=2.0))(
      KEY, sizes)
  for a, b in zip(eager, jitted):
    np.testing.assert_array_equal(a, b)
  eager = scheduling.sample_examples(KEY, sizes, jnp.array([0, 2]), 4, replace=False)
  jitted = jax.jit(lambda s: scheduling.sample_examples(KEY, s, jnp.array([0, 2]), 4,
                                                        replace=False))(sizes)
  np.testing.assert_array_equal(eager, jitted)


def test_host_task_schedule_frequencies_and_round_robin():
  p = np.sqrt(SIZES) / np.sqrt(SIZES).sum()
  schedule = scheduling.host_task_schedule(np.random.default_rng(0), SIZES, 50, temperature=2.0)
  draws = np.concatenate([next(schedule) for _ in range(200)])
  frequencies = np.bincount(draws, minlength=4) / draws.size
  # Binomial tolerance: 5 standard deviations.
  assert np.all(np.abs(frequencies - p) < 5 * np.sqrt(p * (1 - p) / draws.size))
  schedule = scheduling.host_task_schedule(np.random.default_rng(0), SIZES, 3, round_robin=True)
  assert [next(schedule).tolist() for _ in range(3)] == [[0, 1, 2], [3, 0, 1], [2, 3, 0]]
  with pytest.raises(ValueError, match="Generator"):
    next(scheduling.host_task_schedule(0, SIZES, 3))
