"""The sinusoid regression task family of the MAML paper, sampled on device.

A task is ``y = amplitude * sin(x - phase)`` with ``amplitude ~ U[0.1, 5]``,
``phase ~ U[0, pi]`` and inputs ``x ~ U[-5, 5]`` (Finn et al. 2017, Section 5.1).
"""

import math

import flax.struct
import jax
import jax.numpy as jnp

from metalax.types import Batch, Episode

AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, math.pi)
INPUT_RANGE = (-5.0, 5.0)


@flax.struct.dataclass
class SinusoidTasks:
  """Parameters of ``B`` sinusoid tasks.

  Attributes:
    amplitude: ``[B]``.
    phase: ``[B]``.
  """

  amplitude: jax.Array
  phase: jax.Array

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Targets of every task: inputs ``[B, n, 1]`` -> ``[B, n, 1]``."""
    return self.amplitude[:, None, None] * jnp.sin(inputs - self.phase[:, None, None])


def sample_sinusoid_tasks(key: jax.Array, num_tasks: int) -> SinusoidTasks:
  """Samples ``num_tasks`` amplitudes and phases from the MAML paper's ranges."""
  key_amplitude, key_phase = jax.random.split(key)
  return SinusoidTasks(
      amplitude=jax.random.uniform(key_amplitude, (num_tasks,), minval=AMPLITUDE_RANGE[0],
                                   maxval=AMPLITUDE_RANGE[1]),
      phase=jax.random.uniform(key_phase, (num_tasks,), minval=PHASE_RANGE[0], maxval=PHASE_RANGE[1]))


def sinusoid_episodes(key: jax.Array, tasks: SinusoidTasks, num_shots: int, num_queries: int) -> Episode:
  """Support and query points of given tasks, inputs drawn from ``U[-5, 5]``.

  Args:
    key: PRNG key.
    tasks: ``B`` tasks.
    num_shots: K, support points per task.
    num_queries: query points per task.

  Returns:
    An :class:`~metalax.types.Episode` batch: support inputs and labels
    ``[B, num_shots, 1]``, query ``[B, num_queries, 1]``, float32.
  """
  for name, value in (("num_shots", num_shots), ("num_queries", num_queries)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
  num_tasks = tasks.amplitude.shape[0]
  inputs = jax.random.uniform(key, (num_tasks, num_shots + num_queries, 1),
                              minval=INPUT_RANGE[0], maxval=INPUT_RANGE[1])
  labels = tasks(inputs)
  return Episode(support=Batch(inputs[:, :num_shots], labels[:, :num_shots]),
                 query=Batch(inputs[:, num_shots:], labels[:, num_shots:]))


def sample_sinusoid(key: jax.Array, num_tasks: int, num_shots: int, num_queries: int) -> Episode:
  """``num_tasks`` fresh sinusoid episodes: a pure, jittable sampler.

  Example:
    >>> sample = jax.jit(sample_sinusoid, static_argnums=(1, 2, 3))
    >>> episodes = sample(jax.random.key(0), 25, 10, 10)   # meta-batch 25, K=10
  """
  key_tasks, key_points = jax.random.split(key)
  return sinusoid_episodes(key_points, sample_sinusoid_tasks(key_tasks, num_tasks), num_shots, num_queries)
