r"""Representation learning on Omniglot (or MNIST), evaluated by few-shot classification and a linear probe.

Pretrains an encoder (``--config.model``, Conv-4 by default) with one objective (``--config.loss``):
NT-Xent (SimCLR) or InfoNCE on two augmented views of *unlabelled* images, SupCon, the triplet loss
(all / batch-hard / semi-hard mining) or the pair contrastive loss on labelled batches, or an
autoencoder (plain, denoising, sparse, linear decoder); ``random`` skips training. Augmentations
(``--config.augment``) are any metalax.augment operations, MixUp and CutMix included. Then it freezes the encoder and evaluates it on classes never seen
in training: N-way K-shot episodes classified by prototypes and by
1-nearest-neighbour on L2-normalised embeddings, and a linear probe.
Writes into ``--workdir``::

  results.json           few-shot accuracies (mean, 95% interval), linear-probe accuracy, collapse metrics
  encoder/<step>/        orbax checkpoint {"params": encoder params}: the same layout as the meta-parameters
                         of experiments.fewshot's embedding learners (the same model fields)
  checkpoints/           the full training state (a rerun resumes from it)
  metrics.jsonl, tb/     training loss and collapse diagnostics (embedding std, effective rank)
  review.png, review.csv the linear probe's highest-loss training examples, for relabelling
  reconstructions.png    autoencoders: evaluation images and their reconstructions
  run.json               config, command line, package versions

Usage:
  python -m experiments.representation --workdir=/tmp/simclr \
      --config=experiments/configs/representation.py:simclr
  python -m experiments.representation --workdir=/tmp/triplet \
      --config=experiments/configs/representation.py:triplet_semi_hard --config.num_iterations=500
"""

import os
import time
from typing import Any, Callable, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import metalax
from experiments import components
from experiments import reporting
from metalax import augment
from metalax import losses
from metalax import meta
from metalax import models
from metalax import training
from metalax import transfer

EMBED_BATCH = 1024


class Objective(NamedTuple):
  """A contrastive objective: how its batches are drawn and its per-example loss.

  Attributes:
    views: augmented views per image (2: the loss compares views; 1: labelled batches).
    labelled: whether batches are ``classes_per_batch`` classes x ``examples_per_class`` images with labels.
    loss: ``loss(projections [views * n, d], labels [n] or None, config) -> [views * n]`` per-example losses.
  """

  views: int
  labelled: bool
  loss: Callable[[jax.Array, jax.Array | None, ml_collections.ConfigDict], jax.Array]


def _info_nce(projections, labels, config):
  """InfoNCE of each first view against its second view, the other images' second views as negatives."""
  del labels
  first, second = jnp.split(projections, 2)
  n = first.shape[0]
  others = (jnp.arange(n)[:, None] + jnp.arange(1, n)[None, :]) % n            # [n, n - 1]
  return losses.info_nce(first, second, second[others], temperature=config.temperature)


OBJECTIVES: dict[str, Objective] = {
    "nt_xent": Objective(2, False, lambda p, labels, config: losses.nt_xent(p, temperature=config.temperature)),
    "info_nce": Objective(2, False, _info_nce),
    "supcon": Objective(1, True, lambda p, labels, config: losses.supcon_loss(
        p, labels, temperature=config.supcon_temperature)),
    "triplet": Objective(1, True, lambda p, labels, config: losses.triplet_loss(
        losses.l2_normalize(p), labels, margin=config.margin, mining=config.mining)),
    "contrastive": Objective(1, True, lambda p, labels, config: losses.contrastive_loss(
        losses.l2_normalize(p), labels, neg_margin=config.margin)),
}
"""``--config.loss`` values trained with a projection head; ``autoencoder`` and ``random`` are the others.
A user's own ``package.module:attribute`` is ``loss(embeddings [n, d], labels [n]) -> [n]`` on labelled
batches."""

OTHER_LOSSES = ("autoencoder", "random")


def objective(config: ml_collections.ConfigDict) -> Objective:
  """The :class:`Objective` of ``config.loss`` (a user's own loss: one labelled view)."""
  if config.loss in OBJECTIVES:
    return OBJECTIVES[config.loss]
  fn = training.lookup({**OBJECTIVES, **dict.fromkeys(OTHER_LOSSES)}, config.loss, "--config.loss")
  return Objective(1, True, lambda p, labels, config: fn(p, labels))


def load_data(config: ml_collections.ConfigDict) -> dict[str, metalax.data.ClassImages]:
  """``{"train", "eval"}`` uint8 images ``[classes, per_class, H, W, C]`` with disjoint classes.

  Omniglot: the background archive, then the evaluation archive (Lake's split, no rotations); MNIST: the
  training images, then the test images (the same ten digits); any other ``--config.dataset`` of
  :data:`experiments.components.DATASETS` (prefixed names and import paths included): its training
  classes, then its test classes.
  """
  if config.dataset == "omniglot":
    data_dir = config.data_dir or None  # None: metalax.data.resolve_data_dir's convention
    characters = metalax.data.load_omniglot(data_dir, dtype=np.uint8, cache_dir=config.cache_dir or None,
                                            download=config.download)
    splits = metalax.data.omniglot_splits(characters, "lake", angles=(0,))
    return {"train": splits["train"], "eval": splits["test"]}
  if config.dataset == "mnist":
    data_dir = config.data_dir or None
    return {split: components.dense(metalax.data.mnist_class_images(
                data_dir, name, dtype=np.uint8, download=config.download))
            for split, name in (("train", "train"), ("eval", "test"))}
  splits = components.load_dataset(config)
  return {"train": splits["train"], "eval": splits["test"]}


def make_encoder(config: ml_collections.ConfigDict) -> Any:
  """The encoder (no head), as ``experiments.fewshot`` builds its embedding learners' model."""
  return components.make_model(config, None)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for any field that cannot run, before data is read or anything compiled."""
  settings = training.run_settings(config)
  if settings["precision"] != "float32":
    raise ValueError(f"--config.precision={settings['precision']}: the representation experiment trains in "
                     "float32 only (mixed precision is implemented by the meta-learning entrypoints).")
  training.check_choice(config, "mining", losses.contrastive.MININGS)
  training.check_positive_int(config, "batch_size", "steps_per_call", "checkpoint_every", "num_test_episodes",
                              "hidden", "classes_per_batch", "examples_per_class", "num_queries", "probe_steps",
                              "review_k", "projector_hidden", "projection_dim")
  training.check_nonnegative_int(config, "num_iterations", "code_dim", "num_eval_classes")
  training.check_positive_float(config, "lr", "temperature", "supcon_temperature", "probe_lr")
  if config.loss not in OTHER_LOSSES:
    chosen = objective(config)
    if chosen.labelled and config.examples_per_class < 2:
      raise ValueError(f"--config.examples_per_class must be >= 2: {config.loss} needs positives in a batch.")
  components.parse_augment(tuple(config.augment), mixing=True)
  make_encoder(config)


def build(config: ml_collections.ConfigDict, image_shape: tuple[int, ...], mesh: jax.sharding.Mesh | None = None):
  """``(init_params(key), loss(params, key, images [C, K, H, W, C]) -> (scalar, metrics), encode, autoencoder)``.

  The sampled batch is split across ``mesh`` (:func:`metalax.parallel.shard_batch`; None: one device).
  """
  encoder = make_encoder(config)
  shard = lambda batch: metalax.parallel.shard_batch(batch, mesh)
  encode = models.from_linen(encoder)
  sample = jnp.zeros((2, *image_shape))
  augmentation, mixes = components.parse_augment(tuple(config.augment), mixing=True)
  as_float = metalax.data.to_float32

  def augmented(key, images, labels=None, num_classes=1):
    """The per-image augmentation, then each batch-level mixing (labels: the dominant one after mixing)."""
    image_key, mix_key = jax.random.split(key)
    if augmentation is not None:
      images = augment.apply_batch(augmentation, image_key, images)
    one_hot = jax.nn.one_hot(jnp.zeros(images.shape[0], jnp.int32) if labels is None else labels, num_classes)
    for index, mix in enumerate(mixes):
      images, one_hot, _ = mix(jax.random.fold_in(mix_key, index), images, one_hot)
    return images, (None if labels is None else jnp.argmax(one_hot, -1))

  if config.loss == "autoencoder":
    autoencoder = models.Autoencoder(encoder, models.Decoder(image_shape, tuple(config.decoder_features)),
                                     code_dim=config.code_dim or None, code_activation=config.code_activation)
    reconstruction = models.autoencoder_loss(
        models.from_linen(autoencoder), noise_std=config.noise_std, l1_weight=config.l1_weight,
        sparsity_weight=config.sparsity_weight, sparsity_target=config.sparsity_target)

    def init(key):
      return autoencoder.init(key, sample)["params"]

    def loss(params, key, images):
      batch_key, noise_key = jax.random.split(key)
      batch = shard(as_float(random_images(batch_key, images, config.batch_size)))
      if augmentation is not None or mixes:  # the augmented images are both the input and the target
        batch = augmented(jax.random.fold_in(key, 2), batch)[0]
      value, metrics = reconstruction(params, noise_key, batch)
      codes = metrics.pop("codes")
      metrics.pop("per_example")
      return value, {**metrics, **losses.collapse_metrics(codes)}

    return init, loss, encode, autoencoder

  chosen = objective(config) if config.loss != "random" else OBJECTIVES["nt_xent"]
  projector = models.MLP(features=(config.projector_hidden,), num_outputs=config.projection_dim)

  def init(key):
    encoder_key, projector_key = jax.random.split(key)
    encoder_params = encoder.init(encoder_key, sample)["params"]
    features = jax.eval_shape(lambda: encoder.apply({"params": encoder_params}, sample))
    return {"encoder": encoder_params,
            "projector": projector.init(projector_key, jnp.zeros(features.shape))["params"]}

  def project(params, inputs):
    features = encoder.apply({"params": params["encoder"]}, inputs)
    return features, projector.apply({"params": params["projector"]}, features)

  def loss(params, key, images):
    batch_key, view_key = jax.random.split(key)
    if chosen.labelled:
      batch, labels = shard(labelled_batch(batch_key, images, config.classes_per_batch, config.examples_per_class))
      views, labels = augmented(view_key, as_float(batch), labels, config.classes_per_batch)
    else:
      batch, labels = shard(as_float(random_images(batch_key, images, config.batch_size))), None
      views = jnp.concatenate([augmented(k, batch)[0] for k in jax.random.split(view_key, chosen.views)])
    features, projections = project(params, views)
    value = jnp.mean(chosen.loss(projections, labels, config))
    return value, {"loss": value, **losses.collapse_metrics(features)}

  return init, loss, encode, None


def random_images(key: jax.Array, images: jax.Array, n: int) -> jax.Array:
  """``n`` images drawn uniformly (with replacement) from ``images [C, K, ...]``: ``[n, ...]``."""
  flat = images.reshape((-1, *images.shape[2:]))
  return flat[jax.random.randint(key, (n,), 0, flat.shape[0])]


def labelled_batch(key: jax.Array, images: jax.Array, num_classes: int, per_class: int
                   ) -> tuple[jax.Array, jax.Array]:
  """``num_classes`` distinct classes x ``per_class`` distinct images: ``([P * K, ...], labels [P * K])``."""
  episode = metalax.sample_episode(key, images, num_classes, per_class - 1, 1)
  inputs = jnp.concatenate([episode.support.inputs, episode.query.inputs])
  labels = jnp.concatenate([episode.support.labels, episode.query.labels])
  return inputs, labels


def embed_all(encode, params, images: np.ndarray, key: jax.Array) -> np.ndarray:
  """Embeds ``images [C, K, ...]`` into ``[C, K, d]``, in shuffled batches (batch statistics see mixed classes)."""
  flat = images.reshape((-1, *images.shape[2:]))
  order = np.asarray(jax.random.permutation(key, flat.shape[0]))
  run = jax.jit(lambda p, x: encode(p, metalax.data.to_float32(x)))
  chunks = []
  for begin in range(0, flat.shape[0], EMBED_BATCH):
    chunks.append(np.asarray(run(params, jnp.asarray(flat[order[begin:begin + EMBED_BATCH]]))))
  outputs = np.empty((flat.shape[0], chunks[0].shape[1]), np.float32)
  outputs[order] = np.concatenate(chunks)
  return outputs.reshape((*images.shape[:2], -1))


def few_shot_accuracy(embeddings: np.ndarray, key: jax.Array, num_ways: int, num_shots: int, num_queries: int,
                      num_episodes: int) -> dict[str, tuple[float, float]]:
  """Prototype and 1-NN accuracy (mean, 95% interval) on ``num_episodes`` episodes of L2-normalised embeddings."""
  unit = losses.l2_normalize(jnp.asarray(embeddings))
  identity = lambda params, x: x
  results = {}
  for name, learner in (("prototype", meta.protonet(identity, num_ways=num_ways)),
                        ("nearest_neighbour", meta.nearest_neighbour(identity, num_ways=num_ways, k=1))):
    evaluate = jax.jit(lambda batch_key, unit, learner=learner: meta.evaluate(learner)(
        {"params": {}}, metalax.sample_episodes(batch_key, unit, 100, num_ways, num_shots, num_queries)))
    accuracies = []
    for batch_key in jax.random.split(key, -(-num_episodes // 100)):
      accuracies.append(np.asarray(evaluate(batch_key, unit)["accuracy"]))
    mean, interval = training.mean_and_interval(np.concatenate(accuracies)[:num_episodes])
    results[name] = (float(mean), float(interval))
  return results


def linear_probe(embeddings: np.ndarray, config: ml_collections.ConfigDict, labels: np.ndarray | None = None
                 ) -> dict[str, Any]:
  """Logistic regression on the first half of each class's embeddings, tested on the second half.

  Features are standardised with the training half's statistics; full-batch
  AdamW for ``probe_steps`` steps. ``labels`` (``[C * half]``, default the
  class index) can carry reviewed corrections.

  Returns:
    ``{"accuracy", "train_losses" [C * half], "train_predictions", "train_labels"}``.
  """
  num_classes, per_class, _ = embeddings.shape
  half = per_class // 2
  train = embeddings[:, :half].reshape(num_classes * half, -1)
  test = embeddings[:, half:].reshape(num_classes * (per_class - half), -1)
  default_labels = np.repeat(np.arange(num_classes), half)
  train_labels = default_labels if labels is None else np.asarray(labels)
  test_labels = np.repeat(np.arange(num_classes), per_class - half)
  mean, std = train.mean(0), train.std(0) + 1e-6
  train, test = (train - mean) / std, (test - mean) / std
  optimizer = optax.adamw(config.probe_lr, weight_decay=config.probe_weight_decay)
  params = {"w": jnp.zeros((train.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
  logits_fn = lambda p, x: x @ p["w"] + p["b"]
  objective = lambda p: jnp.mean(losses.cross_entropy(logits_fn(p, train), train_labels))

  @jax.jit
  def fit(params):
    def step(state, _):
      params, opt_state = state
      grads = jax.grad(objective)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None
    return jax.lax.scan(step, (params, optimizer.init(params)), None, length=config.probe_steps)[0][0]

  params = fit(params)
  train_logits = logits_fn(params, train)
  accuracy = float(jnp.mean(losses.accuracy(logits_fn(params, test), test_labels)))
  return {"accuracy": accuracy,
          "train_losses": np.asarray(losses.cross_entropy(train_logits, train_labels)),
          "train_predictions": np.asarray(jnp.argmax(train_logits, -1)), "train_labels": train_labels}


def evaluate_encoder(encode, encoder_params, eval_images: np.ndarray, config: ml_collections.ConfigDict,
                     key: jax.Array, workdir: str | None = None) -> dict[str, Any]:
  """Few-shot, linear-probe and collapse metrics of a frozen encoder; writes the hard-example review."""
  embed_key, episode_key = jax.random.split(key)
  embeddings = embed_all(encode, encoder_params, eval_images, embed_key)
  results: dict[str, Any] = {"embedding_dim": int(embeddings.shape[-1])}
  flat = jnp.asarray(embeddings.reshape(-1, embeddings.shape[-1]))
  results.update({k: float(v) for k, v in losses.collapse_metrics(flat).items()})
  for index, (ways, shots) in enumerate(config.episodes):
    accuracy = few_shot_accuracy(embeddings, jax.random.fold_in(episode_key, index), ways, shots,
                                 config.num_queries, config.num_test_episodes)
    for rule, (mean, interval) in accuracy.items():
      results[f"{ways}way_{shots}shot_{rule}"] = mean
      results[f"{ways}way_{shots}shot_{rule}_interval"] = interval
  num_classes, per_class = eval_images.shape[:2]
  labels = None
  if config.corrections:
    corrections = transfer.read_corrections(config.corrections)
    labels = transfer.apply_corrections(np.repeat(np.arange(num_classes), per_class // 2), corrections,
                                        num_classes=num_classes)
    results["num_corrections"] = len(corrections)
  probe = linear_probe(embeddings, config, labels)
  results["linear_probe_accuracy"] = probe["accuracy"]
  if workdir is not None:
    half_images = np.asarray(eval_images[:, :per_class // 2]).reshape((-1, *eval_images.shape[2:]))
    transfer.write_review(workdir, half_images, probe["train_labels"], probe["train_losses"], config.review_k,
                          predictions=probe["train_predictions"])
  return results


def write_reconstructions(autoencoder, params, images: np.ndarray, path: str, title: str) -> None:
  """Top row: images; bottom row: ``sigmoid`` of the reconstructions."""
  inputs = metalax.data.to_float32(jnp.asarray(images))
  logits, _ = jax.jit(autoencoder.apply)({"params": params}, inputs)
  recon = np.asarray(jax.nn.sigmoid(logits))
  grid = transfer.image_grid(np.concatenate([np.asarray(inputs), recon]), num_columns=images.shape[0])
  fig, ax = reporting.subplots(figsize=(0.45 * images.shape[0] + 0.5, 1.3))
  ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=1)
  ax.axis("off")
  ax.set_title(title, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def load_encoder(workdir: str, config: ml_collections.ConfigDict, image_shape=(28, 28, 1)) -> Any:
  """The encoder params saved in ``workdir/encoder/`` (as ``{"params": ...}``), shaped by ``config``'s encoder."""
  encoder = make_encoder(config)
  abstract = jax.eval_shape(lambda: {"params": encoder.init(jax.random.key(0), jnp.zeros((2, *image_shape)))["params"]})
  return training.restore_latest(os.path.join(workdir, "encoder"), abstract, f"encoder of {workdir}")["params"]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Pretrains (unless ``loss == "random"``), evaluates the frozen encoder and writes the results."""
  check_config(config)
  workdir = training.prepare_workdir(workdir)
  training.check_resume(workdir, config)
  training.write_run_info(workdir, config)
  data = load_data(config)
  if config.num_eval_classes:
    data["eval"] = metalax.data.select_classes(data["eval"], range(min(config.num_eval_classes,
                                                                       data["eval"].num_classes)))
  for ways, shots in config.episodes:
    if ways > data["eval"].num_classes or shots + config.num_queries > data["eval"].num_per_class:
      raise ValueError(f"--config.episodes: {ways}-way {shots}-shot episodes with {config.num_queries} queries need "
                       f"{ways} evaluation classes of {shots + config.num_queries} images, but {config.dataset} has "
                       f"{data['eval'].num_classes} of {data['eval'].num_per_class} (MNIST: at most 10-way, e.g. "
                       "--config.episodes='((5,1),(5,5),(10,1),(10,5))').")
  train_images = jax.device_put(data["train"].images)
  image_shape = data["train"].image_shape
  init_key, train_key, eval_key = jax.random.split(jax.random.key(config.seed), 3)
  labelled = config.loss not in OTHER_LOSSES and objective(config).labelled
  mesh = training.make_mesh(config, config.classes_per_batch * config.examples_per_class if labelled
                          else config.batch_size)
  init, loss, encode, autoencoder = build(config, image_shape, mesh)
  params = jax.jit(init)(init_key)  # one compiled program, not one per operation
  optimizer = optax.adam(config.lr)

  def step(state, key, images):
    (_, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state["params"], key, images)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, metrics

  state = {"params": params, "opt_state": optimizer.init(params)}
  begin = time.perf_counter()
  if config.num_iterations > 0 and config.loss != "random":
    state = training.train_loop(step, state, data=train_images, key=train_key,
                                num_iterations=config.num_iterations, steps_per_call=config.steps_per_call,
                                checkpoint_every=config.checkpoint_every, run_dir=workdir, desc=config.preset,
                                mesh=mesh, on_nan=config.on_nan)
    state = metalax.parallel.local_copy(state)
  train_seconds = time.perf_counter() - begin
  encoder_params = state["params"]["encoder"]
  training.save_checkpoint(os.path.join(workdir, "encoder"), config.num_iterations, {"params": encoder_params})

  begin = time.perf_counter()
  results = evaluate_encoder(encode, encoder_params, data["eval"].images, config, eval_key, workdir)
  results.update(loss=config.loss, preset=config.preset, dataset=config.dataset,
                 num_iterations=config.num_iterations, train_seconds=round(train_seconds, 1),
                 eval_seconds=round(time.perf_counter() - begin, 1))
  if autoencoder is not None:
    picks = np.asarray(data["eval"].images[:12, 0])
    write_reconstructions(autoencoder, state["params"], picks, os.path.join(workdir, "reconstructions.png"),
                          f"{config.preset}: evaluation characters (top) and reconstructions (bottom)")
  training.write_json(os.path.join(workdir, "results.json"), results)
  summary = ", ".join(f"{k} {100 * v:.1f}%" for k, v in results.items()
                      if k.endswith(("prototype", "nearest_neighbour")) or k == "linear_probe_accuracy")
  logging.info("%s: %s", config.preset, summary)
  print(f"{config.preset} on {config.dataset}: {summary}; effective rank {results['effective_rank']:.1f}; "
        f"training {train_seconds:.0f} s")
  return results


if __name__ == "__main__":
  training.run(train_and_evaluate, os.path.join(os.path.dirname(__file__), "configs", "representation.py"))
