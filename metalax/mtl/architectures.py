r"""Multi-task architectures: linen modules (params only) with one output per task.

Every network here maps ``inputs [n, ...]`` to a **tuple of T arrays**,
``outputs[t]`` of shape ``[n, num_outputs[t]]``, so tasks may have different
output widths (10 logits next to 1 regression output). When the widths agree,
``jnp.stack(outputs)`` is ``[T, n, out]``. The tuple is what
:func:`metalax.mtl.multitask_loss` takes from a multi-output model; ``T =
len(num_outputs)``.

Every network takes a **trunk**: any linen module ``inputs [n, ...] ->
features [n, ...]`` (an :class:`MLPTrunk`, a LeNet, Conv-4, a ResNet, a
user's own), params only. It sees the raw inputs (images stay images) and its
output is flattened to ``[n, d]``; without one, the inputs are flattened and
fully connected layers of the given widths are used. Where the trunk sits:
the shared bottom of :class:`HardParameterSharing`, :class:`TaskConditioned`
and the shared encoder in front of :class:`CrossStitch`, :class:`TaskRouting`
and :class:`MTAN`; the module every expert of :class:`MMoE` copies; the module
every task's column of :class:`SoftParameterSharing` copies.

* :class:`HardParameterSharing`: shared trunk + task-specific heads.
* :class:`MMoE`: multi-gate mixture of experts (Ma et al., 2018); with
  ``single_gate=True`` the one-gate OMoE; optional expert dropout against
  gate polarisation (Zhao et al., 2019).
* :class:`CrossStitch`: one network per task, activations mixed after every
  hidden layer by learned ``T x T`` cross-stitch units (Misra et al., 2016).
* :class:`TaskRouting`: one shared network, each task routed through a fixed
  random subset of each layer's units (Strezoski et al., 2019);
  :class:`TaskRoutingLayer` and :func:`task_routing_masks` are the pieces.
* :class:`SoftParameterSharing`: one network per task, tied by the penalty
  :func:`soft_sharing_penalty` on the differences of their parameters
  (Duong et al., 2015).
* :class:`MTAN`: a shared network with task-specific soft attention masks on
  its features (Liu et al., 2019), transcribed to fully connected layers.
* :class:`TaskConditioned`: one network for all tasks, conditioned on a
  one-hot task descriptor by concatenation, an additive task bias, FiLM or
  one head per task (:mod:`metalax.mtl.conditioning`), every task's output
  computed in one pass.

Which parameters are shared matters for gradient aggregation (aggregate the
shared ones with e.g. PCGrad, sum the task-specific ones): every module's
docstring names its shared and task-specific parameter subtrees, and
:func:`shared_mask` returns the mask that :func:`metalax.mtl.train_step`
takes. :class:`HardParameterSharing` and :class:`TaskConditioned` also have
``encode`` (inputs -> the shared representation ``z``) and ``decode`` (``z``
-> outputs) methods, for MGDA-UB (:func:`metalax.mtl.mgda_ub`). Networks of
``T`` parallel columns (experts, cross-stitch and soft-sharing columns, MTAN
attention) keep them stacked, ``[T, ...]`` (``[E, ...]`` for experts), in one
subtree, built with ``flax.linen.vmap``.

References:
  Caruana, Multitask Learning, Machine Learning 1997 (hard sharing).
  Ma, Zhao, Yi, Chen, Hong & Chi, Modeling Task Relationships in Multi-task
  Learning with Multi-gate Mixture-of-Experts, KDD 2018.
  Zhao et al., Recommending What Video to Watch Next: A Multitask Ranking
  System, RecSys 2019.
  Misra, Shrivastava, Gupta & Hebert, Cross-stitch Networks for Multi-task
  Learning, CVPR 2016.
  Strezoski, van Noord & Worring, Many Task Learning with Task Routing, ICCV 2019.
  Duong, Cohn, Bird & Cook, Low Resource Dependency Parsing: Cross-lingual
  Parameter Sharing in a Neural Network Parser, ACL 2015.
  Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention, CVPR 2019.
"""

import re
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from metalax.models.mlp import MLP
from metalax.mtl.conditioning import AdditiveConditioning
from metalax.mtl.conditioning import ConcatConditioning
from metalax.mtl.conditioning import FiLM
from metalax.mtl.conditioning import MultiHead

Activation = Callable[[jax.Array], jax.Array]


def _check_num_outputs(num_outputs: Sequence[int]) -> tuple[int, ...]:
  if isinstance(num_outputs, (int, np.integer)):
    raise ValueError(f"num_outputs must be a sequence with one output width per task, "
                     f"e.g. (10, 1), got the int {num_outputs}.")
  widths = tuple(num_outputs)
  if not widths or not all(isinstance(w, (int, np.integer)) and w >= 1 for w in widths):
    raise ValueError(f"num_outputs must be a non-empty sequence of positive ints (one per "
                     f"task), got {num_outputs!r}.")
  return widths


def _flatten(inputs: jax.Array) -> jax.Array:
  if inputs.ndim < 2:
    raise ValueError(f"inputs must have shape [n, ...], got {tuple(inputs.shape)}.")
  return inputs.reshape(inputs.shape[0], -1)


class _Layers(nn.Module):
  """``Dense -> activation`` for every width (no output layer)."""

  features: Sequence[int]
  activation: Activation = nn.relu

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for width in self.features:
      x = self.activation(nn.Dense(width)(x))
    return x


class MLPTrunk(nn.Module):
  """A fully connected trunk: inputs flattened, then ``Dense -> activation`` per width.

  Unlike :class:`metalax.models.MLP` it has no linear output layer: its
  output is the last hidden layer's activations, ``[n, features[-1]]``.

  Attributes:
    features: hidden widths (``()``: the flattened inputs).
    activation: applied after every layer.

  Parameters: ``"Dense_0"``, ..., ``"Dense_{L-1}"``.

  Example:
    >>> trunk = MLPTrunk(features=(32, 16))
    >>> params = trunk.init(jax.random.key(0), jnp.ones((1, 28, 28, 1)))["params"]
    >>> trunk.apply({"params": params}, jnp.ones((4, 28, 28, 1))).shape
    (4, 16)
  """

  features: Sequence[int] = (64, 64)
  activation: Activation = nn.relu

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    """``inputs [n, ...]`` -> ``[n, features[-1]]``."""
    x = _flatten(inputs)
    for width in self.features:
      x = self.activation(nn.Dense(width)(x))
    return x


def _trunk_features(trunk: nn.Module | None, default: Callable[[jax.Array], jax.Array],
                    inputs: jax.Array) -> jax.Array:
  """``trunk(inputs)`` flattened to ``[n, d]``, or ``default(flattened inputs)`` without a trunk.

  ``default`` builds its module when called, so that it is never built next to a given trunk.
  """
  if trunk is None:
    return default(_flatten(inputs))
  features = trunk(inputs)
  if not hasattr(features, "ndim") or features.ndim < 2 or features.shape[0] != inputs.shape[0]:
    raise ValueError(f"the trunk must map inputs [n, ...] to features [n, ...] with n = {inputs.shape[0]}, "
                     f"got {getattr(features, 'shape', type(features).__name__)}.")
  return _flatten(features)


def _copies(module: nn.Module, num_copies: int, inputs: jax.Array) -> jax.Array:
  """``num_copies`` copies of a (child) ``module`` on the same ``inputs``: params stacked on axis 0."""
  copies = nn.vmap(lambda m, x: m(x), variable_axes={"params": 0}, split_rngs={"params": True},
                   in_axes=None, out_axes=0, axis_size=num_copies)
  return copies(module, inputs)


def _heads(features: jax.Array | Sequence[jax.Array], num_outputs: tuple[int, ...],
           hidden: Sequence[int], activation: Activation, prefix: str) -> tuple[jax.Array, ...]:
  """One :class:`MLP` per task on ``features[t]`` (or on shared ``features``)."""
  shared = not isinstance(features, (list, tuple)) and features.ndim == 2
  return tuple(
      MLP(features=tuple(hidden), num_outputs=width, activation=activation,
          name=f"{prefix}_{t}")(features if shared else features[t])
      for t, width in enumerate(num_outputs))


def _stacked(module_class: type[nn.Module], num_columns: int, broadcast_inputs: bool):
  """``module_class`` as ``num_columns`` parallel copies with params stacked on axis 0."""
  return nn.vmap(module_class, in_axes=None if broadcast_inputs else 0, out_axes=0,
                 variable_axes={"params": 0}, split_rngs={"params": True},
                 axis_size=num_columns)


# ---------------------------------------------------------------------------
# Hard parameter sharing.


class HardParameterSharing(nn.Module):
  """A shared trunk and one head per task (Caruana, 1997).

  ``outputs[t] = head_t(trunk(x))``; the trunk is the given module, or
  ``Dense -> activation`` per width of ``trunk_features`` on the flattened
  inputs; each head is an :class:`metalax.models.MLP` with hidden widths
  ``head_features`` and ``num_outputs[t]`` outputs.

  Attributes:
    num_outputs: output width of each task's head (``T = len(num_outputs)``).
    trunk: the shared trunk, any linen module ``[n, ...] -> [n, ...]``; None
      for the fully connected one.
    trunk_features: hidden widths of the default trunk (unused with ``trunk``).
    head_features: hidden widths of each head (``()``: a linear head).
    activation: applied after every hidden layer.

  Parameters: shared ``"trunk"``; task-specific ``"head_0"``, ..., ``"head_{T-1}"``.

  Methods ``encode`` (``inputs [n, ...] -> z [n, d]``, the trunk's output) and
  ``decode`` (``z -> outputs``) split the network at the shared
  representation: ``model.apply(variables, x, method="encode")``.

  Example:
    >>> model = HardParameterSharing(num_outputs=(10, 1), trunk_features=(32,))
    >>> params = model.init(jax.random.key(0), jnp.ones((1, 5)))["params"]
    >>> [o.shape for o in model.apply({"params": params}, jnp.ones((4, 5)))]
    [(4, 10), (4, 1)]
  """

  num_outputs: Sequence[int]
  trunk: nn.Module | None = None
  trunk_features: Sequence[int] = (64, 64)
  head_features: Sequence[int] = ()
  activation: Activation = nn.relu

  @nn.compact
  def __call__(self, inputs: jax.Array, *, stage: str = "all") -> tuple[jax.Array, ...]:
    """``inputs [n, ...]`` -> ``T`` outputs ``[n, num_outputs[t]]`` (``stage``: see ``encode``/``decode``)."""
    num_outputs = _check_num_outputs(self.num_outputs)
    if stage not in ("all", "encode", "decode"):
      raise ValueError(f"stage must be all, encode or decode, got {stage!r}.")
    z = inputs
    if stage != "decode":
      z = _trunk_features(self.trunk, lambda x: _Layers(tuple(self.trunk_features), self.activation,
                                                        name="trunk")(x), inputs)
      if stage == "encode":
        return z
    return _heads(z, num_outputs, self.head_features, self.activation, "head")

  def encode(self, inputs: jax.Array) -> jax.Array:
    """``inputs [n, ...]`` -> the shared representation ``z [n, d]``."""
    return self(inputs, stage="encode")

  def decode(self, z: jax.Array) -> tuple[jax.Array, ...]:
    """The shared representation ``z [n, d]`` -> ``T`` outputs ``[n, num_outputs[t]]``."""
    return self(z, stage="decode")


# ---------------------------------------------------------------------------
# Multi-gate mixture of experts.


class MMoE(nn.Module):
  r"""Multi-gate Mixture-of-Experts, MMoE (Ma et al., 2018), and one-gate OMoE.

  ``E`` expert networks ``f_e`` see the input; each task ``t`` has a softmax
  gate over the experts, linear in the input (paper eq. 5), and a tower on its
  mixture:

  .. math::
    g^t(x) = \mathrm{softmax}(W_{g^t} x + b_{g^t}), \quad
    y_t = h^t\Bigl(\sum_e g^t(x)_e\, f_e(x)\Bigr).

  ``single_gate=True`` gives OMoE, the paper's one-gate baseline: one gate
  shared by all tasks. With one expert the gates are identically 1 and MMoE is
  the shared-bottom (:class:`HardParameterSharing`) network.

  Gates tend to polarise (one expert per task, weight near 1). Zhao et al.
  (2019) counter this by dropping experts at random during training (10% per
  expert in their ranking system): with ``expert_dropout > 0`` and
  ``deterministic=False``, every gate weight (per example, per gate, per
  expert) is dropped with that probability and the remaining weights are
  renormalised by the softmax over the kept experts (if all experts of a row
  are dropped, none is). This needs a PRNG key in the ``"dropout"``
  collection::

    outputs = model.apply({"params": params}, x, deterministic=False,
                          rngs={"dropout": key})

  and evaluation uses the default ``deterministic=True`` (no dropout, no key).
  The gate probabilities ``[G, n, E]`` (``G = 1`` for OMoE, else ``T``) are
  sown as ``intermediates["gates"]`` when the caller asks for that collection
  (``mutable=["intermediates"]``), to monitor polarisation; otherwise nothing
  is stored.

  Defaults follow the census-income setting of the keras-mmoe reference (8
  single-layer ReLU experts, a ReLU tower of 8 units per task); there, as in
  LibMTL, the gates have a bias, which the paper's eq. 5 omits (``gate_bias``).

  Attributes:
    num_outputs: output width of each task's tower (``T = len(num_outputs)``).
    experts: the module every expert is a copy of (any linen module ``[n,
      ...] -> [n, ...]``, e.g. a conv net on images; its output is
      flattened); None for ``Dense -> activation`` per width of
      ``expert_features`` on the flattened inputs.
    num_experts: number of experts ``E``.
    expert_features: hidden widths of each default expert (its output is the
      last; unused with ``experts``).
    tower_features: hidden widths of each tower before its output layer.
    single_gate: one gate for all tasks (OMoE).
    expert_dropout: probability of dropping each gate weight in training.
    gate_bias: whether the gates have a bias.
    activation: applied after every hidden layer of experts and towers.

  Parameters: shared ``"experts"`` (leaves ``[E, ...]``); task-specific
  ``"gate_t"`` (``"gate_0"`` only, shared, for OMoE) and ``"tower_t"``.

  Example:
    >>> model = MMoE(num_outputs=(2, 1), num_experts=4, expert_features=(16,))
    >>> params = model.init(jax.random.key(0), jnp.ones((1, 5)))["params"]
    >>> outputs = model.apply({"params": params}, jnp.ones((3, 5)))
    >>> [o.shape for o in outputs]
    [(3, 2), (3, 1)]

  References:
    Ma, Zhao, Yi, Chen, Hong & Chi, Modeling Task Relationships in Multi-task
    Learning with Multi-gate Mixture-of-Experts, KDD 2018.
    Zhao et al., Recommending What Video to Watch Next: A Multitask Ranking
    System, RecSys 2019.
  """

  num_outputs: Sequence[int]
  experts: nn.Module | None = None
  num_experts: int = 8
  expert_features: Sequence[int] = (16,)
  tower_features: Sequence[int] = (8,)
  single_gate: bool = False
  expert_dropout: float = 0.0
  gate_bias: bool = True
  activation: Activation = nn.relu

  @nn.compact
  def __call__(self, inputs: jax.Array, *, deterministic: bool = True) -> tuple[jax.Array, ...]:
    """Args: ``inputs [n, ...]``; ``deterministic``: False to apply expert dropout.

    Returns: ``T`` outputs ``[n, num_outputs[t]]``.
    """
    num_outputs = _check_num_outputs(self.num_outputs)
    if self.num_experts < 1 or (self.experts is None and not self.expert_features):
      raise ValueError(f"MMoE needs num_experts >= 1 and at least one expert width, got "
                       f"num_experts={self.num_experts}, expert_features="
                       f"{self.expert_features!r}.")
    if not 0.0 <= self.expert_dropout < 1.0:
      raise ValueError(f"expert_dropout must be in [0, 1), got {self.expert_dropout}.")
    x = _flatten(inputs)
    if self.experts is None:
      experts = _stacked(_Layers, self.num_experts, broadcast_inputs=True)(
          tuple(self.expert_features), self.activation, name="experts")(x)  # [E, n, d]
    else:
      experts = _copies(self.experts, self.num_experts, inputs)
      experts = experts.reshape(experts.shape[:2] + (-1,))  # [E, n, d]
    num_gates = 1 if self.single_gate else len(num_outputs)
    logits = jnp.stack([nn.Dense(self.num_experts, use_bias=self.gate_bias,
                                 name=f"gate_{g}")(x) for g in range(num_gates)])  # [G, n, E]
    if self.expert_dropout > 0.0 and not deterministic:
      keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.expert_dropout,
                                  logits.shape)
      keep = keep | ~jnp.any(keep, axis=-1, keepdims=True)
      logits = jnp.where(keep, logits, -jnp.inf)
    gates = jax.nn.softmax(logits, axis=-1)
    self.sow("intermediates", "gates", gates)
    mixtures = jnp.einsum("gne,end->gnd", gates, experts)
    if self.single_gate:
      mixtures = [mixtures[0]] * len(num_outputs)
    return _heads(list(mixtures), num_outputs, self.tower_features, self.activation, "tower")


# ---------------------------------------------------------------------------
# Cross-stitch networks.


def _cross_stitch_init(self_weight: float, other_weight: float | None):
  def init(key, shape, dtype=jnp.float32):
    del key
    num_tasks = shape[0]
    if num_tasks == 1:
      return jnp.ones(shape, dtype)
    off = (1.0 - self_weight) / (num_tasks - 1) if other_weight is None else other_weight
    eye = jnp.eye(num_tasks, dtype=dtype)
    return self_weight * eye + off * (1.0 - eye)
  return init


class CrossStitch(nn.Module):
  r"""Cross-stitch network (Misra et al., 2016): task networks mixing their activations.

  One fully connected network per task (same widths ``features``). After
  every hidden layer ``l`` a cross-stitch unit, a learned ``T x T`` matrix
  ``alpha^l``, replaces task ``t``'s activations by a linear combination of all
  tasks' activations at that layer:

  .. math::
    \tilde h^l_t = \sum_s \alpha^l_{ts}\, h^l_s ,

  (one scalar per pair of tasks and layer, shared over the layer's units, as
  the paper's eq. 1; Vandenhende et al.'s code learns one per channel), and a
  task-specific linear head reads ``h^L_t``. With
  ``alpha = I`` the networks are independent.

  Initialisation: ``alpha_tt = self_weight`` and ``alpha_ts = other_weight``
  (default ``(1 - self_weight) / (T - 1)``, so rows sum to 1). The paper
  initialises with convex combinations and reports ``(alpha_S, alpha_D) =
  (0.9, 0.1)`` as the best of those it tried, our default for ``T = 2``; the
  reference code of Vandenhende et al. also uses 0.9 / 0.1 (with 0.1 for every
  off-diagonal entry whatever ``T``: set ``other_weight=0.1``). LibMTL starts
  from all ones. The paper also trains the units with a larger learning rate
  (by a factor ``10^2``-``10^3``); with optax, ``optax.multi_transform`` on the
  ``"cross_stitch_l"`` leaves does that.

  Attributes:
    num_outputs: output width of each task's head (``T = len(num_outputs)``).
    trunk: a shared encoder in front of the task networks (any linen module
      ``[n, ...] -> [n, ...]``, output flattened); None for the flattened
      inputs.
    features: hidden widths of every task network.
    self_weight: initial diagonal of every ``alpha``.
    other_weight: initial off-diagonal; None for ``(1 - self_weight) / (T - 1)``.
    activation: applied after every hidden layer (before the cross-stitch).

  Parameters: per-task ``"layer_l"`` (stacked, leaves ``[T, ...]``) and
  ``"head_t"``; shared ``"cross_stitch_l"`` (``[T, T]``, row ``t`` mixes into
  task ``t``) and ``"trunk"``. Through the cross-stitch units every task's
  loss reaches every column, so :func:`shared_mask` counts the columns as
  shared (only the heads are task-specific).

  Example:
    >>> model = CrossStitch(num_outputs=(3, 1), features=(16, 16))
    >>> params = model.init(jax.random.key(0), jnp.ones((1, 5)))["params"]
    >>> np.allclose(params["cross_stitch_0"], [[0.9, 0.1], [0.1, 0.9]])
    True

  References:
    Misra, Shrivastava, Gupta & Hebert, Cross-stitch Networks for Multi-task
    Learning, CVPR 2016.
  """

  num_outputs: Sequence[int]
  trunk: nn.Module | None = None
  features: Sequence[int] = (64, 64)
  self_weight: float = 0.9
  other_weight: float | None = None
  activation: Activation = nn.relu

  @nn.compact
  def __call__(self, inputs: jax.Array) -> tuple[jax.Array, ...]:
    """``inputs [n, ...]`` -> ``T`` outputs ``[n, num_outputs[t]]``."""
    num_outputs = _check_num_outputs(self.num_outputs)
    num_tasks = len(num_outputs)
    x = _trunk_features(self.trunk, lambda x: x, inputs)
    h = jnp.broadcast_to(x, (num_tasks,) + x.shape)  # [T, n, d]
    for layer, width in enumerate(self.features):
      h = self.activation(_stacked(nn.Dense, num_tasks, broadcast_inputs=False)(
          width, name=f"layer_{layer}")(h))
      alpha = self.param(f"cross_stitch_{layer}",
                         _cross_stitch_init(self.self_weight, self.other_weight),
                         (num_tasks, num_tasks), jnp.float32)
      h = jnp.einsum("ts,snd->tnd", alpha.astype(h.dtype), h)
    return _heads(list(h), num_outputs, (), self.activation, "head")


# ---------------------------------------------------------------------------
# Task routing.


def task_routing_masks(
    num_tasks: int,
    num_units: int,
    sharing_ratio: float = 0.5,
    seed: int | Sequence[int] = 0,
) -> np.ndarray:
  """Fixed random binary masks over a layer's units, one per task (Strezoski et al., 2019).

  Row ``t`` switches on ``round(sharing_ratio * num_units)`` units chosen
  uniformly at random and switches the others off; the rows are independent
  draws, so on average a unit is used by ``sharing_ratio * T`` tasks. The masks
  are a deterministic function of ``seed`` (a NumPy ``default_rng`` seed), so
  they are fixed for the whole of training and evaluation and need not be
  stored with the parameters.

  ``sharing_ratio`` is the fraction of units each task *keeps*. The reference
  code instead takes the number (or fraction) ``sigma`` of units each task
  *knocks out*: ``sharing_ratio = 1 - sigma / num_units`` (they agree at 0.5,
  the paper's Figure 1 setting).

  Args:
    num_tasks: ``T``.
    num_units: the layer's width.
    sharing_ratio: fraction of the units active for each task, in ``(0, 1]``.
    seed: an int or a sequence of ints for ``numpy.random.default_rng``.

  Returns:
    ``[T, num_units]`` float32 array of zeros and ones.

  Raises:
    ValueError: on non-positive counts or a ratio that leaves no active unit.

  Example:
    >>> masks = task_routing_masks(3, 8, sharing_ratio=0.25)
    >>> masks.sum(axis=1).tolist()
    [2.0, 2.0, 2.0]
  """
  if num_tasks < 1 or num_units < 1:
    raise ValueError(f"num_tasks and num_units must be positive, got {num_tasks} and "
                     f"{num_units}.")
  if not 0.0 < sharing_ratio <= 1.0:
    raise ValueError(f"sharing_ratio must be in (0, 1], got {sharing_ratio}.")
  num_active = int(round(sharing_ratio * num_units))
  if num_active < 1:
    raise ValueError(f"sharing_ratio={sharing_ratio} keeps no unit of a layer of "
                     f"{num_units} (round({sharing_ratio} * {num_units}) = 0).")
  rng = np.random.default_rng(seed)
  active = np.argsort(rng.random((num_tasks, num_units)), axis=1)[:, :num_active]
  masks = np.zeros((num_tasks, num_units), np.float32)
  masks[np.arange(num_tasks)[:, None], active] = 1.0
  return masks


class TaskRoutingLayer(nn.Module):
  """Multiplies each example's features by its task's fixed mask (the paper's TRL).

  The masks (:func:`task_routing_masks` of ``(num_tasks, d, sharing_ratio,
  seed)``) are constants, not parameters: the layer has no variables.

  Attributes:
    num_tasks: ``T``.
    sharing_ratio: fraction of units active per task.
    seed: mask seed; give every routed layer of a network its own.

  Example:
    >>> layer = TaskRoutingLayer(num_tasks=4, seed=1)
    >>> h = layer.apply({}, jnp.ones((2, 6)), jnp.array([0, 3]))
    >>> h.sum(axis=1).tolist()
    [3.0, 3.0]
  """

  num_tasks: int
  sharing_ratio: float = 0.5
  seed: int | Sequence[int] = 0

  @nn.compact
  def __call__(self, features: jax.Array, task_ids: jax.Array | int | None = None) -> jax.Array:
    """Routes ``features``.

    Args:
      features: ``[n, ..., d]``; the mask acts on the last axis (channels).
      task_ids: ``[n]`` int task indices, one int for the batch, or None for
        all tasks.

    Returns:
      ``[n, ..., d]`` masked features; ``[T, n, ..., d]`` when ``task_ids`` is None.
    """
    masks = jnp.asarray(task_routing_masks(self.num_tasks, features.shape[-1],
                                           self.sharing_ratio, self.seed), features.dtype)
    if task_ids is None:
      return masks.reshape((self.num_tasks,) + (1,) * (features.ndim - 1) + masks.shape[1:]) \
          * features[None]
    task_ids = jnp.asarray(task_ids)
    if task_ids.ndim == 0:
      return features * masks[task_ids]
    if task_ids.shape != features.shape[:1]:
      raise ValueError(f"task_ids must have shape [n] = [{features.shape[0]}] or be a scalar, "
                       f"got {tuple(task_ids.shape)}.")
    selected = masks[task_ids]
    return features * selected.reshape(selected.shape[:1] + (1,) * (features.ndim - 2)
                                       + selected.shape[1:])


class TaskRouting(nn.Module):
  """A fully connected network with task routing after every hidden layer.

  All tasks share every weight; after each hidden layer ``l`` a
  :class:`TaskRoutingLayer` (seed ``(seed, l)``) keeps, for task ``t``, only
  its fixed subset of the layer's units, so each task trains and uses its own
  sub-network. Task ``t``'s linear head reads its routed last layer. Every
  task's path is computed (``T`` times the trunk's compute); for
  per-example routing in a task-conditioned model compose
  :class:`TaskRoutingLayer` and :class:`metalax.mtl.MultiHead` instead.

  Attributes:
    num_outputs: output width of each task's head (``T = len(num_outputs)``).
    trunk: a shared encoder in front of the routed layers (any linen module,
      output flattened); None for the flattened inputs.
    features: hidden widths.
    sharing_ratio: fraction of each layer's units active per task (the
      paper's Figure 1 uses 0.5).
    seed: seed of the masks.
    activation: applied after every hidden layer.

  Parameters: shared ``"Dense_l"`` and ``"trunk"``; task-specific
  ``"head_t"``. The masks are not parameters.

  Example:
    >>> model = TaskRouting(num_outputs=(1, 1, 1), features=(16,), sharing_ratio=0.5)
    >>> params = model.init(jax.random.key(0), jnp.ones((1, 4)))["params"]
    >>> len(model.apply({"params": params}, jnp.ones((2, 4))))
    3

  References:
    Strezoski, van Noord & Worring, Many Task Learning with Task Routing, ICCV 2019.
  """

  num_outputs: Sequence[int]
  trunk: nn.Module | None = None
  features: Sequence[int] = (64, 64)
  sharing_ratio: float = 0.5
  seed: int = 0
  activation: Activation = nn.relu

  @nn.compact
  def __call__(self, inputs: jax.Array) -> tuple[jax.Array, ...]:
    """``inputs [n, ...]`` -> ``T`` outputs ``[n, num_outputs[t]]``."""
    num_outputs = _check_num_outputs(self.num_outputs)
    num_tasks = len(num_outputs)
    h = _trunk_features(self.trunk, lambda x: x, inputs)
    for layer, width in enumerate(self.features):
      h = self.activation(nn.Dense(width, name=f"Dense_{layer}")(h))
      masks = jnp.asarray(task_routing_masks(num_tasks, width, self.sharing_ratio,
                                             (self.seed, layer)), h.dtype)
      h = masks[:, None, :] * h  # [T, n, width]; broadcasts the shared input of layer 0
    if h.ndim == 2:  # no hidden layer
      h = jnp.broadcast_to(h, (num_tasks,) + h.shape)
    return _heads(list(h), num_outputs, (), self.activation, "head")


# ---------------------------------------------------------------------------
# Soft parameter sharing.


class SoftParameterSharing(nn.Module):
  """One network per task, tied by a penalty on their differences (Duong et al., 2015).

  The task networks (``Dense -> activation`` per width of ``features``) share
  no weights; their hidden layers are kept stacked in ``params["columns"]``
  (leaves ``[T, ...]``) so that :func:`soft_sharing_penalty` can pull
  corresponding parameters together. Train on ``total_loss + lam *
  soft_sharing_penalty(params["columns"])`` with ``lam`` a hyperparameter
  (``lam = 0``: independent networks; ``lam -> inf``: hard sharing of the
  hidden layers). The output heads, whose widths may differ, are not
  penalised.

  Attributes:
    num_outputs: output width of each task's head (``T = len(num_outputs)``).
    columns: the module every task's network is a copy of (any linen module
      ``[n, ...] -> [n, ...]``, output flattened); None for ``Dense ->
      activation`` per width of ``features`` on the flattened inputs.
    features: hidden widths of every default task network (unused with
      ``columns``).
    activation: applied after every hidden layer.

  Parameters: task-specific ``"columns"`` (leaves ``[T, ...]``) and ``"head_t"``.

  Example:
    >>> model = SoftParameterSharing(num_outputs=(2, 2), features=(8,))
    >>> params = model.init(jax.random.key(0), jnp.ones((1, 3)))["params"]
    >>> params["columns"]["Dense_0"]["kernel"].shape
    (2, 3, 8)

  References:
    Duong, Cohn, Bird & Cook, Low Resource Dependency Parsing: Cross-lingual
    Parameter Sharing in a Neural Network Parser, ACL 2015.
  """

  num_outputs: Sequence[int]
  columns: nn.Module | None = None
  features: Sequence[int] = (64, 64)
  activation: Activation = nn.relu

  @nn.compact
  def __call__(self, inputs: jax.Array) -> tuple[jax.Array, ...]:
    """``inputs [n, ...]`` -> ``T`` outputs ``[n, num_outputs[t]]``."""
    num_outputs = _check_num_outputs(self.num_outputs)
    if self.columns is None:
      h = _stacked(_Layers, len(num_outputs), broadcast_inputs=True)(
          tuple(self.features), self.activation, name="columns")(_flatten(inputs))
    else:
      h = _copies(self.columns, len(num_outputs), inputs)
      h = h.reshape(h.shape[:2] + (-1,))  # [T, n, d]
    return _heads(list(h), num_outputs, (), self.activation, "head")


def soft_sharing_penalty(task_params: Any, *, weight: float = 1.0) -> jax.Array:
  r"""L2 penalty between corresponding parameters of the task networks.

  .. math::
    \Omega = \lambda \sum_{i<j} \|\theta_i - \theta_j\|_2^2
           = \lambda\, T \sum_i \|\theta_i - \bar\theta\|_2^2 ,

  summed over every parameter; for two tasks, Duong et al.'s
  ``||theta_1 - theta_2||^2``. Zero exactly when all task networks are
  identical.

  Args:
    task_params: the task networks' parameters, either stacked (a pytree whose
      leaves are ``[T, ...]``, e.g. ``params["columns"]`` of
      :class:`SoftParameterSharing`) or a list/tuple of ``T`` pytrees of the
      same structure and shapes.
    weight: ``lambda``, the penalty weight (a hyperparameter).

  Returns:
    A scalar.

  Raises:
    ValueError: if the leaves do not share a leading task axis, or the per-task
      pytrees differ in structure.

  Example:
    >>> soft_sharing_penalty([{"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([0.0, 0.0])}])
    Array(5., dtype=float32)
  """
  if isinstance(task_params, (list, tuple)):
    structures = {jax.tree.structure(p) for p in task_params}
    if len(task_params) == 0 or len(structures) != 1:
      raise ValueError("task_params given as a sequence must hold T >= 1 pytrees of the same "
                       f"structure, got {len(task_params)} with {len(structures)} structures.")
    task_params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *task_params)
  leaves = jax.tree.leaves(task_params)
  if not leaves:
    raise ValueError("task_params has no leaves.")
  leading = {leaf.shape[0] if getattr(leaf, "ndim", 0) >= 1 else None for leaf in leaves}
  if len(leading) != 1 or None in leading:
    raise ValueError("every leaf of stacked task_params must have the same leading task axis "
                     f"[T, ...]; got leaf shapes {[tuple(jnp.shape(x)) for x in leaves]}.")
  num_tasks = leading.pop()
  total = 0.0
  for leaf in leaves:
    flat = leaf.reshape(num_tasks, -1)
    # Pairs (i, i + k) for every offset k: exact differences (so exactly 0 for
    # identical networks) in O(T) memory.
    for offset in range(1, num_tasks):
      total = total + jnp.sum(jnp.square(flat[:-offset] - flat[offset:]))
  return weight * total


# ---------------------------------------------------------------------------
# MTAN.


class _AttentionColumn(nn.Module):
  """One task's attention modules over the shared layers of :class:`MTAN`."""

  features: Sequence[int]
  activation: Activation

  @nn.compact
  def __call__(self, pre_activations: Sequence[jax.Array],
               activations: Sequence[jax.Array]) -> jax.Array:
    attended = None
    for layer, (u, p) in enumerate(zip(pre_activations, activations)):
      width = self.features[layer]
      if attended is None:
        a_in = u
      else:
        f = self.activation(nn.Dense(width, name=f"merge_{layer}")(attended))
        a_in = jnp.concatenate([u, f], axis=-1)
      hidden = self.activation(nn.Dense(width, name=f"attention_{layer}_0")(a_in))
      mask = jax.nn.sigmoid(nn.Dense(width, name=f"attention_{layer}_1")(hidden))
      attended = mask * p
    return attended


class MTAN(nn.Module):
  r"""Multi-Task Attention Network (Liu et al., 2019) on fully connected layers.

  A shared network computes, per hidden layer ``j``, pre-activations ``u^j`` and
  features ``p^j = activation(u^j)``. Each task ``t`` has an attention module
  per layer that outputs a soft mask ``a^j_t \in (0, 1)`` over ``p^j``'s units
  from the shared features and the task's own previous attended features:

  .. math::
    a^j_t = \sigma\bigl(W_2\, \phi(W_1 [u^j; \phi(W_f \hat a^{j-1}_t)])\bigr),
    \qquad \hat a^j_t = a^j_t \odot p^j ,

  (``[u^1]`` alone at the first layer), and a linear head reads ``\hat a^L_t``.
  This transcribes the paper's convolutional attention block (two 1x1
  convolutions ending in a sigmoid, ``g`` and ``h``, after a 3x3 convolution
  ``f`` of the previous attended features) to dense layers. When every mask
  is 1 the network is :class:`HardParameterSharing` with linear heads.

  Attributes:
    num_outputs: output width of each task's head (``T = len(num_outputs)``).
    trunk: a shared encoder in front of the attended layers (any linen
      module, output flattened); None for the flattened inputs.
    features: hidden widths of the shared network (and of the attention).
    activation: ``phi``, after every hidden layer.

  Parameters: shared ``"Dense_j"`` and ``"trunk"``; task-specific
  ``"attention"`` (stacked, leaves ``[T, ...]``) and ``"head_t"``.

  Example:
    >>> model = MTAN(num_outputs=(3, 1), features=(16, 16))
    >>> params = model.init(jax.random.key(0), jnp.ones((1, 5)))["params"]
    >>> [o.shape for o in model.apply({"params": params}, jnp.ones((2, 5)))]
    [(2, 3), (2, 1)]

  References:
    Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention, CVPR 2019.
  """

  num_outputs: Sequence[int]
  trunk: nn.Module | None = None
  features: Sequence[int] = (64, 64)
  activation: Activation = nn.relu

  @nn.compact
  def __call__(self, inputs: jax.Array) -> tuple[jax.Array, ...]:
    """``inputs [n, ...]`` -> ``T`` outputs ``[n, num_outputs[t]]``."""
    num_outputs = _check_num_outputs(self.num_outputs)
    if not self.features:
      raise ValueError("MTAN needs at least one hidden layer (features is empty).")
    h = _trunk_features(self.trunk, lambda x: x, inputs)
    pre_activations, activations = [], []
    for layer, width in enumerate(self.features):
      u = nn.Dense(width, name=f"Dense_{layer}")(h)
      h = self.activation(u)
      pre_activations.append(u)
      activations.append(h)
    attended = _stacked(_AttentionColumn, len(num_outputs), broadcast_inputs=True)(
        tuple(self.features), self.activation, name="attention")(pre_activations, activations)
    return _heads(list(attended), num_outputs, (), self.activation, "head")


# ---------------------------------------------------------------------------
# Task-conditioned networks.


CONDITIONINGS = ("concat", "additive", "film", "multi_head")
"""The ways :class:`TaskConditioned` injects the task descriptor."""


class TaskConditioned(nn.Module):
  r"""One network for every task, conditioned on the task: ``f(x, z_t)``, ``z_t`` one-hot.

  A shared trunk computes ``h = trunk(x) [n, d]``; a conditioned decoder then
  gives task ``t``'s output from ``h`` and the one-hot descriptor ``z_t``:

  * ``"concat"``: ``Dense(act(W [h; z_t] + b))`` (:class:`~metalax.mtl.ConcatConditioning`);
  * ``"additive"``: ``Dense(act(W_h h + W_z z_t + b))``, a task-dependent bias
    (:class:`~metalax.mtl.AdditiveConditioning`; the same function class as concat);
  * ``"film"``: ``Dense(act(gamma(z_t) * (W h + b) + beta(z_t)))``
    (:class:`~metalax.mtl.FiLM`, Perez et al., 2018);
  * ``"multi_head"``: one linear head per task on ``h``
    (:class:`~metalax.mtl.MultiHead`), i.e. hard parameter sharing.

  Every task's output is computed in one vectorised pass (``h`` tiled ``T``
  times with the descriptors), so the module has the same interface as the
  other architectures: ``inputs [n, ...]`` -> a tuple of ``T`` arrays ``[n,
  num_outputs[t]]``. The decoder's output layer has ``max(num_outputs)``
  units; task ``t`` reads its first ``num_outputs[t]``. For per-example task
  indices (one task per row, :func:`metalax.mtl.multitask_loss` with
  ``conditioned=True``) compose the layers of :mod:`metalax.mtl.conditioning`
  directly.

  Attributes:
    num_outputs: output width of each task (``T = len(num_outputs)``).
    conditioning: one of :data:`CONDITIONINGS`.
    trunk: the shared trunk (any linen module, output flattened); None for
      ``Dense -> activation`` per width of ``trunk_features``.
    trunk_features: hidden widths of the default trunk.
    features: width of the conditioned hidden layer (not used by
      ``"multi_head"``).
    activation: applied after every hidden layer.

  Parameters (all shared except ``"heads"``): ``"trunk"``; ``"conditioned"``
  (the conditioning layer) and ``"output"`` (concat, additive, film), plus
  ``"dense"`` (film); ``"heads"`` (multi_head, ``[T, ...]``, task-specific).

  ``encode`` (``inputs -> z [n, d]``, the trunk's output) and ``decode``
  (``z -> outputs``) split the network at the shared representation.

  Example:
    >>> model = TaskConditioned(num_outputs=(10, 1), conditioning="film", trunk_features=(16,))
    >>> params = model.init(jax.random.key(0), jnp.ones((1, 5)))["params"]
    >>> [o.shape for o in model.apply({"params": params}, jnp.ones((3, 5)))]
    [(3, 10), (3, 1)]

  References:
    Perez, Strub, de Vries, Dumoulin & Courville, FiLM: Visual Reasoning with
    a General Conditioning Layer, AAAI 2018.
    Dumoulin et al., Feature-wise transformations, Distill 2018.
  """

  num_outputs: Sequence[int]
  conditioning: str = "film"
  trunk: nn.Module | None = None
  trunk_features: Sequence[int] = (64,)
  features: int = 64
  activation: Activation = nn.relu

  @nn.compact
  def __call__(self, inputs: jax.Array, *, stage: str = "all") -> tuple[jax.Array, ...]:
    """``inputs [n, ...]`` -> ``T`` outputs ``[n, num_outputs[t]]`` (``stage``: see ``encode``/``decode``)."""
    num_outputs = _check_num_outputs(self.num_outputs)
    if self.conditioning not in CONDITIONINGS:
      raise ValueError(f"conditioning must be one of {', '.join(CONDITIONINGS)}, got {self.conditioning!r}.")
    if stage not in ("all", "encode", "decode"):
      raise ValueError(f"stage must be all, encode or decode, got {stage!r}.")
    h = inputs
    if stage != "decode":
      h = _trunk_features(self.trunk, lambda x: _Layers(tuple(self.trunk_features), self.activation,
                                                        name="trunk")(x), inputs)
      if stage == "encode":
        return h
    h = _flatten(h)
    num_tasks, n, width = len(num_outputs), h.shape[0], max(num_outputs)
    task_ids = jnp.repeat(jnp.arange(num_tasks, dtype=jnp.int32), n)  # [T n]: copy t of h is task t's
    tiled = jnp.tile(h, (num_tasks, 1))
    if self.conditioning == "multi_head":
      outputs = MultiHead(num_tasks, width, name="heads")(tiled, task_ids)
    else:
      z = jax.nn.one_hot(task_ids, num_tasks, dtype=h.dtype)
      if self.conditioning == "concat":
        hidden = ConcatConditioning(self.features, name="conditioned")(tiled, z)
      elif self.conditioning == "additive":
        hidden = AdditiveConditioning(self.features, name="conditioned")(tiled, z)
      else:
        hidden = FiLM(name="conditioned")(nn.Dense(self.features, name="dense")(tiled), z)
      outputs = nn.Dense(width, name="output")(self.activation(hidden))
    outputs = outputs.reshape(num_tasks, n, width)
    return tuple(outputs[t, :, :w] for t, w in enumerate(num_outputs))

  def encode(self, inputs: jax.Array) -> jax.Array:
    """``inputs [n, ...]`` -> the shared representation ``z [n, d]``."""
    return self(inputs, stage="encode")

  def decode(self, z: jax.Array) -> tuple[jax.Array, ...]:
    """The shared representation ``z [n, d]`` -> ``T`` outputs ``[n, num_outputs[t]]``."""
    return self(z, stage="decode")


# ---------------------------------------------------------------------------
# Shared and task-specific parameters.


_TASK_SPECIFIC = re.compile(r"^(head|tower)_\d+$|^(attention|columns|heads)$")
_DESCRIPTOR_KERNELS = (("task", "kernel"), ("scale", "kernel"), ("shift", "kernel"))


def shared_mask(params: Any) -> Any:
  """Which parameters of an architecture here several tasks' losses reach: the mask ``train_step`` takes.

  ``True`` for a shared parameter, ``False`` for a task-specific one, decided
  by the top-level name: task-specific are the heads and towers
  (``"head_t"``, ``"tower_t"``), MMoE's gates when there is one per task
  (``"gate_t"`` with more than one gate; OMoE's single ``"gate_0"`` is
  shared), the last cross-stitch unit (its row ``t`` feeds task ``t``'s head
  only), MTAN's ``"attention"``, the ``"columns"`` of soft parameter
  sharing (tied only by the penalty), the ``"heads"`` of
  :class:`TaskConditioned` and the kernels its one-hot descriptor multiplies
  (additive conditioning's ``"task"``, FiLM's ``"scale"`` and ``"shift"``:
  task ``t`` reaches row ``t`` only); everything else (trunks, experts,
  cross-stitch columns and units, routed and attended layers, the
  concatenation kernel, whose input rows all tasks reach) is shared. (Tested:
  a parameter is marked shared exactly when two tasks' gradients are non-zero
  at one of its entries.)

  Args:
    params: the ``"params"`` collection of one of this module's architectures
      (a dict by top-level name).

  Returns:
    A pytree of bools with the structure of ``params``.

  Raises:
    ValueError: if ``params`` is not a dict of subtrees.

  Example:
    >>> model = HardParameterSharing(num_outputs=(2, 2), trunk_features=(4,))
    >>> params = model.init(jax.random.key(0), jnp.ones((1, 3)))["params"]
    >>> mask = shared_mask(params)
    >>> mask["trunk"]["Dense_0"]["kernel"], mask["head_0"]["head"]["kernel"]
    (True, False)
  """
  if not hasattr(params, "items"):
    raise ValueError(f"params must be a dict of parameter subtrees by name, got {type(params).__name__}.")
  num_gates = sum(1 for name in params if re.fullmatch(r"gate_\d+", name))
  units = [int(name.split("_")[-1]) for name in params if re.fullmatch(r"cross_stitch_\d+", name)]

  def shared(name):
    if re.fullmatch(r"gate_\d+", name):
      return num_gates == 1
    if units and name == f"cross_stitch_{max(units)}":
      return False  # the last unit's row t feeds task t's head only
    return not _TASK_SPECIFIC.match(name)

  def leaf_shared(path, _):
    keys = tuple(getattr(k, "key", k) for k in path)
    if keys[:1] == ("conditioned",) and keys[1:] in _DESCRIPTOR_KERNELS:
      return False  # the rows a one-hot descriptor picks: task t's row only
    return flags[keys[0]]

  flags = {name: shared(name) for name in params}
  return jax.tree_util.tree_map_with_path(leaf_shared, dict(params))
