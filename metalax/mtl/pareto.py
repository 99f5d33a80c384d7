r"""Pareto fronts of multi-task problems: Pareto MTL, Pareto hypernetworks, hypervolume.

* :func:`pareto_mtl`: preference-conditioned descent (Lin et al., 2019), one
  run per preference vector, each converging to the part of the front its
  preference points at; an aggregator, like those of
  :mod:`metalax.mtl.aggregation`.
* :class:`ParetoHyperNetwork`: one network that maps a preference vector to
  the parameters of a target network (Navon et al., 2021), trained on
  preferences drawn at random (:func:`sample_preferences`) with the
  preference-weighted loss, so that the whole front is one model.
* :func:`hypervolume` (exact, any number of objectives) and
  :func:`nondominated`: the quality of a front, in NumPy on final evaluation
  numbers.
* :func:`circle_points`: evenly spread preference directions for two tasks.

All objectives are minimised (losses, errors).

References:
  Lin, Zhen, Li, Zhang & Kwong, Pareto Multi-Task Learning, NeurIPS 2019.
  Navon, Shamsian, Chechik & Fetaya, Learning the Pareto Front with
  Hypernetworks, ICLR 2021.
  Zitzler & Thiele, Multiobjective Optimization Using Evolutionary Algorithms
  -- A Comparative Case Study (the hypervolume), PPSN 1998.
"""

from typing import Any, NamedTuple, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from metalax.mtl.aggregation.base import Aggregator
from metalax.mtl.aggregation.base import combine
from metalax.mtl.aggregation.base import count_tasks
from metalax.mtl.aggregation.base import gramian
from metalax.mtl.aggregation.min_norm import min_norm_solver

# ---------------------------------------------------------------------------
# Preferences.


def circle_points(num_points: int, *, min_angle: float = 0.0, max_angle: float = np.pi / 2) -> np.ndarray:
  """``num_points`` unit vectors at evenly spaced angles in ``[min_angle, max_angle]``.

  The preference vectors of Pareto MTL's two-task experiments (``[0, pi/2]``)
  and, divided by their sums, the evaluation rays of the Pareto hypernetwork
  code (``[0.1, pi/2 - 0.1]``).

  Returns:
    ``[num_points, 2]`` float64, rows ``(cos a, sin a)``.

  Example:
    >>> circle_points(3).round(4).tolist()
    [[1.0, 0.0], [0.7071, 0.7071], [0.0, 1.0]]
  """
  if num_points < 1:
    raise ValueError(f"num_points must be >= 1, got {num_points}.")
  angles = np.linspace(min_angle, max_angle, num_points)
  return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def sample_preferences(key: jax.Array, num_tasks: int, *, alpha: float = 1.0,
                       shape: Sequence[int] = ()) -> jax.Array:
  """Preference vectors from the symmetric Dirichlet distribution ``Dir(alpha 1_T)``.

  ``alpha = 1`` is uniform on the simplex, what the Pareto hypernetwork code
  draws by default (``[u, 1 - u]``, ``u ~ U(0, 1)`` for two tasks); smaller
  ``alpha`` favours the corners.

  Returns:
    ``[*shape, T]``, rows on the simplex.
  """
  if num_tasks < 1 or not alpha > 0:
    raise ValueError(f"num_tasks must be >= 1 and alpha > 0, got {num_tasks} and {alpha}.")
  return jax.random.dirichlet(key, jnp.full((num_tasks,), alpha), tuple(shape))


# ---------------------------------------------------------------------------
# Pareto MTL.


class ParetoMTLState(NamedTuple):
  """State of :func:`pareto_mtl`.

  Attributes:
    feasible: bool, whether the initialisation phase has ended (a point in the
      preference's region was reached, or ``max_init_steps`` calls passed).
    step: int32 number of ``update`` calls so far.
  """

  feasible: jax.Array
  step: jax.Array


def _hull_min_norm(vectors, gram):
  """Min-norm weights over the convex hull of the rows ``vectors @ g`` (``[V, T]`` combinations
  of the task gradients), from the ``[V, V]`` Gram ``vectors G vectors^T``, by
  :func:`min_norm_solver` on a square root of that Gram."""
  hull_gram = vectors @ gram @ vectors.T
  hull_gram = 0.5 * (hull_gram + hull_gram.T)
  eigenvalues, eigenvectors = jnp.linalg.eigh(hull_gram)
  root = eigenvectors * jnp.sqrt(jnp.maximum(eigenvalues, 0.0))
  return min_norm_solver(root)


def _pareto_mtl_weights(gram, task_losses, preferences, index, feasible):
  """``(weights [T], feasible_now)`` of one Pareto MTL step (the official ``get_d_paretomtl*``)."""
  num_tasks = gram.shape[0]
  differences = preferences - preferences[index]                       # [K, T]: rows u_j - u_k
  constraints = differences @ (task_losses / jnp.linalg.norm(task_losses))
  active = constraints > 0
  any_active = jnp.any(active)
  # An inactive row is replaced by a copy of an active one (or of e_0): duplicates leave the
  # convex hull, hence the min-norm point, unchanged, and keep the shapes static.
  first_active = differences[jnp.argmax(active)]
  init_rows = jnp.where(active[:, None], differences, first_active)
  init_weights = _hull_min_norm(init_rows, gram) @ init_rows
  eye = jnp.eye(num_tasks, dtype=gram.dtype)
  main_rows = jnp.concatenate([eye, jnp.where(active[:, None], differences, eye[0])])
  main_weights = _hull_min_norm(main_rows, gram) @ main_rows
  main_weights = main_weights * num_tasks / jnp.sum(jnp.abs(main_weights))
  feasible_now = feasible | ~any_active
  weights = jnp.where(feasible_now, main_weights, jnp.where(any_active, init_weights, 0.0))
  return weights, feasible_now


def pareto_mtl(
    preferences: Sequence[Sequence[float]] | jax.Array,
    index: int,
    *,
    max_init_steps: int = 1000,
) -> Aggregator:
  r"""Pareto multi-task learning (Lin et al., 2019): descent towards one preference's region.

  The ``K`` preference vectors :math:`u_1, \dots, u_K` split the loss space
  into regions; run ``index = k`` looks for a Pareto-stationary point in
  :math:`\Omega_k = \{L : (u_j - u_k)^\top L \le 0\ \forall j\}`, the losses
  closest in angle to :math:`u_k`. With the constraints
  :math:`\mathcal G_j = (u_j - u_k)^\top L / \|L\|` active when positive
  (the official code's test), each call returns :math:`\sum_i w_i g_i` with
  ``w`` from a min-norm problem (paper eq. 14):

  * initialisation phase, while some constraint is active: the min-norm
    point of the convex hull of the active :math:`\nabla\mathcal G_j =
    \sum_i (u_j - u_k)_i g_i` (a descent direction for all the violated
    constraints); it ends for good at the first call with no active
    constraint (or after ``max_init_steps`` calls; the official code runs at
    most two epochs);
  * main phase: the min-norm point of the hull of the task gradients and the
    active :math:`\nabla\mathcal G_j`, as weights on the task gradients,
    rescaled so that :math:`\sum_i |w_i| = T` (the official code's
    ``normalize_coeff``).

  The min-norm problems are solved by :func:`metalax.mtl.min_norm_solver`
  (Sener & Koltun's, as the official code). Give ``update`` the task losses:
  ``update(task_grads, state, params, task_losses=task_losses)``. As in the
  official code, the aggregated gradients are those of *all* the parameters
  (heads included), i.e. the same weights scale every task's loss; here they
  are those given to ``update``.

  Args:
    preferences: ``[K, T]`` preference vectors (e.g. :func:`circle_points`
      for two tasks; unit length, as the paper's).
    index: ``k``, the run's preference.
    max_init_steps: cap on the calls of the initialisation phase.

  Returns:
    An aggregator with a :class:`ParetoMTLState`.

  Raises:
    ValueError: on a bad ``preferences`` or ``index``, or (at ``update``)
      missing task losses.

  References:
    Lin, Zhen, Li, Zhang & Kwong, Pareto Multi-Task Learning, NeurIPS 2019
    (code: github.com/Xi-L/ParetoMTL).
  """
  prefs = np.asarray(preferences, np.float32)
  if prefs.ndim != 2 or prefs.shape[0] < 1:
    raise ValueError(f"preferences must be a [K, T] matrix, got shape {prefs.shape}.")
  if not 0 <= index < prefs.shape[0]:
    raise ValueError(f"index must be in [0, {prefs.shape[0]}), got {index}.")
  prefs = jnp.asarray(prefs)

  def init_fn(params):
    del params
    return ParetoMTLState(jnp.zeros((), bool), jnp.zeros((), jnp.int32))

  def update_fn(task_grads, state, params=None, *, task_losses=None, **extra_args):
    del params, extra_args
    num_tasks = count_tasks(task_grads)
    if prefs.shape[1] != num_tasks:
      raise ValueError(f"pareto_mtl has preferences over {prefs.shape[1]} tasks but task_grads have "
                       f"{num_tasks}.")
    if task_losses is None or jnp.shape(task_losses) != (num_tasks,):
      got = None if task_losses is None else jnp.shape(task_losses)
      raise ValueError(f"pareto_mtl needs update(..., task_losses=...) of shape [{num_tasks}], got {got}.")
    gram = gramian(task_grads)
    losses = jax.lax.stop_gradient(jnp.asarray(task_losses, gram.dtype))
    feasible = state.feasible | (state.step >= max_init_steps)
    weights, feasible = _pareto_mtl_weights(gram, losses, prefs.astype(gram.dtype), index, feasible)
    return combine(weights, task_grads), ParetoMTLState(feasible, state.step + 1)

  return Aggregator(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Pareto hypernetwork.


def _leaf_name(path) -> str:
  return "_".join(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path)


class ParetoHyperNetwork(nn.Module):
  r"""A hypernetwork from a preference vector to a target network's parameters (Navon et al., 2021).

  :math:`\theta(r) = h(r; \phi)`: an MLP embeds the preference ``r`` (``Dense
  -> ReLU -> Dense -> ReLU -> Dense``, width ``hidden``, as the reference's
  ``ray_mlp``), and one linear head per leaf of the target's parameters maps
  the embedding to that leaf (the reference's ``conv_i_weights``, ...
  heads). Trained by PHN-LS, the preference-weighted loss on a preference
  drawn anew at every step::

    preference = sample_preferences(key, num_tasks)              # [T]
    target_params = hypernet.apply({"params": phi}, preference)
    loss = preference @ task_losses_fn(target_params, batch)      # differentiate in phi

  Evaluating ``theta(r)`` over a range of ``r`` (e.g. :func:`circle_points`
  normalised to sum 1) traces the front. The reference's PHN-EPO variant
  (an LP per step) is not implemented here.

  Attributes:
    target_shapes: a pytree of shapes of the target's parameters (tuples, or
      anything with ``.shape``: ``jax.eval_shape(model.init, ...)["params"]``).
    hidden: width of the preference embedding (100, the reference's
      ``ray_hidden_dim``).

  Parameters: ``"embedding"`` and one ``"head_<path>"`` per target leaf.

  Example:
    >>> shapes = {"w": (3, 2), "b": (2,)}
    >>> hypernet = ParetoHyperNetwork(target_shapes=shapes, hidden=8)
    >>> phi = hypernet.init(jax.random.key(0), jnp.ones(2))["params"]
    >>> jax.tree.map(jnp.shape, hypernet.apply({"params": phi}, jnp.array([0.3, 0.7])))
    {'b': (2,), 'w': (3, 2)}

  References:
    Navon, Shamsian, Chechik & Fetaya, Learning the Pareto Front with
    Hypernetworks, ICLR 2021 (code: github.com/AvivNavon/pareto-hypernetworks).
  """

  target_shapes: Any
  hidden: int = 100

  @nn.compact
  def __call__(self, preference: jax.Array) -> Any:
    """``preference [T]`` -> target parameters (the structure of ``target_shapes``)."""
    if preference.ndim != 1:
      raise ValueError(f"preference must be a vector [T], got shape {tuple(preference.shape)}; vmap "
                       "the apply for a batch of preferences.")
    embedding = nn.Sequential([nn.Dense(self.hidden), nn.relu, nn.Dense(self.hidden), nn.relu,
                               nn.Dense(self.hidden)], name="embedding")(preference)
    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(d, (int, np.integer)) for d in x)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(self.target_shapes, is_leaf=is_shape)
    outputs = []
    for path, leaf in leaves:
      shape = tuple(leaf) if is_shape(leaf) else tuple(leaf.shape)
      size = int(np.prod(shape, dtype=np.int64))
      outputs.append(nn.Dense(size, name=f"head_{_leaf_name(path)}")(embedding).reshape(shape))
    params = jax.tree.unflatten(treedef, outputs)
    return flax.core.unfreeze(params) if isinstance(params, flax.core.FrozenDict) else params


# ---------------------------------------------------------------------------
# Hypervolume.


def nondominated(points: np.ndarray) -> np.ndarray:
  """Mask of the points that no other point dominates (minimisation).

  ``p`` dominates ``q`` if ``p <= q`` everywhere and ``p < q`` somewhere;
  duplicates of a non-dominated point are all kept.

  Args:
    points: ``[n, d]``.

  Returns:
    ``[n]`` bools.
  """
  points = np.asarray(points, np.float64)
  if points.ndim != 2:
    raise ValueError(f"points must be [n, d], got shape {points.shape}.")
  less_equal = np.all(points[:, None, :] <= points[None, :, :], axis=-1)
  less = np.any(points[:, None, :] < points[None, :, :], axis=-1)
  dominated = np.any(less_equal & less, axis=0)
  return ~dominated


def _hypervolume_2d(points, reference):
  order = np.argsort(points[:, 0], kind="stable")
  area, best_y = 0.0, reference[1]
  for x, y in points[order]:
    if y < best_y:
      area += (reference[0] - x) * (best_y - y)
      best_y = y
  return area


def _hypervolume(points, reference):
  if points.shape[0] == 0:
    return 0.0
  if points.shape[1] == 1:
    return float(reference[0] - points[:, 0].min())
  if points.shape[1] == 2:
    return _hypervolume_2d(points, reference)
  # Slice along the last objective: between consecutive values, the dominated region is the
  # (d-1)-dimensional one of the points at or below the slice.
  order = np.argsort(points[:, -1], kind="stable")
  points = points[order]
  levels = np.append(points[:, -1], reference[-1])
  volume = 0.0
  for i in range(points.shape[0]):
    height = levels[i + 1] - levels[i]
    if height > 0:
      volume += height * _hypervolume(points[:i + 1, :-1], reference[:-1])
  return volume


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
  r"""Exact hypervolume of the region that the points dominate, bounded by ``reference``.

  The Lebesgue measure of :math:`\bigcup_i [p_i, r]` (minimisation): larger
  is better. Points that do not dominate ``reference`` strictly in every
  objective add nothing. Two objectives: a sweep in ``O(n log n)``; more: the
  slicing recursion (exact, ``O(n^{d-1})``), for the small fronts of
  multi-task experiments. NumPy float64, not for ``jit``.

  Args:
    points: ``[n, d]`` objective vectors (e.g. the test losses of each model).
    reference: ``[d]`` the reference point (e.g. ``(3, 3)`` for the two
      MultiMNIST losses, as the Pareto hypernetwork code).

  Returns:
    A Python float.

  Raises:
    ValueError: on bad shapes.

  Example:
    >>> hypervolume(np.array([[1.0, 2.0], [2.0, 1.0]]), np.array([3.0, 3.0]))
    3.0
  """
  points = np.asarray(points, np.float64)
  reference = np.asarray(reference, np.float64)
  if points.ndim != 2 or reference.shape != (points.shape[1],) or points.shape[1] < 1:
    raise ValueError(f"points must be [n, d] and reference [d], got shapes {points.shape} and "
                     f"{reference.shape}.")
  inside = np.all(points < reference, axis=1)
  points = points[inside]
  if points.shape[0]:
    points = points[nondominated(points)]
  return float(_hypervolume(points, reference))
