"""Regression tasks drawn from Gaussian processes, sampled on device, and their exact posterior.

A task is a function ``f ~ GP(0, k)`` observed with Gaussian noise,
``y = f(x) + eps``, ``eps ~ N(0, noise^2)``, at inputs ``x ~ U[input_range]^d``.
The kernel ``k`` is one of

* ``"rbf"``: ``s^2 exp(-r^2 / (2 l^2))``;
* ``"matern52"``: ``s^2 (1 + sqrt(5) r / l + 5 r^2 / (3 l^2)) exp(-sqrt(5) r / l)``;
* ``"periodic"``: ``s^2 exp(-2 sin^2(pi r / p) / l^2)``;

with ``r = ||x - x'||``, length scale ``l``, signal scale ``s`` (a standard
deviation) and period ``p``, each fixed or drawn per task from ``U[low, high]``.
The defaults are those of the neural-process papers' 1-D GP experiments
(DeepMind's ``GPCurvesReader``, used by Garnelo et al. 2018 and Kim et al.
2019): ``x ~ U[-2, 2]``, ``l ~ U[0.1, 0.6]``, ``s ~ U[0.1, 1]``, noise 0.02.

The support set is the context, the query set the targets; all shapes are
static, so :func:`sample_gp` runs under ``jit`` like
:func:`metalax.data.sample_sinusoid`. :func:`gp_predictive` is the exact
posterior predictive of a task given its context: the best any meta-learner can
do on these tasks (the ceiling of a neural process's log-likelihood).
"""

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from metalax.types import Batch, Episode

KERNELS = ("rbf", "matern52", "periodic")
"""The kernel names :func:`sample_gp_tasks` accepts."""

INPUT_RANGE = (-2.0, 2.0)
LENGTHSCALE_RANGE = (0.1, 0.6)
SIGNAL_SCALE_RANGE = (0.1, 1.0)
NOISE = 0.02

# jaxlib 0.10.2 on CPU splits a batched LAPACK call (Cholesky, triangular solve, ...) over its intra-op thread pool
# once the batch's estimated work reaches 2e5 FLOP, and blocks a pool thread until the pieces are done. Two such calls
# that run at once (independent in one program) then deadlock on a 2-core machine. The GP linear algebra below
# therefore runs in chunks of tasks that stay under that size: each LAPACK call runs on its own thread, in sequence.
_LAPACK_THREADING_FLOPS = 200_000


def _map_tasks(fn, cost_per_task: int, *batched: jax.Array):
  """``jax.vmap(fn)(*batched)`` over the leading (task) axis; on CPU in chunks below jaxlib's threading size."""
  chunk = max(1, (_LAPACK_THREADING_FLOPS - 1) // max(cost_per_task, 1))
  if jax.default_backend() != "cpu" or batched[0].shape[0] <= chunk:
    return jax.vmap(fn)(*batched)
  return jax.lax.map(lambda args: fn(*args), batched, batch_size=chunk)


def kernel_matrix(kernel: str, inputs: jax.Array, other: jax.Array, *, lengthscale: jax.Array,
                  signal_scale: jax.Array, period: jax.Array | float = 1.0) -> jax.Array:
  """The covariance ``k(x_i, x'_j)`` of two sets of inputs.

  Args:
    kernel: one of :data:`KERNELS`.
    inputs: ``[n, d]``.
    other: ``[m, d]``.
    lengthscale: scalar ``l`` (> 0).
    signal_scale: scalar ``s`` (> 0): ``k(x, x) = s^2``.
    period: scalar ``p`` (> 0), used by ``"periodic"`` only.

  Returns:
    ``[n, m]``.

  Raises:
    ValueError: if ``kernel`` is unknown or the inputs are not ``[n, d]`` with one ``d``.
  """
  _check_kernel(kernel)
  if inputs.ndim != 2 or other.ndim != 2 or inputs.shape[1] != other.shape[1]:
    raise ValueError(f"kernel_matrix: inputs must be [n, d] and [m, d], got {tuple(inputs.shape)} and "
                     f"{tuple(other.shape)}.")
  squared = jnp.sum(jnp.square(inputs[:, None, :] - other[None, :, :]), axis=-1)
  variance = jnp.square(signal_scale)
  if kernel == "rbf":
    return variance * jnp.exp(-0.5 * squared / jnp.square(lengthscale))
  # sqrt with a zero-safe gradient: r = 0 on the diagonal.
  positive = squared > 0
  distance = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
  if kernel == "matern52":
    scaled = math.sqrt(5.0) * distance / lengthscale
    return variance * (1.0 + scaled + jnp.square(scaled) / 3.0) * jnp.exp(-scaled)
  return variance * jnp.exp(-2.0 * jnp.square(jnp.sin(math.pi * distance / period)) / jnp.square(lengthscale))


@flax.struct.dataclass
class GPTasks:
  """The kernel hyperparameters of ``B`` Gaussian-process tasks.

  Attributes:
    lengthscale: ``[B]``.
    signal_scale: ``[B]`` (standard deviation of ``f(x)``).
    period: ``[B]`` (used by the periodic kernel only).
    kernel: one of :data:`KERNELS` (static).
    noise: observation noise standard deviation (static, > 0).
  """

  lengthscale: jax.Array
  signal_scale: jax.Array
  period: jax.Array
  kernel: str = flax.struct.field(pytree_node=False, default="rbf")
  noise: float = flax.struct.field(pytree_node=False, default=NOISE)

  def covariance(self, inputs: jax.Array, other: jax.Array) -> jax.Array:
    """Kernel matrices of every task: ``[B, n, d]``, ``[B, m, d]`` -> ``[B, n, m]`` (no noise)."""
    return jax.vmap(lambda x, y, length, s, p: kernel_matrix(self.kernel, x, y, lengthscale=length, signal_scale=s,
                                                         period=p))(
        inputs, other, self.lengthscale, self.signal_scale, self.period)

  def sample(self, key: jax.Array, inputs: jax.Array) -> jax.Array:
    """Noisy function values ``y = f(x) + eps`` of every task at ``inputs [B, n, d]`` -> ``[B, n, 1]``.

    One joint draw per task from ``N(0, K + noise^2 I)`` by its Cholesky factor.
    """
    _check_inputs(inputs, self.lengthscale.shape[0])
    num_points = inputs.shape[1]
    covariance = self.covariance(inputs, inputs) + self.noise ** 2 * jnp.eye(num_points, dtype=inputs.dtype)
    noise = jax.random.normal(key, inputs.shape[:2] + (1,), inputs.dtype)
    return _map_tasks(lambda c, e: jnp.linalg.cholesky(c) @ e, num_points ** 3, covariance, noise)


def sample_gp_tasks(key: jax.Array, num_tasks: int, *, kernel: str = "rbf",
                    lengthscale: float | tuple[float, float] = LENGTHSCALE_RANGE,
                    signal_scale: float | tuple[float, float] = SIGNAL_SCALE_RANGE,
                    period: float | tuple[float, float] = 1.0, noise: float = NOISE) -> GPTasks:
  """``num_tasks`` kernel hyperparameters: each one fixed (a number) or drawn from ``U[low, high]`` (a pair).

  Args:
    key: PRNG key.
    num_tasks: B, a static int >= 1.
    kernel: one of :data:`KERNELS`.
    lengthscale: ``l`` or ``(low, high)``; default ``(0.1, 0.6)``.
    signal_scale: ``s`` or ``(low, high)``; default ``(0.1, 1.0)``.
    period: ``p`` or ``(low, high)``; default 1.
    noise: observation noise standard deviation (> 0; in float32 keep it
      above about 1e-3 so that the covariance factorises).

  Returns:
    :class:`GPTasks`.

  Raises:
    ValueError: if a count, range or name is invalid.
  """
  _check_kernel(kernel)
  _check_count("num_tasks", num_tasks)
  if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise > 0:
    raise ValueError(f"noise must be a positive number, got {noise!r}.")
  keys = jax.random.split(key, 3)
  values = [_draw(k, name, spec, num_tasks) for k, name, spec in
            zip(keys, ("lengthscale", "signal_scale", "period"), (lengthscale, signal_scale, period))]
  return GPTasks(*values, kernel=kernel, noise=float(noise))


def gp_episodes(key: jax.Array, tasks: GPTasks, num_shots: int, num_queries: int, *,
                input_dim: int = 1, input_range: tuple[float, float] = INPUT_RANGE) -> Episode:
  """Context (support) and target (query) points of given tasks.

  All ``num_shots + num_queries`` inputs of a task are drawn from
  ``U[input_range]^input_dim`` and their outputs jointly from the task's GP.

  Args:
    key: PRNG key.
    tasks: ``B`` tasks.
    num_shots: context points per task.
    num_queries: target points per task.
    input_dim: ``d``, a static int >= 1.
    input_range: ``(low, high)``.

  Returns:
    An :class:`~metalax.types.Episode` batch: support inputs ``[B, num_shots,
    d]`` and labels ``[B, num_shots, 1]``, query ``[B, num_queries, d]`` and
    ``[B, num_queries, 1]``, float32.
  """
  _check_count("num_shots", num_shots)
  _check_count("num_queries", num_queries)
  _check_count("input_dim", input_dim)
  low, high = _check_range("input_range", input_range)
  key_inputs, key_outputs = jax.random.split(key)
  num_tasks = tasks.lengthscale.shape[0]
  inputs = jax.random.uniform(key_inputs, (num_tasks, num_shots + num_queries, input_dim),
                              minval=low, maxval=high)
  labels = tasks.sample(key_outputs, inputs)
  return Episode(support=Batch(inputs[:, :num_shots], labels[:, :num_shots]),
                 query=Batch(inputs[:, num_shots:], labels[:, num_shots:]))


def sample_gp(key: jax.Array, num_tasks: int, num_shots: int, num_queries: int, *, kernel: str = "rbf",
              lengthscale: float | tuple[float, float] = LENGTHSCALE_RANGE,
              signal_scale: float | tuple[float, float] = SIGNAL_SCALE_RANGE,
              period: float | tuple[float, float] = 1.0, noise: float = NOISE, input_dim: int = 1,
              input_range: tuple[float, float] = INPUT_RANGE) -> Episode:
  """``num_tasks`` fresh GP regression episodes: a pure, jittable sampler.

  Arguments as :func:`sample_gp_tasks` and :func:`gp_episodes`.

  Example:
    >>> sample = jax.jit(functools.partial(sample_gp, kernel="matern52"), static_argnums=(1, 2, 3))
    >>> episodes = sample(jax.random.key(0), 16, 10, 40)   # 16 tasks, 10 context, 40 targets

  References:
    Garnelo et al., Neural Processes, ICML workshop 2018; Kim et al., Attentive
    Neural Processes, ICLR 2019 (the GP curves and their hyperparameter ranges).
  """
  key_tasks, key_points = jax.random.split(key)
  tasks = sample_gp_tasks(key_tasks, num_tasks, kernel=kernel, lengthscale=lengthscale,
                          signal_scale=signal_scale, period=period, noise=noise)
  return gp_episodes(key_points, tasks, num_shots, num_queries, input_dim=input_dim, input_range=input_range)


def gp_predictive(tasks: GPTasks, context: Batch, target_inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The exact posterior predictive of noisy outputs at the targets, given each task's context.

  With ``K = k(X_c, X_c) + noise^2 I``, ``k_* = k(X_c, x_*)``:
  ``mean = k_*^T K^{-1} y_c`` and ``var = k(x_*, x_*) - k_*^T K^{-1} k_* + noise^2``
  (the marginal of each target; Rasmussen & Williams 2006, Eq. 2.23-2.24).

  Args:
    tasks: ``B`` tasks, the hyperparameters that generated the data.
    context: a :class:`~metalax.types.Batch` with inputs ``[B, n, d]`` and labels ``[B, n, 1]``.
    target_inputs: ``[B, m, d]``.

  Returns:
    ``(mean, scale)``, each ``[B, m, 1]``: the predictive mean and standard deviation.

  Example:
    >>> mean, scale = gp_predictive(tasks, episodes.support, episodes.query.inputs)
    >>> ceiling = metalax.metrics.gaussian_nll(mean[0], scale[0], episodes.query.labels[0]).mean()

  References:
    Rasmussen & Williams, Gaussian Processes for Machine Learning, MIT Press 2006.
  """
  num_tasks = tasks.lengthscale.shape[0]
  _check_inputs(context.inputs, num_tasks, "context.inputs")
  _check_inputs(target_inputs, num_tasks, "target_inputs")
  if context.labels.shape != context.inputs.shape[:2] + (1,):
    raise ValueError(f"gp_predictive: context labels must be [B, n, 1] = {context.inputs.shape[:2] + (1,)}, "
                     f"got {tuple(context.labels.shape)}.")
  num_context = context.inputs.shape[1]
  covariance = (tasks.covariance(context.inputs, context.inputs)
                + tasks.noise ** 2 * jnp.eye(num_context, dtype=context.inputs.dtype))
  cross = tasks.covariance(context.inputs, target_inputs)                       # [B, n, m]

  def posterior(covariance, cross, labels):                                     # [n, n], [n, m], [n, 1]
    cholesky = jnp.linalg.cholesky(covariance)
    mean = cross.T @ jax.scipy.linalg.cho_solve((cholesky, True), labels)        # [m, 1]
    whitened = jax.scipy.linalg.solve_triangular(cholesky, cross, lower=True)   # [n, m]
    return mean, jnp.sum(jnp.square(whitened), axis=0)                          # [m, 1], [m]

  num_targets = target_inputs.shape[1]
  mean, explained = _map_tasks(posterior, num_context ** 2 * (num_context + num_targets + 2), covariance, cross,
                               context.labels)
  prior_variance = jnp.square(tasks.signal_scale)[:, None]                      # k(x, x) = s^2
  variance = prior_variance - explained + tasks.noise ** 2
  return mean, jnp.sqrt(jnp.maximum(variance, tasks.noise ** 2))[..., None]


def _draw(key: jax.Array, name: str, spec: Any, num_tasks: int) -> jax.Array:
  if isinstance(spec, (tuple, list)):
    low, high = _check_range(name, spec)
    if not low > 0:
      raise ValueError(f"{name} must be positive, got the range {tuple(spec)}.")
    return jax.random.uniform(key, (num_tasks,), minval=low, maxval=high)
  if isinstance(spec, bool) or not isinstance(spec, (int, float)) or not spec > 0:
    raise ValueError(f"{name} must be a positive number or a (low, high) range, got {spec!r}.")
  return jnp.full((num_tasks,), float(spec), jnp.float32)


def _check_range(name: str, spec: Any) -> tuple[float, float]:
  if (not isinstance(spec, (tuple, list)) or len(spec) != 2
      or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec) or not spec[0] < spec[1]):
    raise ValueError(f"{name} must be a pair (low, high) with low < high, got {spec!r}.")
  return float(spec[0]), float(spec[1])


def _check_kernel(kernel: Any) -> None:
  if kernel not in KERNELS:
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}.")


def _check_count(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be an int >= 1, got {value!r}.")


def _check_inputs(inputs: jax.Array, num_tasks: int, name: str = "inputs") -> None:
  if getattr(inputs, "ndim", None) != 3 or inputs.shape[0] != num_tasks:
    raise ValueError(f"{name} must be [B, n, d] with B = {num_tasks} tasks, got shape "
                     f"{getattr(inputs, 'shape', type(inputs).__name__)}.")
