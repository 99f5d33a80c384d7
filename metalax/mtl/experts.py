r"""Expert and subspace-sharing architectures: CGC, PLE, DSelect-k, sluice networks.

Linen modules (params only) with the interface of :mod:`metalax.mtl.architectures`:
``inputs [n, ...]`` -> a **tuple of T arrays** ``outputs[t] [n, num_outputs[t]]``.

* :class:`CGC`: customized gate control, shared and task-specific experts mixed
  by one softmax gate per task (Tang et al., 2020).
* :class:`PLE`: progressive layered extraction, stacked CGC levels with a
  shared gate between levels (Tang et al., 2020).
* :class:`DSelectK`: MMoE with DSelect-k gates, differentiable top-k expert
  selection by binary encoding and the smooth step :func:`smooth_step`
  (Hazimeh et al., 2021).
* :class:`Sluice`: sluice networks, task columns whose layer outputs are split
  into subspaces mixed across tasks, with learned layer combinations
  (Ruder et al., 2019); :func:`sluice_subspace_penalty` is its orthogonality
  term.

Experts are copies of a template (``experts``: any linen module ``[n, ...] ->
[n, ...]``, e.g. a conv net on images, or one template per level for PLE); by
default a stack of ``Dense -> activation`` on the flattened inputs. Copies keep
their parameters stacked on a leading axis (``flax.linen.vmap``).

Parameter layout: everything specific to task ``t`` lives in top-level
subtrees whose names start with ``"task_t_"`` (its experts, gate, tower or
head); everything else is shared. :func:`experts_shared_mask` turns that into the shared-parameter mask
that gradient aggregation and :func:`metalax.mtl.train_step` take.

References:
  Tang, Liu, Zhao & Gong, Progressive Layered Extraction (PLE): A Novel
  Multi-Task Learning (MTL) Model for Personalized Recommendations, RecSys 2020.
  Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong & Chi,
  DSelect-k: Differentiable Selection in the Mixture of Experts with
  Applications to Multi-Task Learning, NeurIPS 2021.
  Ruder, Bingel, Augenstein & Søgaard, Latent Multi-task Architecture Learning
  (sluice networks), AAAI 2019.
"""

import math
import re
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from metalax.models.mlp import MLP

Activation = Callable[[jax.Array], jax.Array]


def _check_num_outputs(num_outputs: Sequence[int]) -> tuple[int, ...]:
  if isinstance(num_outputs, (int, np.integer)):
    raise ValueError(f"num_outputs must be a sequence with one output width per task, e.g. (10, 1), "
                     f"got the int {num_outputs}.")
  widths = tuple(num_outputs)
  if not widths or not all(isinstance(w, (int, np.integer)) and w >= 1 for w in widths):
    raise ValueError(f"num_outputs must be a non-empty sequence of positive ints (one per task), "
                     f"got {num_outputs!r}.")
  return widths


def _flatten(x: jax.Array) -> jax.Array:
  if x.ndim < 2:
    raise ValueError(f"inputs must have shape [n, ...], got {tuple(x.shape)}.")
  return x.reshape(x.shape[0], -1)


class _Layers(nn.Module):
  """The default expert: inputs flattened, then ``Dense -> activation`` per width."""

  features: Sequence[int]
  activation: Activation = nn.relu

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = _flatten(x)
    for width in self.features:
      x = self.activation(nn.Dense(width)(x))
    return x


def _copies(template: nn.Module, num_copies: int, inputs: jax.Array, parent: nn.Module,
            name: str) -> jax.Array:
  """``num_copies`` copies of ``template`` named ``name`` on the same inputs: ``[num_copies, n, ...]``."""
  module = template.clone(parent=parent, name=name)
  copies = nn.vmap(lambda m, x: m(x), variable_axes={"params": 0}, split_rngs={"params": True},
                   in_axes=None, out_axes=0, axis_size=num_copies)
  return copies(module, inputs)


def _mix(gates: jax.Array, experts: jax.Array) -> jax.Array:
  """``sum_e gates[n, e] * experts[e, n, ...]`` -> ``[n, ...]``."""
  return jnp.einsum("ne,en...->n...", gates.astype(experts.dtype), experts)


def _symmetric_uniform(scale: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


def experts_shared_mask(params: Any) -> Any:
  """The shared-parameter mask of a module here: False under ``"task_t_..."``, True elsewhere.

  Args:
    params: the ``"params"`` collection of :class:`CGC`, :class:`PLE`,
      :class:`DSelectK` or :class:`Sluice`.

  Returns:
    A pytree of bools with the structure of ``params``.

  Raises:
    ValueError: if ``params`` is not a dict of subtrees.

  Example:
    >>> model = CGC(num_outputs=(1, 1), expert_features=(4,), tower_features=())
    >>> params = model.init(jax.random.key(0), jnp.ones((1, 3)))["params"]
    >>> mask = experts_shared_mask(params)
    >>> mask["shared_experts_0"]["Dense_0"]["kernel"], mask["task_1_gate_0"]["kernel"]
    (True, False)
  """
  if not hasattr(params, "items"):
    raise ValueError(f"params must be a dict of parameter subtrees by name, got {type(params).__name__}.")
  flags = {name: _TASK_SPECIFIC.match(name) is None for name in params}
  return {name: jax.tree.map(lambda _, name=name: flags[name], subtree) for name, subtree in params.items()}


_TASK_SPECIFIC = re.compile(r"^task_\d+_")


# ---------------------------------------------------------------------------
# CGC and PLE.


def _expert_counts(module: nn.Module, num_tasks: int) -> tuple[int, ...]:
  task_experts = module.num_task_experts
  counts = ((int(task_experts),) * num_tasks if isinstance(task_experts, (int, np.integer))
            else tuple(int(e) for e in task_experts))
  if len(counts) != num_tasks or min(counts) < 0 or module.num_shared_experts < 0:
    raise ValueError(f"num_task_experts must be an int >= 0 or one per task ({num_tasks}), and "
                     f"num_shared_experts >= 0; got {module.num_task_experts!r} and "
                     f"{module.num_shared_experts!r}.")
  if any(module.num_shared_experts + c < 1 for c in counts):
    raise ValueError("every task needs at least one expert (shared or its own), got "
                     f"num_shared_experts={module.num_shared_experts} and num_task_experts={counts}.")
  return counts


def _level_templates(module: nn.Module, num_levels: int) -> list:
  templates = module.experts
  if templates is None:
    features = tuple(module.expert_features)
    nested = bool(features) and not isinstance(features[0], (int, np.integer))
    per_level = tuple(tuple(w) for w in features) if nested else (features,) * num_levels
    if len(per_level) != num_levels or not all(per_level):
      raise ValueError(f"expert_features must be one non-empty tuple of widths, or one per level "
                       f"({num_levels}), got {module.expert_features!r}.")
    return [_Layers(w, module.activation) for w in per_level]
  if isinstance(templates, nn.Module):
    return [templates] * num_levels
  templates = list(templates)
  if len(templates) != num_levels:
    raise ValueError(f"experts must be one module or one per level ({num_levels}), got {len(templates)}.")
  return templates


def _progressive_extraction(module: nn.Module, inputs: jax.Array, num_levels: int) -> tuple[jax.Array, ...]:
  """The body of :class:`PLE` (``num_levels = 1``: :class:`CGC`), towers included."""
  num_outputs = _check_num_outputs(module.num_outputs)
  num_tasks = len(num_outputs)
  if num_levels < 1:
    raise ValueError(f"num_levels must be >= 1, got {num_levels}.")
  counts = _expert_counts(module, num_tasks)
  templates = _level_templates(module, num_levels)
  task_reps = [inputs] * num_tasks
  shared_rep = inputs
  for level, template in enumerate(templates):
    shared = None
    if module.num_shared_experts:
      shared = _copies(template, module.num_shared_experts, shared_rep, module, f"shared_experts_{level}")
    own = [_copies(template, counts[t], task_reps[t], module, f"task_{t}_experts_{level}") if counts[t]
           else None for t in range(num_tasks)]
    new_reps = []
    for t in range(num_tasks):
      candidates = jnp.concatenate([e for e in (shared, own[t]) if e is not None], axis=0)
      logits = nn.Dense(candidates.shape[0], use_bias=module.gate_bias,
                        name=f"task_{t}_gate_{level}")(_flatten(task_reps[t]))
      gates = jax.nn.softmax(logits, axis=-1)
      module.sow("intermediates", f"gates_{level}_{t}", gates)
      new_reps.append(_mix(gates, candidates))
    if level < num_levels - 1 and shared is not None:  # the shared gate feeds the next level
      candidates = jnp.concatenate([e for e in [shared] + own if e is not None], axis=0)
      logits = nn.Dense(candidates.shape[0], use_bias=module.gate_bias,
                        name=f"shared_gate_{level}")(_flatten(shared_rep))
      shared_rep = _mix(jax.nn.softmax(logits, axis=-1), candidates)
    task_reps = new_reps
  return tuple(MLP(features=tuple(module.tower_features), num_outputs=width, activation=module.activation,
                   name=f"task_{t}_tower")(_flatten(rep))
               for t, (rep, width) in enumerate(zip(task_reps, num_outputs)))


class CGC(nn.Module):
  r"""Customized Gate Control, CGC (Tang et al., 2020): shared and task-specific experts.

  ``num_shared_experts`` experts :math:`f^s_e` serve all tasks, and task ``t``
  has ``num_task_experts`` experts :math:`f^t_e` of its own. Task ``t``'s gate
  is a softmax, linear in the input, over its own and the shared experts, and
  its tower reads the mixture (paper eq. 2-4):

  .. math::
    g^t(x) = \mathrm{softmax}(W^t x + b^t), \qquad
    y_t = h^t\Bigl(\sum_e g^t(x)_e\, [f^s(x); f^t(x)]_e\Bigr),

  the experts stacked shared first (LibMTL's order). With no task-specific
  experts this is :class:`metalax.mtl.MMoE`.

  Attributes:
    num_outputs: output width of each task's tower (``T = len(num_outputs)``).
    experts: the module every expert copies (any linen module ``[n, ...] ->
      [n, ...]``); None for ``Dense -> activation`` per width of
      ``expert_features`` on the flattened inputs.
    num_shared_experts: number of shared experts.
    num_task_experts: experts per task (an int, or one count per task).
    expert_features: hidden widths of each default expert.
    tower_features: hidden widths of each tower before its output layer.
    gate_bias: whether the gates have a bias (LibMTL's do).
    activation: applied after every hidden layer of experts and towers.

  Parameters: shared ``"shared_experts_0"`` (leaves ``[E_s, ...]``);
  task-specific ``"task_t_experts_0"`` (``[E_t, ...]``), ``"task_t_gate_0"``
  and ``"task_t_tower"``. The gates ``[n, E_s + E_t]`` are sown as
  ``intermediates["gates_0_t"]``.

  Example:
    >>> model = CGC(num_outputs=(2, 1), num_shared_experts=2, num_task_experts=1)
    >>> params = model.init(jax.random.key(0), jnp.ones((1, 5)))["params"]
    >>> [o.shape for o in model.apply({"params": params}, jnp.ones((3, 5)))]
    [(3, 2), (3, 1)]

  References:
    Tang, Liu, Zhao & Gong, Progressive Layered Extraction (PLE): A Novel
    Multi-Task Learning (MTL) Model for Personalized Recommendations, RecSys 2020.
  """

  num_outputs: Sequence[int]
  experts: nn.Module | None = None
  num_shared_experts: int = 1
  num_task_experts: int | Sequence[int] = 1
  expert_features: Sequence[int] = (16,)
  tower_features: Sequence[int] = (8,)
  gate_bias: bool = True
  activation: Activation = nn.relu

  @nn.compact
  def __call__(self, inputs: jax.Array) -> tuple[jax.Array, ...]:
    """``inputs [n, ...]`` -> ``T`` outputs ``[n, num_outputs[t]]``."""
    return _progressive_extraction(self, inputs, 1)


class PLE(nn.Module):
  r"""Progressive Layered Extraction, PLE (Tang et al., 2020): stacked CGC levels.

  Level ``j`` holds shared experts and each task's experts. Task ``t``'s
  experts at level ``j`` read task ``t``'s representation from level ``j - 1``
  and the shared experts read the shared representation; task ``t``'s gate
  (on its representation) mixes its own and the shared experts into its new
  representation, and, below the last level, a shared gate (on the shared
  representation) mixes *all* the level's experts into the new shared
  representation (paper eq. 5-6, Figure 5). Level 0 reads the inputs; the
  towers read the last level's task representations. One level is :class:`CGC`.

  LibMTL's ``PLE`` has no shared gate: its shared experts at each level run on
  every task's representation separately. This module follows the paper.

  Attributes:
    num_outputs: output width of each task's tower (``T = len(num_outputs)``).
    num_levels: number of extraction levels (2, as the paper's Figure 5).
    experts: the module every expert copies, or one module per level (level
      ``j``'s experts read level ``j - 1``'s outputs, e.g. the stages of a
      ResNet as in LibMTL); None for ``Dense -> activation`` per width of
      ``expert_features`` (one tuple for every level, or one tuple per level).
    num_shared_experts: shared experts per level.
    num_task_experts: experts per task per level (an int, or one per task).
    expert_features: hidden widths of the default experts.
    tower_features: hidden widths of each tower before its output layer.
    gate_bias: whether the gates have a bias.
    activation: applied after every hidden layer of experts and towers.

  Parameters: shared ``"shared_experts_j"`` and ``"shared_gate_j"``;
  task-specific ``"task_t_experts_j"``, ``"task_t_gate_j"`` and
  ``"task_t_tower"``.

  Example:
    >>> model = PLE(num_outputs=(2, 1), num_levels=2, expert_features=(8,))
    >>> params = model.init(jax.random.key(0), jnp.ones((1, 5)))["params"]
    >>> sorted(params)[:4]
    ['shared_experts_0', 'shared_experts_1', 'shared_gate_0', 'task_0_experts_0']

  References:
    Tang, Liu, Zhao & Gong, Progressive Layered Extraction (PLE): A Novel
    Multi-Task Learning (MTL) Model for Personalized Recommendations, RecSys 2020.
  """

  num_outputs: Sequence[int]
  num_levels: int = 2
  experts: nn.Module | Sequence[nn.Module] | None = None
  num_shared_experts: int = 1
  num_task_experts: int | Sequence[int] = 1
  expert_features: Sequence[int] | Sequence[Sequence[int]] = (16,)
  tower_features: Sequence[int] = (8,)
  gate_bias: bool = True
  activation: Activation = nn.relu

  @nn.compact
  def __call__(self, inputs: jax.Array) -> tuple[jax.Array, ...]:
    """``inputs [n, ...]`` -> ``T`` outputs ``[n, num_outputs[t]]``."""
    return _progressive_extraction(self, inputs, self.num_levels)


# ---------------------------------------------------------------------------
# DSelect-k.


def smooth_step(t: jax.Array, gamma: float = 1.0) -> jax.Array:
  r"""The cubic smooth step of DSelect-k (Hazimeh et al., 2021, eq. 4).

  .. math::
    S(t) = \begin{cases} 0 & t \le -\gamma/2 \\
      -\frac{2}{\gamma^3} t^3 + \frac{3}{2\gamma} t + \frac12 & |t| < \gamma/2 \\
      1 & t \ge \gamma/2 \end{cases}

  continuously differentiable, exactly 0 or 1 outside ``(-gamma/2, gamma/2)``.

  Example:
    >>> smooth_step(jnp.array([-1.0, 0.0, 0.25, 1.0])).tolist()
    [0.0, 0.5, 0.84375, 1.0]
  """
  cubic = -2.0 / gamma**3 * t**3 + 3.0 / (2.0 * gamma) * t + 0.5
  return jnp.where(t <= -gamma / 2, 0.0, jnp.where(t >= gamma / 2, 1.0, cubic))


class _DSelectKGate(nn.Module):
  """One task's example-conditioned DSelect-k gate: ``(expert weights [n, E], selectors [n, k, E])``."""

  num_experts: int
  num_nonzeros: int
  gamma: float

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    num_binary = max(1, math.ceil(math.log2(self.num_experts)))
    z_init = _symmetric_uniform(self.gamma / 100)
    z_logits = nn.Dense(self.num_nonzeros * num_binary, kernel_init=z_init, bias_init=z_init,
                        name="z_logits")(x).reshape(-1, self.num_nonzeros, 1, num_binary)
    w_init = _symmetric_uniform(0.05)
    w_logits = nn.Dense(self.num_nonzeros, kernel_init=w_init, bias_init=w_init, name="w_logits")(x)
    codes = jnp.asarray(((np.arange(self.num_experts)[:, None] >> np.arange(num_binary)[::-1]) & 1)
                        .astype(bool))                                # [E, m], most significant bit first
    activations = smooth_step(z_logits, self.gamma)                   # [n, k, 1, m]
    selectors = jnp.prod(jnp.where(codes, activations, 1.0 - activations), axis=-1)  # [n, k, E]
    weights = jnp.einsum("nk,nke->ne", jax.nn.softmax(w_logits, axis=-1), selectors)
    return weights, selectors


def dselect_k_regularizer(selectors: jax.Array, num_experts: int, entropy_weight: float = 1e-6) -> jax.Array:
  r"""The training penalty of a DSelect-k gate (the official ``_add_regularization_loss``).

  ``entropy_weight`` times the entropy :math:`-\sum s \log(s + 10^{-6})` of the
  single-expert selectors (pushes each to one expert), plus, when
  ``num_experts`` is not a power of 2, :math:`\sum 1 / \sum_e s_e` per selector
  (keeps the selectors off the unreachable binary codes).

  Args:
    selectors: ``[n, k, E]`` the selector outputs.
    num_experts: ``E``.
    entropy_weight: the regularisation parameter (1e-6, the official
      ``EntropyRegularizer`` default and LibMTL's).

  Returns:
    A scalar.
  """
  entropy = -jnp.sum(selectors * jnp.log(selectors + 1e-6))
  penalty = entropy_weight * entropy
  if num_experts & (num_experts - 1):  # not a power of 2
    penalty = penalty + jnp.sum(1.0 / jnp.sum(selectors, axis=-1))
  return penalty


class DSelectK(nn.Module):
  r"""Multi-gate mixture of experts with DSelect-k gates (Hazimeh et al., 2021).

  As :class:`metalax.mtl.MMoE`, but each task's gate selects at most ``k =
  num_nonzeros`` experts, differentiably. A single-expert selector encodes an
  expert index in ``m = ceil(log2 E)`` binary digits, relaxed by
  :func:`smooth_step` of learned logits ``z``: expert ``e`` with code ``b(e)``
  gets :math:`r(z)_e = \prod_i S(z_i)^{b_i(e)} (1 - S(z_i))^{1 - b_i(e)}`. ``k``
  selectors are mixed by a softmax over logits ``w``:

  .. math::
    \alpha(x) = \sum_{j=1}^{k} \mathrm{softmax}(w(x))_j\, r(z_j(x)),\qquad
    y_t = h^t\Bigl(\sum_e \alpha^t(x)_e f_e(x)\Bigr),

  with ``z`` and ``w`` linear in the input (the paper's per-example gate, as
  LibMTL's ``DSelect_k``). Initialisation as the official code: ``z``'s
  kernel and bias ``U(-gamma/100, gamma/100)``, ``w``'s ``U(-0.05, 0.05)``.
  Once every ``S(z)`` reaches 0 or 1 the selection is exactly sparse.

  Training penalty: with ``deterministic=False`` every gate sows
  :func:`dselect_k_regularizer` of its selectors into the ``"losses"``
  collection; add their sum to the loss::

    outputs, state = model.apply({"params": params}, x, deterministic=False,
                                 mutable=["losses"])
    penalty = sum(jax.tree.leaves(state["losses"]))

  (the official code adds one per gate; LibMTL backpropagates only the last
  task's).

  Attributes:
    num_outputs: output width of each task's tower (``T = len(num_outputs)``).
    experts: the module every expert copies; None for ``Dense -> activation``
      per width of ``expert_features`` on the flattened inputs.
    num_experts: ``E >= 2``.
    num_nonzeros: ``k``, the number of selectors per gate.
    gamma: the smooth-step width (1.0, LibMTL's ``kgamma`` default).
    entropy_weight: the entropy regularisation weight (1e-6).
    expert_features: hidden widths of each default expert.
    tower_features: hidden widths of each tower before its output layer.
    activation: applied after every hidden layer of experts and towers.

  Parameters: shared ``"experts"`` (leaves ``[E, ...]``); task-specific
  ``"task_t_gate"`` (``"z_logits"``, ``"w_logits"``) and ``"task_t_tower"``.
  The expert weights ``[n, E]`` are sown as ``intermediates["expert_weights_t"]``.

  Example:
    >>> model = DSelectK(num_outputs=(2, 1), num_experts=4, num_nonzeros=2)
    >>> params = model.init(jax.random.key(0), jnp.ones((1, 5)))["params"]
    >>> [o.shape for o in model.apply({"params": params}, jnp.ones((3, 5)))]
    [(3, 2), (3, 1)]

  References:
    Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong & Chi,
    DSelect-k: Differentiable Selection in the Mixture of Experts with
    Applications to Multi-Task Learning, NeurIPS 2021 (code:
    github.com/google-research/google-research/tree/master/dselect_k_moe).
  """

  num_outputs: Sequence[int]
  experts: nn.Module | None = None
  num_experts: int = 8
  num_nonzeros: int = 2
  gamma: float = 1.0
  entropy_weight: float = 1e-6
  expert_features: Sequence[int] = (16,)
  tower_features: Sequence[int] = (8,)
  activation: Activation = nn.relu

  @nn.compact
  def __call__(self, inputs: jax.Array, *, deterministic: bool = True) -> tuple[jax.Array, ...]:
    """Args: ``inputs [n, ...]``; ``deterministic``: False to sow the training penalty.

    Returns: ``T`` outputs ``[n, num_outputs[t]]``.
    """
    num_outputs = _check_num_outputs(self.num_outputs)
    if self.num_experts < 2 or self.num_nonzeros < 1 or not self.gamma > 0:
      raise ValueError(f"DSelectK needs num_experts >= 2, num_nonzeros >= 1 and gamma > 0, got "
                       f"{self.num_experts}, {self.num_nonzeros} and {self.gamma}.")
    template = self.experts if self.experts is not None else _Layers(tuple(self.expert_features),
                                                                      self.activation)
    experts = _copies(template, self.num_experts, inputs, self, "experts")  # [E, n, ...]
    x = _flatten(inputs)
    outputs = []
    for t, width in enumerate(num_outputs):
      weights, selectors = _DSelectKGate(self.num_experts, self.num_nonzeros, self.gamma,
                                         name=f"task_{t}_gate")(x)
      self.sow("intermediates", f"expert_weights_{t}", weights)
      if not deterministic:
        self.sow("losses", f"dselect_k_{t}", dselect_k_regularizer(selectors, self.num_experts,
                                                                   self.entropy_weight))
      outputs.append(MLP(features=tuple(self.tower_features), num_outputs=width,
                         activation=self.activation, name=f"task_{t}_tower")(_flatten(_mix(weights, experts))))
    return tuple(outputs)


# ---------------------------------------------------------------------------
# Sluice networks.


def _sluice_alpha_init(num_subspaces: int, scheme: str):
  def init(key, shape, dtype=jnp.float32):
    del key
    size = shape[0]
    num_tasks = size // num_subspaces
    if scheme == "balanced" or num_tasks == 1:
      return jnp.full(shape, 1.0 / size, dtype) if scheme == "balanced" else jnp.eye(size, dtype=dtype)
    tasks = 0.9 * np.eye(num_tasks) + 0.1 / (num_tasks - 1) * (1 - np.eye(num_tasks))
    return jnp.asarray(np.kron(tasks, np.eye(num_subspaces)), dtype)
  return init


class Sluice(nn.Module):
  r"""Sluice network (Ruder et al., 2019): task columns sharing learned subspaces.

  One fully connected column per task. Each hidden layer's output of each
  task is split into ``G = num_subspaces`` equal subspaces, and a learned
  ``[T G, T G]`` matrix :math:`\alpha^l` replaces every subspace by a linear
  combination of all tasks' subspaces (paper eq. 2; ``G = 1`` is a
  cross-stitch unit):

  .. math::
    \tilde h^l_{t,g} = \sum_{s,g'} \alpha^l_{(t,g),(s,g')}\, h^l_{s,g'} .

  With ``layer_stitch=True`` task ``t``'s head reads the combination
  :math:`\sum_l \beta_{t,l} \tilde h^l_t` of all its layers (the paper's
  layer-stitch units, eq. 3; the widths must then agree); otherwise the last
  layer. Train with :func:`sluice_subspace_penalty` added to the loss
  (the paper's orthogonality constraint between subspaces).

  Initialisation: ``"imbalanced"`` (the official code's default for
  ``G = 1``): :math:`\alpha = A \otimes I_G` with ``A`` 0.9 on the diagonal and
  ``0.1 / (T - 1)`` elsewhere, so at first each subspace mixes only with the
  same subspace of the other tasks (the official code uses a fixed 0.95 / 0.05
  pattern written for two tasks when ``G > 1``); ``"balanced"``: all
  ``1 / (T G)``. ``beta`` starts at ``1 / L`` (the official ``balanced``
  default).

  Attributes:
    num_outputs: output width of each task's head (``T = len(num_outputs)``).
    trunk: a shared encoder in front of the columns (any linen module ``[n,
      ...] -> [n, ...]``, output flattened); None for the flattened inputs.
    features: hidden widths of every column (each divisible by ``G``).
    num_subspaces: ``G`` (2 in the paper's experiments).
    alpha_init: ``"imbalanced"`` or ``"balanced"``.
    layer_stitch: whether heads read a learned combination of all layers.
    activation: applied after every hidden layer (before the mixing).

  Parameters: ``"trunk"``, per-layer ``"layer_l"`` (leaves ``[T, ...]``, the
  columns, reached by every task's loss through ``alpha``) and
  ``"sluice_l"`` (``[T G, T G]``) shared; task-specific ``"task_t_head"`` and
  ``"task_t_layer_stitch"`` (``[L]``).

  Example:
    >>> model = Sluice(num_outputs=(3, 1), features=(8, 8))
    >>> params = model.init(jax.random.key(0), jnp.ones((1, 5)))["params"]
    >>> params["sluice_0"].shape, params["layer_0"]["kernel"].shape
    ((4, 4), (2, 5, 8))

  References:
    Ruder, Bingel, Augenstein & Søgaard, Latent Multi-task Architecture
    Learning, AAAI 2019 (code: github.com/sebastianruder/sluice-networks).
  """

  num_outputs: Sequence[int]
  trunk: nn.Module | None = None
  features: Sequence[int] = (64, 64)
  num_subspaces: int = 2
  alpha_init: str = "imbalanced"
  layer_stitch: bool = True
  activation: Activation = nn.relu

  @nn.compact
  def __call__(self, inputs: jax.Array) -> tuple[jax.Array, ...]:
    """``inputs [n, ...]`` -> ``T`` outputs ``[n, num_outputs[t]]``."""
    num_outputs = _check_num_outputs(self.num_outputs)
    num_tasks, groups = len(num_outputs), self.num_subspaces
    features = tuple(self.features)
    if not features or groups < 1 or any(w % groups for w in features):
      raise ValueError(f"Sluice needs at least one hidden layer whose widths are divisible by "
                       f"num_subspaces={groups}, got features={features!r}.")
    if self.alpha_init not in ("imbalanced", "balanced"):
      raise ValueError(f"alpha_init must be 'imbalanced' or 'balanced', got {self.alpha_init!r}.")
    if self.layer_stitch and len(set(features)) != 1:
      raise ValueError(f"layer_stitch needs equal widths in every layer, got features={features!r}.")
    x = _flatten(self.trunk(inputs) if self.trunk is not None else inputs)
    h = jnp.broadcast_to(x, (num_tasks,) + x.shape)  # [T, n, d]
    layers = []
    for layer, width in enumerate(features):
      dense = nn.vmap(nn.Dense, in_axes=0, out_axes=0, variable_axes={"params": 0},
                      split_rngs={"params": True}, axis_size=num_tasks)
      h = self.activation(dense(width, name=f"layer_{layer}")(h))
      alpha = self.param(f"sluice_{layer}", _sluice_alpha_init(groups, self.alpha_init),
                         (num_tasks * groups, num_tasks * groups), jnp.float32)
      n = h.shape[1]
      parts = h.reshape(num_tasks, n, groups, width // groups).transpose(0, 2, 1, 3)
      parts = parts.reshape(num_tasks * groups, n, width // groups)   # row t * G + g
      mixed = jnp.einsum("ij,jnd->ind", alpha.astype(h.dtype), parts)
      h = mixed.reshape(num_tasks, groups, n, width // groups).transpose(0, 2, 1, 3).reshape(
          num_tasks, n, width)
      layers.append(h)
    outputs = []
    for t, out in enumerate(num_outputs):
      rep = layers[-1][t]
      if self.layer_stitch:
        beta = self.param(f"task_{t}_layer_stitch", nn.initializers.constant(1.0 / len(features)),
                          (len(features),), jnp.float32)
        rep = sum(beta[i].astype(h.dtype) * layers[i][t] for i in range(len(features)))
      outputs.append(nn.Dense(out, name=f"task_{t}_head")(rep))
    return tuple(outputs)


def sluice_subspace_penalty(params: Any, num_subspaces: int = 2, *, weight: float = 1.0) -> jax.Array:
  r"""The subspace orthogonality penalty of sluice networks (Ruder et al., 2019, eq. 4).

  .. math::
    \Omega = \lambda \sum_{l, t} \sum_{g < g'} \| K_{l,t,g}^\top K_{l,t,g'} \|_F^2,

  with :math:`K_{l,t,g}` the columns of task ``t``'s layer-``l`` kernel that
  produce subspace ``g``: zero when every task's subspaces are built from
  orthogonal weight vectors.

  Args:
    params: the ``"params"`` of a :class:`Sluice` (its ``"layer_l"`` kernels
      ``[T, d_in, width]`` are used).
    num_subspaces: ``G``, as the module's.
    weight: ``lambda``.

  Returns:
    A scalar.
  """
  total = 0.0
  for name, subtree in params.items():
    if not re.fullmatch(r"layer_\d+", name):
      continue
    kernel = subtree["kernel"]
    num_tasks, d_in, width = kernel.shape
    blocks = kernel.reshape(num_tasks, d_in, num_subspaces, width // num_subspaces)
    for g in range(num_subspaces):
      for h in range(g + 1, num_subspaces):
        total = total + jnp.sum(jnp.einsum("tdi,tdj->tij", blocks[:, :, g], blocks[:, :, h]) ** 2)
  return weight * total
