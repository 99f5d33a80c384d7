"""The registries the meta-learning and representation entrypoints share: models, learners, losses, datasets.

Each registry is a plain ``dict`` from a config name to a constructor; every
config field that names a component also takes ``package.module:attribute``
for a user's own (:func:`metalax.training.lookup`). The contracts a user's own
component must meet are those of the entries below:

* ``--config.model``: ``constructor(num_outputs=None | int)`` returning a linen
  module (a module class with a ``num_outputs`` field works as it is);
  ``None`` asks for an embedding network, an int for a classifier or regressor
  with that many outputs.
* ``--config.learner``: ``constructor(apply_fn, loss_fn, *, num_ways,
  num_steps, inner_optimizer, embedding_dim, config)`` returning a
  :class:`metalax.meta.MetaLearner`.
* ``--config.loss``: a per-example loss ``loss_fn(outputs [n, ...], labels [n,
  ...]) -> [n]``.
* ``--config.dataset``: ``load(config) -> {"train", "validation", "test"}`` of
  :class:`metalax.data.ClassImages` (disjoint classes).
"""

import ast
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import metalax
from metalax import meta
from metalax import models
from metalax import training


# --- models -------------------------------------------------------------------------------------------------

def _mlp(config: ml_collections.ConfigDict, num_outputs: int | None) -> Any:
  features = tuple(config.mlp_features)
  if num_outputs is None:  # an embedding network: the last hidden layer is the embedding
    return models.MLP(features=features[:-1], num_outputs=features[-1])
  return models.MLP(features=features, num_outputs=num_outputs)


def _conv4(config: ml_collections.ConfigDict, num_outputs: int | None) -> Any:
  return models.Conv4(num_outputs=num_outputs, hidden=config.hidden, variant=config.conv4_variant,
                      norm=config.norm, conv_impl=config.conv_impl)


def _resnet12(config: ml_collections.ConfigDict, num_outputs: int | None) -> Any:
  return models.ResNet12(num_outputs=num_outputs, channels=tuple(config.resnet_channels), norm=config.norm,
                         drop_rate=config.dropblock_rate, conv_impl=config.conv_impl)


MODELS: dict[str, Callable[[ml_collections.ConfigDict, int | None], Any]] = {
    "mlp": _mlp,
    "conv4": _conv4,
    "resnet12": _resnet12,
}
"""``--config.model``: ``mlp`` (``mlp_features``), ``conv4`` (``hidden``, ``conv4_variant``, ``norm``,
``conv_impl``), ``resnet12`` (``resnet_channels``, ``norm``, ``dropblock_rate``, ``conv_impl``)."""


def make_model(config: ml_collections.ConfigDict, num_outputs: int | None, models: dict[str, Any] | None = None
               ) -> Any:
  """The linen module ``config.model`` names, with ``num_outputs`` outputs (None: an embedding network).

  Args:
    config: the experiment's config (``model`` and the fields of that model).
    num_outputs: the output width, or None for an embedding network.
    models: the registry to look in (default :data:`MODELS`; an experiment may offer fewer).
  """
  models = MODELS if models is None else models
  if config.model in models:
    return models[config.model](config, num_outputs)
  return training.lookup(models, config.model, "--config.model")(num_outputs=num_outputs)


def init_params(module: Any, key: jax.Array, input_shape: tuple[int, ...]) -> Any:
  """``module``'s parameters for inputs ``[n, *input_shape]``, initialised in one compiled program."""
  return jax.jit(module.init)(key, jnp.zeros((2, *input_shape)))["params"]


def embedding_dim(module: Any, input_shape: tuple[int, ...]) -> int:
  """The width of ``module``'s output for one input of ``input_shape`` (no compilation)."""
  shape = jax.eval_shape(lambda: module.init_with_output(jax.random.key(0), jnp.zeros((2, *input_shape)))[0])
  return int(shape.shape[-1])


# --- learners -----------------------------------------------------------------------------------------------

def inner_optimizer(config: ml_collections.ConfigDict, inner_lr: float | None = None
                    ) -> optax.GradientTransformation:
  """``--config.inner_optimizer`` (any optax optimizer by name, e.g. ``sgd``, ``adam``) at ``inner_lr``.

  Raises:
    ValueError: if optax has no optimizer of that name.
  """
  lr = config.inner_lr if inner_lr is None else inner_lr
  name = config.inner_optimizer
  constructor = getattr(optax, name, None) if isinstance(name, str) and not name.startswith("_") else None
  if constructor is None or not callable(constructor):
    raise ValueError(f"--config.inner_optimizer: optax has no optimizer {name!r}; expected an optax optimizer "
                     "name such as sgd, momentum, adam, rmsprop.")
  optimizer = constructor(lr)
  if not isinstance(optimizer, optax.GradientTransformation):
    raise ValueError(f"--config.inner_optimizer={name!r}: optax.{name}(learning_rate) is not an optimizer.")
  return optimizer


def _gradient(constructor: Callable[..., meta.MetaLearner]) -> Callable[..., meta.MetaLearner]:
  def make(apply_fn, loss_fn, *, num_steps, inner_optimizer, **unused):
    return constructor(apply_fn, loss_fn, num_steps=num_steps, inner_optimizer=inner_optimizer)
  return make


def _metasgd(apply_fn, loss_fn, *, num_steps, config, **unused):
  return meta.metasgd(apply_fn, loss_fn, num_steps=num_steps, init_lr=config.inner_lr)


def _imaml(apply_fn, loss_fn, *, num_steps, inner_optimizer, config, **unused):
  return meta.imaml(apply_fn, loss_fn, num_steps=num_steps, inner_optimizer=inner_optimizer,
                    reg=config.imaml_reg, cg_steps=config.imaml_cg_steps)


def _pretrained(apply_fn, loss_fn, *, inner_optimizer, **unused):
  """Joint training (no adaptation while training), fine-tuned by ``inner_optimizer`` at test time."""
  return meta.maml(apply_fn, loss_fn, num_steps=0, inner_optimizer=inner_optimizer)


def _metric(constructor: Callable[..., meta.MetaLearner]) -> Callable[..., meta.MetaLearner]:
  def make(apply_fn, loss_fn, *, num_ways, **unused):
    return constructor(apply_fn, num_ways=num_ways)
  return make


def _blackbox(apply_fn, loss_fn, *, num_ways, embedding_dim, config, **unused):
  return meta.blackbox(apply_fn, num_ways=num_ways, embedding_dim=embedding_dim, seed=config.seed)


LEARNERS: dict[str, Callable[..., meta.MetaLearner]] = {
    "maml": _gradient(meta.maml),
    "fomaml": _gradient(meta.fomaml),
    "anil": _gradient(meta.anil),
    "metasgd": _metasgd,
    "reptile": _gradient(meta.reptile),
    "imaml": _imaml,
    "pretrained": _pretrained,
    "protonet": _metric(meta.protonet),
    "matching": _metric(meta.matching_net),
    "knn": _metric(meta.nearest_neighbour),
    "r2d2": _metric(meta.r2d2),
    "blackbox": _blackbox,
}
"""``--config.learner``. Gradient-based learners (a model with ``num_ways`` outputs, an inner loop) and
learners on embeddings (a model with no head)."""

EMBEDDING_LEARNERS = ("protonet", "matching", "knn", "r2d2", "blackbox")
"""Learners whose model is an embedding network (no output layer) rather than a classifier."""


def make_learner(config: ml_collections.ConfigDict, apply_fn: Any, *, num_ways: int | None, num_steps: int,
                 embedding_dim: int | None = None, inner_lr: float | None = None, name: str | None = None
                 ) -> meta.MetaLearner:
  """The learner ``name`` (default ``config.learner``), on ``apply_fn`` with the loss ``config.loss``.

  ``inner_lr`` overrides ``config.inner_lr`` (e.g. a fine-tuning rate chosen on validation tasks).
  """
  constructor = training.lookup(LEARNERS, name or config.learner, "--config.learner")
  return constructor(apply_fn, make_loss(config), num_ways=num_ways, num_steps=num_steps,
                     inner_optimizer=inner_optimizer(config, inner_lr), embedding_dim=embedding_dim,
                     config=config)


# --- losses -------------------------------------------------------------------------------------------------

LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "cross_entropy": metalax.losses.cross_entropy,
    "squared_error": metalax.losses.squared_error,
}
"""``--config.loss``: the per-example loss of gradient-based learners (and the inner loop's)."""


def make_loss(config: ml_collections.ConfigDict) -> Callable[[jax.Array, jax.Array], jax.Array]:
  return training.lookup(LOSSES, config.loss, "--config.loss")


# --- few-shot datasets --------------------------------------------------------------------------------------

def _omniglot(config: ml_collections.ConfigDict) -> dict[str, metalax.data.ClassImages]:
  characters = metalax.data.load_omniglot(_data_dir(config, "omniglot"), dtype=np.uint8,
                                          cache_dir=config.cache_dir or None, download=config.download)
  return metalax.data.omniglot_splits(characters, config.split, num_validation=config.num_validation)


def _mnist(config: ml_collections.ConfigDict) -> dict[str, metalax.data.ClassImages]:
  """Digits 0-4 train, 5-9 test (validation: 5-9 of the official test images): 5-way at most."""
  data_dir = _data_dir(config, "mnist")
  train = metalax.data.to_dense(metalax.data.mnist_class_images(data_dir, "train", dtype=np.uint8),
                                num_per_class=5421)
  test = metalax.data.to_dense(metalax.data.mnist_class_images(data_dir, "test", dtype=np.uint8),
                               num_per_class=892)
  return {"train": metalax.data.select_classes(train, range(5)),
          "validation": metalax.data.select_classes(test, range(5, 10)),
          "test": metalax.data.select_classes(train, range(5, 10))}


def _data_dir(config: ml_collections.ConfigDict, name: str) -> str | None:
  """``--config.data_dir`` (the dataset's own folder), or None for the loader's convention
  (``$METALAX_DATA_DIR/<name>``, else ``~/metalax_data/<name>``: :func:`metalax.data.resolve_data_dir`)."""
  del name
  return config.data_dir or None


def split_by_fraction(data: metalax.data.ClassImages, fractions: tuple[float, float, float], seed: int
                      ) -> dict[str, metalax.data.ClassImages]:
  """Disjoint ``train``/``validation``/``test`` classes of ``data`` in ``fractions`` (shuffled by ``seed``).

  Raises:
    ValueError: if the fractions are not three non-negative numbers summing to 1, or a split gets no class.
  """
  fractions = tuple(float(f) for f in fractions)
  if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
    raise ValueError(f"--config.class_split must be three fractions (train, validation, test) summing to 1, "
                     f"got {fractions}.")
  order = np.random.default_rng(seed).permutation(data.num_classes)
  num_train = int(round(fractions[0] * data.num_classes))
  num_valid = int(round(fractions[1] * data.num_classes))
  parts = {"train": order[:num_train], "validation": order[num_train:num_train + num_valid],
           "test": order[num_train + num_valid:]}
  empty = [name for name, classes in parts.items() if not len(classes)]
  if empty:
    raise ValueError(f"--config.class_split={fractions} leaves no class for {', '.join(empty)} "
                     f"({data.num_classes} classes in all).")
  return {name: metalax.data.select_classes(data, sorted(classes.tolist())) for name, classes in parts.items()}


def dense(data: Any) -> metalax.data.ClassImages:
  """``data`` with the same number of images in every class: each class's first ones, as many as the smallest
  class has (MNIST: 5,421 training and 892 test images per digit)."""
  if isinstance(data, metalax.data.ClassImages):
    return data
  return metalax.data.to_dense(data, num_per_class=int(np.min(data.counts)))


def _prefixed(config: ml_collections.ConfigDict) -> dict[str, metalax.data.ClassImages] | None:
  """The datasets named with a prefix: ``tfds:NAME``, ``folder:PATH``, ``npz:PATH``."""
  kind, _, argument = config.dataset.partition(":")
  if kind == "tfds":
    data = metalax.data.load_tfds(argument, split="train", data_dir=config.data_dir or None,
                                  download=config.download)
  elif kind == "folder":
    data = metalax.data.load_image_folder(argument, image_size=config.image_size or None)
  elif kind == "npz":
    data = metalax.data.load_npz(argument)
  else:
    return None
  return split_by_fraction(dense(data), tuple(config.class_split), config.seed)


DATASETS: dict[str, Callable[[ml_collections.ConfigDict], dict[str, metalax.data.ClassImages]]] = {
    "omniglot": _omniglot,
    "mnist": _mnist,
}
"""``--config.dataset``: a name here, ``tfds:NAME``, ``folder:PATH`` (one subfolder of images per class),
``npz:PATH``, or ``package.module:attribute`` (``load(config) -> splits``). Prefixed datasets are split
by class in ``--config.class_split`` fractions."""


def load_dataset(config: ml_collections.ConfigDict) -> dict[str, metalax.data.ClassImages]:
  """``{"train", "validation", "test"}`` uint8 images ``[classes, per_class, H, W, C]`` of ``config.dataset``."""
  splits = _prefixed(config)
  if splits is None:
    splits = training.lookup(DATASETS, config.dataset, "--config.dataset")(config)
  missing = {"train", "validation", "test"} - set(splits)
  if missing:
    raise ValueError(f"--config.dataset={config.dataset!r} gave no {', '.join(sorted(missing))} classes "
                     "(for Omniglot's vinyals split, set --config.num_validation > 0).")
  return {name: dense(splits[name]) for name in ("train", "validation", "test")}


AUGMENTATIONS: dict[str, Callable[..., Any]] = {
    "random_resized_crop": metalax.augment.random_resized_crop,
    "random_flip": metalax.augment.random_flip,
    "random_rotation": metalax.augment.random_rotation,
    "brightness_contrast": metalax.augment.brightness_contrast,
    "color_jitter": metalax.augment.color_jitter,
    "gaussian_noise": metalax.augment.gaussian_noise,
    "cutout": metalax.augment.cutout,
    "random_apply": metalax.augment.random_apply,
}
"""``--config.augment`` entries: per-image operations of :mod:`metalax.augment`, each a name (its defaults)
or a call with literal arguments, e.g. ``"random_rotation(15.0)"`` or ``"random_apply(cutout(0.35), 0.5)"``."""

MIXINGS: dict[str, Callable[..., Any]] = {"mixup": metalax.augment.mixup, "cutmix": metalax.augment.cutmix}
"""Batch-level entries of ``--config.augment`` (they mix images and labels across a batch)."""


def _evaluate_call(node: ast.AST, registry: dict[str, Callable[..., Any]], entry: str) -> Any:
  """The value of ``node``: a literal, a registry name (called with no arguments) or a call of one."""
  if isinstance(node, ast.Name) and node.id in registry:
    return registry[node.id]()
  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in registry:
    args = [_evaluate_call(arg, registry, entry) for arg in node.args]
    kwargs = {k.arg: _evaluate_call(k.value, registry, entry) for k in node.keywords}
    return registry[node.func.id](*args, **kwargs)
  try:
    return ast.literal_eval(node)
  except ValueError:
    raise ValueError(f"--config.augment: cannot read {entry!r}: expected a name or a call of "
                     f"{', '.join(sorted(registry))} with literal arguments.") from None


def parse_augment(entries: tuple[str, ...], mixing: bool = False) -> tuple[Any, list[Callable[..., Any]]]:
  """``(per-image Augmentation or None, [mix(key, inputs, one_hot_labels), ...])`` from ``--config.augment``.

  Args:
    entries: the config's tuple of entries (names or calls, see :data:`AUGMENTATIONS`).
    mixing: whether batch-level mixing (:data:`MIXINGS`) is allowed here.

  Raises:
    ValueError: for an entry that is not a known operation with valid arguments, or a mixing entry where
      ``mixing`` is False.
  """
  if isinstance(entries, str):
    raise ValueError(f"--config.augment must be a tuple of entries, e.g. '(\"random_flip\",)', got the string "
                     f"{entries!r}.")
  per_image, mixes = [], []
  for entry in entries:
    try:
      node = ast.parse(str(entry).strip(), mode="eval").body
    except SyntaxError:
      raise ValueError(f"--config.augment: cannot read {entry!r}: expected a name or a call such as "
                       "'random_rotation(15.0)'.") from None
    name = node.func.id if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) else getattr(node, "id", None)
    if name in MIXINGS:
      if not mixing:
        raise ValueError(f"--config.augment: {name} mixes images and labels across a batch; this experiment "
                         f"samples episodes, so it takes per-image operations only ({', '.join(sorted(AUGMENTATIONS))}).")
      args = [ast.literal_eval(a) for a in getattr(node, "args", [])]
      kwargs = {k.arg: ast.literal_eval(k.value) for k in getattr(node, "keywords", [])}
      mixes.append(lambda key, x, y, fn=MIXINGS[name], a=args, k=kwargs: fn(key, x, y, *a, **k))
      continue
    if name not in AUGMENTATIONS:
      known = sorted(AUGMENTATIONS) + (sorted(MIXINGS) if mixing else [])
      raise ValueError(f"--config.augment: unknown operation {entry!r}; expected one of {', '.join(known)}.")
    try:
      per_image.append(_evaluate_call(node, AUGMENTATIONS, entry))
    except TypeError as e:
      raise ValueError(f"--config.augment: {entry!r}: {e}.") from None
  augmentation = metalax.augment.compose(*per_image) if per_image else None
  return augmentation, mixes


def augmentation(config: ml_collections.ConfigDict) -> Any:
  """The per-image augmentation ``--config.augment`` lists, or None (episodic experiments: no mixing)."""
  return parse_augment(tuple(config.augment))[0]


def check_fits(splits: dict[str, metalax.data.ClassImages], counts: dict[str, tuple[int, int, int]]) -> None:
  """Raises ValueError if a split has too few classes or images per class for its episodes.

  Args:
    splits: ``{"train", "validation", "test"}`` images.
    counts: ``{split: (num_ways, num_shots, num_queries)}`` (the largest the episodes ask for).
  """
  for split, (ways, shots, queries) in counts.items():
    data = splits[split]
    if ways > data.num_classes or shots + queries > data.num_per_class:
      raise ValueError(
          f"{ways}-way {shots}-shot episodes with {queries} queries per class need {ways} classes with "
          f"{shots + queries} images each, but the {split} split has {data.num_classes} classes of "
          f"{data.num_per_class} images.")

