"""What the multi-task experiments share: registries, the config fields and one training function.

``experiments.mmoe``, ``experiments.gradnorm`` and ``experiments.multimnist``
compose a run from these plain dicts (a name, or ``package.module:attribute``
for a user's own, through :func:`metalax.training.lookup`):

* ``--config.architecture`` (:data:`ARCHITECTURES`): ``hard_sharing``,
  ``mmoe``, ``omoe``, ``cross_stitch``, ``task_routing``, ``soft_sharing``,
  ``mtan``, the task-conditioned ``concat``, ``additive``, ``film``,
  ``multi_head``, and the expert networks ``cgc``, ``ple``, ``dselect_k``,
  ``sluice``. A user's own: ``constructor(num_outputs, trunk, config)``
  returning a linen module ``inputs [n, ...] -> T outputs [n, num_outputs[t]]``
  (every parameter is then treated as shared).
* ``--config.trunk`` (:data:`TRUNKS`): ``mlp`` (the architecture's own fully
  connected layers, widths ``mlp_features``), ``lenet`` (Sener & Koltun's
  MultiLeNet encoder), ``conv4``, ``resnet12``, or a user's own linen module
  class / instance / constructor of no argument. Where the trunk goes: see
  :mod:`metalax.mtl.architectures` (the shared bottom, the expert every expert
  copies, the column every task copies, the encoder in front of cross-stitch,
  task-routing and MTAN layers).
* ``--config.method`` (:data:`WEIGHTINGS`, :data:`AGGREGATORS`): a loss
  weighting, a gradient aggregator, ``weighting+aggregator`` (e.g.
  ``uncertainty+pcgrad``), ``single_<t>`` (task ``t`` alone), or a user's own
  ``constructor(config, num_tasks, key)`` returning a
  :class:`metalax.mtl.LossWeighting` or an aggregator.
* ``--config.scheduling`` (:data:`SCHEDULINGS`): ``uniform``,
  ``proportional`` (to each task's number of examples) or ``temperature``
  (``scheduling_temperature``), the distribution of the ``tasks_per_step``
  tasks trained at each step (0: every task at every step).
* ``--config.dataset`` (:data:`DATASETS`): ``multimnist``, ``mmoe`` (Ma et
  al.'s synthetic regression pair at ``mmoe.correlations[0]``), ``gradnorm``
  (Chen et al.'s toy regression tasks, fresh samples every step), or a user's
  own ``load(config) -> MultitaskData``.

:func:`train_seeds` trains ``num_seeds`` copies side by side (one
``jax.vmap``) with :func:`metalax.mtl.train_step`, the batch split across
devices by :func:`metalax.parallel.shard_batch`, and
:func:`metalax.training.train_loop` (orbax checkpoints, exact resume,
``metrics.jsonl`` and TensorBoard).
"""

import math
import re
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import metalax
from metalax import mtl
from metalax import parallel
from metalax import training
from metalax.types import Batch


# --- data ---------------------------------------------------------------------------------------------------

class MultitaskData(NamedTuple):
  """A multi-task dataset with shared inputs: every example is labelled for every task.

  Attributes:
    train: ``Batch(inputs [n, ...], labels=(y_1 [n, ...], ..., y_T [n, ...]))``, or None when
      ``sample`` generates training batches. uint8 inputs are images, scaled to float32 ``[0, 1]`` per batch.
    test: the same layout, the held-out examples.
    task_losses: ``T`` per-example losses ``loss(outputs [n, ...], labels [n, ...]) -> [n]``.
    num_outputs: ``T`` output widths.
    classification: ``T`` flags: report accuracy (True) or the loss (False) on ``test``.
    sample: ``sample(key, batch_size) -> Batch``, fresh training examples; None to draw from ``train``.
    sizes: ``[T]`` training examples per task, for proportional scheduling; None for equal sizes.
  """

  train: Batch | None
  test: Batch
  task_losses: tuple[Callable[[jax.Array, jax.Array], jax.Array], ...]
  num_outputs: tuple[int, ...]
  classification: tuple[bool, ...]
  sample: Callable[[jax.Array, int], Batch] | None = None
  sizes: tuple[int, ...] | None = None


def multi_mnist(images: np.ndarray, labels: np.ndarray, num_examples: int, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """Two digits per image, as Sener & Koltun's loader: ``images [n, 28, 28, 1]`` uint8, ``labels [n, 2]``.

  Digit ``i`` at the top left of a 36x36 canvas and a random other digit shifted by 6 pixels down and right,
  overlapping with a pixel-wise max, then resized to 28x28 by nearest neighbour. Labels: (left, right).
  """
  rng = np.random.default_rng(seed)
  left = rng.permutation(images.shape[0])[:num_examples]
  right = rng.integers(0, images.shape[0], num_examples)
  canvas = np.zeros((num_examples, 36, 36), np.uint8)
  canvas[:, :28, :28] = images[left, :, :, 0]
  canvas[:, 6:34, 6:34] = np.maximum(canvas[:, 6:34, 6:34], images[right, :, :, 0])
  rows = np.floor((np.arange(28) + 0.5) * 36 / 28).astype(int)
  return canvas[:, rows][:, :, rows][..., None], np.stack([labels[left], labels[right]], axis=1).astype(np.int32)


def load_multimnist(config: ml_collections.ConfigDict) -> MultitaskData:
  """MultiMNIST from the MNIST files in ``--config.data_dir`` (else the loaders' convention); uint8 images."""
  settings = config.multimnist
  data_dir = config.data_dir or None
  splits = {}
  for split, size, offset in (("train", settings.num_train, 0), ("test", settings.num_test, 1)):
    images, labels = multi_mnist(*metalax.data.load_mnist(data_dir, split, download=config.download), size,
                                 settings.data_seed + offset)
    splits[split] = Batch(jnp.asarray(images), (jnp.asarray(labels[:, 0]), jnp.asarray(labels[:, 1])))
  ce = metalax.losses.cross_entropy
  return MultitaskData(splits["train"], splits["test"], (ce, ce), (10, 10), (True, True))


def mmoe_data(key: jax.Array, split: int, num_examples: int, p: float, mmoe: ml_collections.ConfigDict
              ) -> tuple[jax.Array, jax.Array]:
  """Ma et al.'s two regression tasks with correlation set by ``p``: inputs ``[n, d]``, labels ``[n, 2]``.

  ``u1, u2`` orthonormal; ``w1 = c u1``, ``w2 = c (p u1 + sqrt(1 - p^2) u2)``;
  ``y_t = w_t^T x + sum_i sin(alpha_i w_t^T x + beta_i) + noise``, ``alpha_i = i``, ``beta_i = (i - 1)^2``
  (the google-research generator's choice). ``key`` fixes ``u1, u2`` (one task pair per seed); the examples
  of split number ``split`` come from ``fold_in(key, split)``.
  """
  key_basis, key_x, key_noise = jax.random.split(jax.random.fold_in(key, 0), 3)
  basis, _ = jnp.linalg.qr(jax.random.normal(key_basis, (mmoe.dim, 2)))
  u1, u2 = basis[:, 0], basis[:, 1]
  w = mmoe.scale * jnp.stack([u1, p * u1 + np.sqrt(1.0 - p**2) * u2], axis=1)  # [d, 2]
  key_x, key_noise = jax.random.fold_in(key_x, split), jax.random.fold_in(key_noise, split)
  x = jax.random.normal(key_x, (num_examples, mmoe.dim))
  dots = x @ w  # [n, 2]
  alphas = jnp.arange(1, mmoe.num_sinusoids + 1, dtype=jnp.float32)
  betas = jnp.arange(mmoe.num_sinusoids, dtype=jnp.float32) ** 2
  y = dots + jnp.sum(jnp.sin(alphas * dots[..., None] + betas), axis=-1)
  return x, y + mmoe.noise_std * jax.random.normal(key_noise, y.shape)


def regression_batch(inputs: jax.Array, labels: jax.Array) -> Batch:
  """``labels [n, T]`` (or ``[n, T, d]``) as a :class:`Batch` with ``T`` label arrays ``[n, 1]`` (``[n, d]``)."""
  return Batch(inputs, tuple(labels[:, t:t + 1] if labels.ndim == 2 else labels[:, t]
                             for t in range(labels.shape[1])))


def load_mmoe(config: ml_collections.ConfigDict) -> MultitaskData:
  """The MMoE benchmark's task pair at ``mmoe.correlations[0]`` (one pair, from ``--config.seed``)."""
  mmoe, p = config.mmoe, config.mmoe.correlations[0]
  key = jax.random.key(config.seed)
  train = regression_batch(*mmoe_data(key, 0, mmoe.num_train, p, mmoe))
  test = regression_batch(*mmoe_data(key, 2, mmoe.num_test, p, mmoe))
  se = metalax.losses.squared_error
  return MultitaskData(train, test, (se, se), (1, 1), (False, False))


TOY_INPUTS = ("normal", "unit_uniform")


def toy_tasks(key: jax.Array, toy: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(B [out, in], eps [T, out, in], sigmas [T])`` of GradNorm's toy problem (fixed for all seeds)."""
  key_b, key_eps = jax.random.split(key)
  b = toy.b_std * jax.random.normal(key_b, (toy.output_dim, toy.input_dim))
  eps = toy.eps_std * jax.random.normal(key_eps, (toy.num_tasks, toy.output_dim, toy.input_dim))
  sigmas = jnp.logspace(0.0, np.log10(toy.max_sigma), toy.num_tasks)
  return b, eps, sigmas


def toy_batch(key: jax.Array, tasks: tuple[jax.Array, jax.Array, jax.Array], num_examples: int, input_dim: int,
              inputs: str = "unit_uniform") -> Batch:
  """Inputs ``x [n, in]`` and ``T`` targets ``sigma_t tanh((B + eps_t) x)`` ``[n, out]``.

  ``inputs="unit_uniform"``: ``x ~ U(-1, 1)^in`` scaled to unit norm (the input of the public PyTorch
  reimplementation ``brianlan/pytorch-grad-norm``; the paper does not give it); ``"normal"``: ``x ~ N(0, I)``,
  pre-activations ``sqrt(in)`` times larger.
  """
  b, eps, sigmas = tasks
  if inputs == "normal":
    x = jax.random.normal(key, (num_examples, input_dim))
  elif inputs == "unit_uniform":
    x = jax.random.uniform(key, (num_examples, input_dim), minval=-1.0, maxval=1.0)
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
  else:
    raise ValueError(f"--config.toy.inputs must be one of {', '.join(TOY_INPUTS)}, got {inputs!r}.")
  y = sigmas[:, None, None] * jnp.tanh(jnp.einsum("toi,ni->tno", b + eps, x))  # [T, n, out]
  return Batch(x, tuple(y))


def load_gradnorm(config: ml_collections.ConfigDict) -> MultitaskData:
  """GradNorm's toy problem: tasks fixed by ``seed + 7``, ``toy.num_test`` test examples from ``seed + 8``,
  fresh training examples every step."""
  toy = config.toy
  tasks = toy_tasks(jax.random.key(config.seed + 7), toy)
  test = toy_batch(jax.random.key(config.seed + 8), tasks, toy.num_test, toy.input_dim, toy.inputs)
  sample = lambda key, batch_size: toy_batch(key, tasks, batch_size, toy.input_dim, toy.inputs)
  se = metalax.losses.squared_error
  return MultitaskData(None, test, (se,) * toy.num_tasks, (toy.output_dim,) * toy.num_tasks,
                       (False,) * toy.num_tasks, sample=sample)


DATASETS: dict[str, Callable[[ml_collections.ConfigDict], MultitaskData]] = {
    "multimnist": load_multimnist,
    "mmoe": load_mmoe,
    "gradnorm": load_gradnorm,
}
"""``--config.dataset``: ``load(config) -> MultitaskData``."""


def load_dataset(config: ml_collections.ConfigDict) -> MultitaskData:
  """The dataset ``config.dataset`` names, checked."""
  data = training.lookup(DATASETS, config.dataset, "--config.dataset")(config)
  if not isinstance(data, MultitaskData):
    raise ValueError(f"--config.dataset={config.dataset!r} must return experiments.multitask.MultitaskData, got "
                     f"{type(data).__name__}.")
  num_tasks = len(data.task_losses)
  if not (len(data.num_outputs) == len(data.classification) == len(data.test.labels) == num_tasks):
    raise ValueError(f"--config.dataset={config.dataset!r}: task_losses, num_outputs, classification and "
                     f"test.labels must each have one entry per task, got {len(data.task_losses)}, "
                     f"{len(data.num_outputs)}, {len(data.classification)}, {len(data.test.labels)}.")
  if data.train is None and data.sample is None:
    raise ValueError(f"--config.dataset={config.dataset!r} gives neither train examples nor a sampler.")
  return data


# --- trunks and architectures -------------------------------------------------------------------------------

class LeNetTrunk(nn.Module):
  """Sener & Koltun's MultiLeNet encoder: conv 10@5x5, pool, conv 20@5x5, pool, dense 50 (ReLUs).

  ``inputs [n, 28, 28, 1]`` -> ``[n, 50]``; the last layer is named ``"last"``.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(nn.max_pool(nn.Conv(10, (5, 5), padding="VALID")(x), (2, 2), (2, 2)))
    x = nn.relu(nn.max_pool(nn.Conv(20, (5, 5), padding="VALID")(x), (2, 2), (2, 2)))
    return nn.relu(nn.Dense(50, name="last")(x.reshape(x.shape[0], -1)))


TRUNKS: dict[str, Callable[[], nn.Module | None]] = {
    "mlp": lambda: None,  # the architecture's own fully connected layers, widths --config.mlp_features
    "lenet": LeNetTrunk,
    "conv4": lambda: metalax.models.Conv4(num_outputs=None),
    "resnet12": lambda: metalax.models.ResNet12(num_outputs=None),
}
"""``--config.trunk``: a constructor of no argument returning a linen module (None: fully connected)."""


def make_trunk(config: ml_collections.ConfigDict) -> nn.Module | None:
  """The trunk ``config.trunk`` names: None for ``mlp``, else a linen module."""
  trunk = training.lookup(TRUNKS, config.trunk, "--config.trunk")
  if isinstance(trunk, nn.Module):
    return trunk
  if not callable(trunk):
    raise ValueError(f"--config.trunk={config.trunk!r} must name a linen module or a constructor of one.")
  module = trunk()
  if module is not None and not isinstance(module, nn.Module):
    raise ValueError(f"--config.trunk={config.trunk!r} built a {type(module).__name__}, not a linen module.")
  return module


class Architecture(NamedTuple):
  """A built multi-task network and how to train it.

  Attributes:
    module: linen module, ``inputs [n, ...] -> T outputs [n, num_outputs[t]]``.
    shared: the shared-parameter mask function for :func:`metalax.mtl.train_step`.
    regularizer: ``regularizer(params) -> []`` added to the objective, or None.
    stochastic: whether training calls the module with ``deterministic=False`` and a ``"dropout"`` key.
  """

  module: nn.Module
  shared: Callable[[Any], Any]
  regularizer: Callable[[Any], jax.Array] | None = None
  stochastic: bool = False


def _widths(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  return tuple(config.mlp_features)


def _hard_sharing(num_outputs, trunk, config):
  return Architecture(mtl.HardParameterSharing(num_outputs, trunk=trunk, trunk_features=_widths(config),
                                               head_features=tuple(config.head_features)), mtl.shared_mask)


def _moe(single_gate):
  def build(num_outputs, trunk, config):
    module = mtl.MMoE(num_outputs, experts=trunk, num_experts=config.num_experts, expert_features=_widths(config),
                      tower_features=tuple(config.head_features), single_gate=single_gate,
                      expert_dropout=config.expert_dropout)
    return Architecture(module, mtl.shared_mask, stochastic=config.expert_dropout > 0)
  return build


def _cross_stitch(num_outputs, trunk, config):
  return Architecture(mtl.CrossStitch(num_outputs, trunk=trunk, features=_widths(config)), mtl.shared_mask)


def _task_routing(num_outputs, trunk, config):
  return Architecture(mtl.TaskRouting(num_outputs, trunk=trunk, features=_widths(config),
                                      sharing_ratio=config.sharing_ratio), mtl.shared_mask)


def _soft_sharing(num_outputs, trunk, config):
  module = mtl.SoftParameterSharing(num_outputs, columns=trunk, features=_widths(config))
  weight = config.soft_sharing_weight
  penalty = (lambda params: mtl.soft_sharing_penalty(params["columns"], weight=weight)) if weight > 0 else None
  return Architecture(module, mtl.shared_mask, penalty)


def _mtan(num_outputs, trunk, config):
  return Architecture(mtl.MTAN(num_outputs, trunk=trunk, features=_widths(config)), mtl.shared_mask)


def _conditioned(conditioning):
  def build(num_outputs, trunk, config):
    module = mtl.TaskConditioned(num_outputs, conditioning=conditioning, trunk=trunk,
                                 trunk_features=_widths(config), features=config.conditioned_features)
    return Architecture(module, mtl.shared_mask)
  return build


def _cgc(num_outputs, trunk, config):
  module = mtl.CGC(num_outputs, experts=trunk, expert_features=_widths(config),
                   tower_features=tuple(config.head_features))
  return Architecture(module, mtl.experts_shared_mask)


def _ple(num_outputs, trunk, config):
  module = mtl.PLE(num_outputs, experts=trunk, expert_features=_widths(config),
                   tower_features=tuple(config.head_features))
  return Architecture(module, mtl.experts_shared_mask)


def _dselect_k(num_outputs, trunk, config):
  module = mtl.DSelectK(num_outputs, experts=trunk, num_experts=config.num_experts, expert_features=_widths(config),
                        tower_features=tuple(config.head_features))
  return Architecture(module, mtl.experts_shared_mask)


def _sluice(num_outputs, trunk, config):
  return Architecture(mtl.Sluice(num_outputs, trunk=trunk, features=_widths(config)), mtl.experts_shared_mask)


ARCHITECTURES: dict[str, Callable[..., Architecture]] = {
    "hard_sharing": _hard_sharing,
    "mmoe": _moe(single_gate=False),
    "omoe": _moe(single_gate=True),
    "cross_stitch": _cross_stitch,
    "task_routing": _task_routing,
    "soft_sharing": _soft_sharing,
    "mtan": _mtan,
    **{name: _conditioned(name) for name in mtl.architectures.CONDITIONINGS},
    "cgc": _cgc,
    "ple": _ple,
    "dselect_k": _dselect_k,
    "sluice": _sluice,
}
"""``--config.architecture``: ``build(num_outputs, trunk, config) -> Architecture``."""

ENCODE_DECODE = ("hard_sharing", "concat", "additive", "film", "multi_head")
"""Architectures with ``encode``/``decode`` methods (a shared representation): the ones MGDA-UB runs on."""


def make_architecture(config: ml_collections.ConfigDict, num_outputs: tuple[int, ...],
                      name: str | None = None) -> Architecture:
  """The architecture ``name`` (default ``config.architecture``) with the trunk ``config.trunk``."""
  name = name or config.architecture
  built = training.lookup(ARCHITECTURES, name, "--config.architecture")(tuple(num_outputs), make_trunk(config),
                                                                        config)
  if isinstance(built, nn.Module):  # a user's own: every parameter shared
    built = Architecture(built, lambda params: jax.tree.map(lambda _: True, params))
  if not isinstance(built, Architecture):
    raise ValueError(f"--config.architecture={name!r} must build a linen module, got {type(built).__name__}.")
  return built


# --- methods and scheduling ---------------------------------------------------------------------------------

def _random_key(key: jax.Array) -> jax.Array:
  return jax.random.key_data(key)  # raw uint32: orbax checkpoints it


WEIGHTINGS: dict[str, Callable[[ml_collections.ConfigDict, int, jax.Array], Any]] = {
    "equal": lambda config, num_tasks, key: mtl.equal_weighting(),
    "uncertainty": lambda config, num_tasks, key: mtl.uncertainty_weighting(),
    "dwa": lambda config, num_tasks, key: mtl.dynamic_weight_average(
        config.dwa_temperature, steps_per_epoch=config.dwa_steps_per_epoch),
    "rlw": lambda config, num_tasks, key: mtl.random_loss_weighting(_random_key(key)),
    "gradnorm": lambda config, num_tasks, key: mtl.gradnorm(config.gradnorm_alpha),
    "mgda_ub": lambda config, num_tasks, key: mtl.mgda_ub(config.mgda_ub_normalization),
    "famo": lambda config, num_tasks, key: mtl.famo(),
    "imtl_l": lambda config, num_tasks, key: mtl.imtl_l(),
    "gls": lambda config, num_tasks, key: mtl.geometric_loss(),
    "stch": lambda config, num_tasks, key: mtl.stch(steps_per_epoch=config.dwa_steps_per_epoch),
}
"""Loss weightings of ``--config.method``: ``constructor(config, num_tasks, key)`` (the papers' / LibMTL's
defaults; DWA and STCH count ``dwa_steps_per_epoch`` steps per epoch)."""

AGGREGATORS: dict[str, Callable[[ml_collections.ConfigDict, int, jax.Array], Any]] = {
    "pcgrad": lambda config, num_tasks, key: mtl.pcgrad(_random_key(key)),
    "mgda": lambda config, num_tasks, key: mtl.mgda(),
    "cagrad": lambda config, num_tasks, key: mtl.cagrad(config.cagrad_c),
    "graddrop": lambda config, num_tasks, key: mtl.graddrop(_random_key(key)),
    "imtl_g": lambda config, num_tasks, key: mtl.imtl_g(),
    "nash_mtl": lambda config, num_tasks, key: mtl.nash_mtl(num_tasks, max_norm=config.nash_max_norm),
    "aligned_mtl": lambda config, num_tasks, key: mtl.aligned_mtl(),
    "upgrad": lambda config, num_tasks, key: mtl.upgrad(),
    "gradvac": lambda config, num_tasks, key: mtl.gradvac(_random_key(key), num_tasks),
    "conflict_free": lambda config, num_tasks, key: mtl.conflict_free(),
    "dualproj": lambda config, num_tasks, key: mtl.dualproj(),
    "fairgrad": lambda config, num_tasks, key: mtl.fairgrad(),
    "db_mtl": lambda config, num_tasks, key: mtl.db_mtl(num_tasks),
}
"""Gradient aggregators of ``--config.method``: ``constructor(config, num_tasks, key)``; ``num_tasks`` is the
number of tasks per step (``tasks_per_step`` under scheduling)."""


def _is_weighting(method: Any) -> bool:
  return hasattr(method, "loss") and hasattr(method, "init")


def make_method(name: str, config: ml_collections.ConfigDict, num_tasks: int, key: jax.Array,
                tasks_per_step: int | None = None) -> tuple[Any, Any]:
  """``(weighting or None, aggregator or None)`` of the method ``name``.

  ``name``: a weighting, an aggregator, ``weighting+aggregator``, ``single_<t>``, or import paths of a user's
  own constructors ``(config, num_tasks, key)``. ``key`` seeds the randomised methods.

  Raises:
    ValueError: for an unknown name, two weightings or two aggregators, or a ``single_<t>`` out of range.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"--config.method must be a method name, got {name!r}.")
  weighting = aggregator = None
  parts = name.split("+")
  for i, part in enumerate(parts):
    part_key = jax.random.fold_in(key, i)
    single = re.fullmatch(r"single_(\d+)", part)
    if single:
      task = int(single.group(1))
      if task >= num_tasks:
        raise ValueError(f"--config.method={name!r}: task {task} does not exist ({num_tasks} tasks).")
      built = mtl.static_weighting(jax.nn.one_hot(task, num_tasks))
    elif part in WEIGHTINGS:
      built = WEIGHTINGS[part](config, num_tasks, part_key)
    else:
      known = dict(AGGREGATORS)
      built = training.lookup({**WEIGHTINGS, **known}, part, "--config.method")
      built = built(config, tasks_per_step or num_tasks, part_key)
    if _is_weighting(built):
      if weighting is not None:
        raise ValueError(f"--config.method={name!r} combines two loss weightings; use weighting+aggregator.")
      weighting = built
    else:
      if aggregator is not None:
        raise ValueError(f"--config.method={name!r} combines two aggregators; use weighting+aggregator.")
      aggregator = built
  return weighting, aggregator


SCHEDULINGS: dict[str, Callable[[ml_collections.ConfigDict], float]] = {
    "uniform": lambda config: math.inf,
    "proportional": lambda config: 1.0,
    "temperature": lambda config: config.scheduling_temperature,
}
"""``--config.scheduling``: the temperature ``tau`` of :func:`metalax.mtl.task_probabilities` (``p_i ~
n_i^(1/tau)``)."""


def task_probabilities(config: ml_collections.ConfigDict, data: MultitaskData) -> jax.Array | None:
  """The scheduling distribution over tasks, or None when every task trains at every step (tasks_per_step=0)."""
  if not config.tasks_per_step:
    return None
  num_tasks = len(data.task_losses)
  sizes = data.sizes or (1,) * num_tasks
  temperature = training.lookup(SCHEDULINGS, config.scheduling, "--config.scheduling")(config)
  return mtl.task_probabilities(jnp.asarray(sizes), temperature=temperature)


# --- config -------------------------------------------------------------------------------------------------

HELP = {
    "preset": "the preset these values started from (informational)",
    "architecture": "hard_sharing | mmoe | omoe | cross_stitch | task_routing | soft_sharing | mtan | concat | "
                    "additive | film | multi_head | cgc | ple | dselect_k | sluice | package.module:attribute",
    "trunk": "mlp (the architecture's own dense layers, mlp_features) | lenet | conv4 | resnet12 | "
             "package.module:attribute (a linen module class or constructor)",
    "method": "a loss weighting (equal uncertainty dwa rlw gradnorm mgda_ub famo imtl_l gls stch single_<t>), an "
              "aggregator (pcgrad mgda cagrad graddrop imtl_g nash_mtl aligned_mtl upgrad gradvac conflict_free "
              "dualproj fairgrad db_mtl), weighting+aggregator, or package.module:attribute",
    "scheduling": "distribution of the tasks drawn per step: uniform | proportional | temperature",
    "scheduling_temperature": "temperature: p_i ~ n_i^(1/tau) with this tau",
    "tasks_per_step": "tasks trained per step, drawn by the scheduling; 0: every task at every step",
    "dataset": "multimnist | mmoe | gradnorm | package.module:attribute (load(config) -> MultitaskData)",
    "mlp_features": "widths of the fully connected layers (trunk=mlp) or of the architecture's own layers",
    "head_features": "hidden widths of each task's head / tower",
    "num_experts": "mmoe, omoe, dselect_k: experts",
    "expert_dropout": "mmoe, omoe: probability of dropping each gate weight in training (Zhao et al. 2019)",
    "sharing_ratio": "task_routing: fraction of each layer's units active per task",
    "soft_sharing_weight": "soft_sharing: weight of the L2 penalty between the task columns",
    "conditioned_features": "concat, additive, film: width of the conditioned hidden layer",
    "lr": "Adam learning rate",
    "batch_size": "training examples per step (split across devices)",
    "num_seeds": "independent runs trained side by side (vmap)",
    "gradnorm_alpha": "gradnorm: asymmetry alpha",
    "gradnorm_layer": "gradnorm: the parameters whose gradient norms are balanced, a path such as trunk/Dense_3; "
                      "empty: all shared parameters (LibMTL)",
    "mgda_ub_normalization": "mgda_ub: gradient normalisation none | l2 | loss | loss+",
    "dwa_temperature": "dwa: softmax temperature",
    "dwa_steps_per_epoch": "dwa, stch: steps per epoch",
    "cagrad_c": "cagrad: c",
    "nash_max_norm": "nash_mtl: update norm cap",
}


def base_config() -> ml_collections.ConfigDict:
  """The run fields (:func:`metalax.training.base_config`) and the fields every multi-task experiment shares."""
  config = training.base_config()
  config.preset = ""
  config.architecture = "hard_sharing"
  config.trunk = "mlp"
  config.method = "equal"
  config.scheduling = "uniform"
  config.scheduling_temperature = 2.0
  config.tasks_per_step = 0
  config.dataset = "multimnist"
  config.mlp_features = (64, 64)
  config.head_features = ()
  config.num_experts = 8
  config.expert_dropout = 0.0
  config.sharing_ratio = 0.5
  config.soft_sharing_weight = 1e-3
  config.conditioned_features = 64
  config.lr = 1e-3
  config.batch_size = 128
  config.num_seeds = 3
  config.gradnorm_alpha = 1.5
  config.gradnorm_layer = ""
  config.mgda_ub_normalization = "loss+"
  config.dwa_temperature = 2.0
  config.dwa_steps_per_epoch = 100
  config.cagrad_c = 0.5
  config.nash_max_norm = 1.0
  return config


def check_config(config: ml_collections.ConfigDict, methods: tuple[str, ...], num_tasks: int | None = None,
                 architectures: tuple[str, ...] | None = None) -> None:
  """Raises ValueError for a shared field that cannot run, before anything is compiled.

  ``methods``/``architectures``: those the experiment will train (names checked against the registries);
  ``num_tasks`` when known (checks ``single_<t>`` and ``tasks_per_step``).
  """
  training.run_settings(config)
  training.check_positive_int(config, "batch_size", "num_seeds", "num_experts", "conditioned_features",
                              "dwa_steps_per_epoch")
  training.check_nonnegative_int(config, "tasks_per_step")
  training.check_positive_float(config, "lr", "scheduling_temperature", "gradnorm_alpha", "dwa_temperature",
                                "nash_max_norm")
  training.check_nonnegative_float(config, "soft_sharing_weight", "cagrad_c")
  if not 0.0 <= config.expert_dropout < 1.0:
    raise ValueError(f"--config.expert_dropout must be in [0, 1), got {config.expert_dropout!r}.")
  if not 0.0 < config.sharing_ratio <= 1.0:
    raise ValueError(f"--config.sharing_ratio must be in (0, 1], got {config.sharing_ratio!r}.")
  training.check_choice(config, "mgda_ub_normalization", mtl.weighting.MGDA_UB_NORMALIZATIONS)
  if not all(isinstance(w, int) and w > 0 for w in config.mlp_features) or not all(
      isinstance(w, int) and w > 0 for w in config.head_features):
    raise ValueError(f"--config.mlp_features and head_features must be tuples of positive widths, got "
                     f"{config.mlp_features!r} and {config.head_features!r}.")
  training.lookup(SCHEDULINGS, config.scheduling, "--config.scheduling")
  training.lookup(TRUNKS, config.trunk, "--config.trunk")
  if num_tasks is not None and config.tasks_per_step > num_tasks:
    raise ValueError(f"--config.tasks_per_step={config.tasks_per_step} is more than the {num_tasks} tasks "
                     "(0: every task at every step).")
  for name in architectures or (config.architecture,):
    training.lookup(ARCHITECTURES, name, "--config.architecture")
  if not methods:
    raise ValueError("no method to train: set --config.method.")
  for method in methods:
    weighting, _ = make_method(method, config, num_tasks or 2 ** 16, jax.random.key(0),
                               config.tasks_per_step or None)
    if "representation_gradients" in getattr(weighting, "requires", ()):
      for name in architectures or (config.architecture,):
        if name not in ENCODE_DECODE:
          raise ValueError(f"--config.method={method!r} (MGDA-UB) needs an architecture with a shared "
                           f"representation ({', '.join(ENCODE_DECODE)}), got {name!r}.")
  if config.gradnorm_layer and not re.fullmatch(r"[\w.-]+(/[\w.-]+)*", config.gradnorm_layer):
    raise ValueError(f"--config.gradnorm_layer must be a parameter path such as trunk/Dense_3, got "
                     f"{config.gradnorm_layer!r}.")


# --- training -----------------------------------------------------------------------------------------------

def path_mask(path: str) -> Callable[[Any], Any]:
  """A mask function: True for the parameters under ``path`` (``"trunk/Dense_3"``), False elsewhere.

  Raises (when called):
    ValueError: if no parameter lies under ``path``.
  """
  parts = tuple(path.split("/"))

  def mask(params):
    flags = jax.tree_util.tree_map_with_path(
        lambda p, _: tuple(str(getattr(k, "key", k)) for k in p)[:len(parts)] == parts, params)
    if not any(jax.tree.leaves(flags)):
      names = sorted({"/".join(str(getattr(k, "key", k)) for k in p[:-1])
                      for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]})
      raise ValueError(f"--config.gradnorm_layer={path!r} matches no parameter; layers: {', '.join(names)}.")
    return flags

  return mask


class Trainer(NamedTuple):
  """What :func:`make_trainer` builds: the library step of one method and the functions around it.

  Attributes:
    init: ``init(key) -> TrainState`` of one seed: ``init_state(init_model(k0), k1)`` with ``k0, k1 =
      split(key)``.
    init_model: ``init_model(key) -> model_params``.
    init_state: ``init_state(model_params, key) -> TrainState``, the randomised methods (PCGrad, GradDrop,
      RLW, GradVac) seeded from ``key``.
    step: ``step(state, batch, key) -> (state, metrics)``, :func:`metalax.mtl.train_step`'s, on
      ``batch = {"batch": Batch, "key": dropout key}`` (the key matters only for a stochastic architecture).
    apply_fn: ``apply_fn(model_params, inputs) -> T outputs`` (evaluation: no dropout).
  """

  init: Callable[[jax.Array], mtl.TrainState]
  init_model: Callable[[jax.Array], Any]
  init_state: Callable[[Any, jax.Array], mtl.TrainState]
  step: Callable[..., tuple[mtl.TrainState, dict[str, jax.Array]]]
  apply_fn: Callable[[Any, jax.Array], tuple[jax.Array, ...]]


def make_trainer(config: ml_collections.ConfigDict, architecture: Architecture, data: MultitaskData,
                 method: str, input_shape: tuple[int, ...], lr: float | None = None) -> Trainer:
  """The :func:`metalax.mtl.train_step` of ``method`` on ``architecture`` and ``data``, with Adam(``lr``,
  default ``config.lr``)."""
  module, num_tasks = architecture.module, len(data.task_losses)
  dtype = parallel.precision_dtype(config.precision)

  def train_apply(params, inputs, dropout_key):
    if architecture.stochastic:
      return module.apply({"params": params}, inputs, deterministic=False, rngs={"dropout": dropout_key})
    return module.apply({"params": params}, inputs)

  def task_losses_fn(params, batch):
    losses = mtl.multitask_loss(lambda p, x: train_apply(p, x, batch["key"]), data.task_losses)
    if dtype != jnp.float32:
      losses = parallel.mixed_precision(losses, dtype)
    return losses(params, batch["batch"])

  probabilities = task_probabilities(config, data)
  tasks_per_step = config.tasks_per_step or None
  representation = None
  if "representation_gradients" in getattr(make_method(method, config, num_tasks, jax.random.key(0),
                                                       tasks_per_step)[0], "requires", ()):
    encode = lambda params, batch: module.apply({"params": params}, batch["batch"].inputs, method="encode")
    decode_losses = lambda params, z, batch: mtl.multitask_loss(
        lambda p, z: module.apply({"params": p}, z, method="decode"), data.task_losses)(
            params, Batch(z, batch["batch"].labels))
    representation = (encode, decode_losses)

  def train_step(method_key):
    weighting, aggregator = make_method(method, config, num_tasks, method_key, tasks_per_step)
    return mtl.train_step(
        task_losses_fn, optax.adam(config.lr if lr is None else lr), num_tasks=num_tasks, weighting=weighting,
        aggregator=aggregator, shared=architecture.shared,
        gradient_norm_params=path_mask(config.gradnorm_layer) if config.gradnorm_layer else None,
        representation=representation, task_probabilities=probabilities,
        tasks_per_step=tasks_per_step if probabilities is not None else None, regularizer=architecture.regularizer)

  def init_model(key):
    return module.init(key, jnp.zeros((1,) + tuple(input_shape), jnp.float32))["params"]

  def init_state(model_params, key):
    return train_step(key).init(model_params)  # the randomised methods' keys live in the state

  def init(key):
    key_model, key_method = jax.random.split(key)
    return init_state(init_model(key_model), key_method)

  return Trainer(init, init_model, init_state, train_step(jax.random.key(0)).step,
                 lambda params, inputs: module.apply({"params": params}, inputs))


def as_float(inputs: jax.Array) -> jax.Array:
  """uint8 images as float32 in ``[0, 1]``; other inputs unchanged."""
  return metalax.data.to_float32(inputs) if inputs.dtype == jnp.uint8 else inputs


def sample_examples(batch_size: int) -> Callable[[jax.Array, Batch], Batch]:
  """``sample(key, train) -> Batch``: ``batch_size`` random training examples (with replacement)."""

  def sample(key, train):
    index = jax.random.randint(key, (batch_size,), 0, train.inputs.shape[0])
    batch = jax.tree.map(lambda x: x[index], train)
    return batch.replace(inputs=as_float(batch.inputs))

  return sample


def init_seeds(trainer: Trainer, key: jax.Array, num_seeds: int) -> mtl.TrainState:
  """The initial states of ``num_seeds`` seeds (seed ``s`` from ``fold_in(key, s)``); leaves ``[S, ...]``."""
  return jax.jit(jax.vmap(lambda s: trainer.init(jax.random.fold_in(key, s))))(jnp.arange(num_seeds))


def train_seeds(config: ml_collections.ConfigDict, trainer: Trainer, data: MultitaskData, run_dir: str,
                key: jax.Array, *, desc: str, train_data: Any = None, data_axis: Any = None,
                on_checkpoint: Callable[[Any, int], dict[str, float]] | None = None,
                checkpoint_every: int | None = None) -> mtl.TrainState:
  """Trains ``config.num_seeds`` copies side by side; returns the final state, leaves ``[S, ...]``.

  Seed ``s`` is initialised from ``fold_in(key, s)``. Each step draws ``config.batch_size`` examples (from
  ``train_data``, default ``data.train``, mapped over seeds along ``data_axis``: 0 when every seed has its own
  data; or from ``data.sample``), splits them across the devices of ``--config.num_devices``, and takes one
  :func:`metalax.mtl.train_step` step. Metrics (``loss``, ``loss_t``, ``weight_t``) are means over seeds.
  """
  mesh = training.make_mesh(config, config.batch_size)
  num_tasks = len(data.task_losses)
  sample = ((lambda key, train: data.sample(key, config.batch_size)) if data.sample is not None
            else sample_examples(config.batch_size))
  train_data = data.train if train_data is None else train_data

  def seed_step(state, key, train):
    batch = parallel.shard_batch(sample(key, train), mesh)  # examples split across the devices
    key_dropout, key_schedule = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)
    return trainer.step(state, {"batch": batch, "key": key_dropout}, key_schedule)

  def step(state, key, train):
    state, metrics = jax.vmap(seed_step, in_axes=(0, 0, data_axis))(
        state, jax.random.split(key, config.num_seeds), train)
    flat = {"loss": jnp.mean(metrics["loss"])}
    flat.update({f"loss_{t}": jnp.mean(metrics["task_losses"][:, t]) for t in range(num_tasks)})
    if "weights" in metrics:
      flat.update({f"weight_{t}": jnp.mean(metrics["weights"][:, t]) for t in range(num_tasks)})
    return state, flat

  state = init_seeds(trainer, key, config.num_seeds)
  return training.train_loop(step, state, data=train_data, key=jax.random.fold_in(key, 10_000),
                             num_iterations=config.num_iterations, steps_per_call=config.steps_per_call,
                             checkpoint_every=checkpoint_every or config.checkpoint_every, run_dir=run_dir,
                             desc=desc, on_checkpoint=on_checkpoint, mesh=mesh, on_nan=config.on_nan)


def evaluator(architecture: Architecture, data: MultitaskData, batch_size: int = 2_000
              ) -> Callable[..., dict[str, np.ndarray]]:
  """``evaluate(model_params, test=None) -> {"loss": [S, T], "accuracy": [S, T]}`` on ``test`` (default
  ``data.test``), per seed and task; ``model_params`` has leaves ``[S, ...]``; accuracy is NaN for a regression
  task. Compiled once (build one evaluator per architecture and dataset), evaluated in batches."""
  num_tasks = len(data.task_losses)
  module = architecture.module

  @jax.jit
  def sums(params, batch):  # [S, T] summed losses and correct counts
    def one(p):
      outputs = module.apply({"params": p}, as_float(batch.inputs))
      losses = jnp.stack([jnp.sum(data.task_losses[t](outputs[t], batch.labels[t])) for t in range(num_tasks)])
      correct = jnp.stack([jnp.sum(jnp.argmax(outputs[t], -1) == batch.labels[t]) if data.classification[t]
                           else jnp.zeros(()) for t in range(num_tasks)])
      return losses, correct
    return jax.vmap(one)(params)

  def evaluate(model_params, test=None):
    test = data.test if test is None else test
    n = test.inputs.shape[0]
    totals = [sums(model_params, jax.tree.map(lambda x, i=i: x[i:i + batch_size], test))
              for i in range(0, n, batch_size)]
    loss = sum(np.asarray(t[0], np.float64) for t in totals) / n
    accuracy = sum(np.asarray(t[1], np.float64) for t in totals) / n
    accuracy[:, ~np.asarray(data.classification, bool)] = np.nan
    return {"loss": loss, "accuracy": accuracy}

  return evaluate


def input_shape(data: MultitaskData) -> tuple[int, ...]:
  """The per-example input shape of ``data``."""
  return tuple(data.test.inputs.shape[1:])


def methods_of(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The methods to train: ``config.methods`` (a comparison table), else ``(config.method,)``.

  Raises:
    ValueError: if both or neither are set.
  """
  listed = tuple(config.get("methods", ()))
  if listed and config.method:
    raise ValueError(f"--config.method={config.method!r} and --config.methods={listed!r} are exclusive: one "
                     "method per run, or a tuple for a table (add --config.methods='()' to train one method from "
                     "this preset).")
  names = listed or ((config.method,) if config.method else ())
  if not names or not all(isinstance(name, str) and name for name in names):
    raise ValueError(f"set --config.method (one method) or --config.methods (a tuple of names), got "
                     f"method={config.method!r}, methods={listed!r}.")
  return names
