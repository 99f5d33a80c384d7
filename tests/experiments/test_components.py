"""The registries of experiments.components: every learner x model trains, names and import paths resolve."""

import functools

import jax
import numpy as np
import optax
import pytest

import metalax
from experiments import components
from experiments.configs import fewshot as fewshot_config
from metalax import meta
from tests.experiments import synthetic

# lax convolutions: they compile in about half the time of the patch products (tests/models/test_conv.py shows
# the two agree, to second order).
MODEL_FIELDS = dict(hidden=4, resnet_channels=(2, 3, 4, 4), mlp_features=(16, 8), conv_impl="xla")


def config_for(learner: str, model: str, **overrides):
  config = fewshot_config.get_config()
  config.update(dict(learner=learner, model=model, num_ways=3, num_shots=1, num_queries=2, meta_batch_size=2,
                     inner_lr=0.1, num_steps=1, imaml_cg_steps=2, **MODEL_FIELDS))
  config.update(overrides)
  return config


@functools.cache
def episode_batches():
  """Two batches of 3-way 1-shot episodes from two generated datasets of one image shape (so one compiled
  step serves both)."""
  sample = jax.jit(lambda key, images: metalax.sample_episodes(key, images, 2, 3, 1, 2))
  return [sample(jax.random.key(1), metalax.data.to_float32(synthetic.class_images(6, 4, seed))) for seed in (0, 1)]


@pytest.mark.parametrize("model", ["mlp", "conv4", "resnet12"])
@pytest.mark.parametrize("learner", sorted(components.LEARNERS))
def test_every_learner_with_every_model_trains(learner, model):
  # A small inner step for FOMAML (it drops the step's curvature: a descent direction for small steps) and on
  # ResNet-12 (batch statistics of 3 support images at 1x1 pixels make larger steps ill-conditioned).
  small_step = learner == "fomaml" or model == "resnet12"
  config = config_for(learner, model, **(dict(inner_lr=0.01) if small_step else {}))
  embedding = learner in components.EMBEDDING_LEARNERS
  network = components.make_model(config, None if embedding else config.num_ways)
  dim = components.embedding_dim(network, synthetic.IMAGE_SHAPE) if embedding else None
  made = components.make_learner(config, metalax.models.from_linen(network), num_ways=config.num_ways,
                                 num_steps=config.num_steps, embedding_dim=dim)
  params = components.init_params(network, jax.random.key(0), synthetic.IMAGE_SHAPE)
  meta_params = made.init(params)
  optimizer = optax.adam(1e-3 if model == "resnet12" else 3e-4)
  step = jax.jit(meta.train_step(made, optimizer))
  for episodes in episode_batches():
    state = (meta_params, optimizer.init(meta_params))
    losses = []
    for _ in range(3):  # the same batch again and again: the loss must fall
      *state, metrics = step(*state, episodes)
      losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses)), losses
    if learner == "reptile":  # Reptile's objective is a surrogate; its query loss need not fall in 3 steps
      continue
    assert losses[-1] < losses[0], (learner, model, losses)


def test_a_users_own_model_learner_and_loss_by_import_path():
  config = config_for("metalax.meta:protonet", "metalax.models:MLP", loss="metalax.losses:cross_entropy")
  network = components.make_model(config, 8)
  assert isinstance(network, metalax.models.MLP) and network.num_outputs == 8
  assert components.make_loss(config) is metalax.losses.cross_entropy
  with pytest.raises(ValueError, match="unknown 'resnet50'; expected one of conv4, mlp, resnet12"):
    components.make_model(config_for("maml", "resnet50"), 5)
  with pytest.raises(ValueError, match="cannot import module 'no_such_package.nets'"):
    components.make_model(config_for("maml", "no_such_package.nets:Net"), 5)
  with pytest.raises(ValueError, match="has no attribute 'Nope'"):
    components.make_model(config_for("maml", "metalax.models:Nope"), 5)


def test_inner_optimizer_by_name():
  assert isinstance(components.inner_optimizer(config_for("maml", "mlp", inner_optimizer="adam")),
                    optax.GradientTransformation)
  with pytest.raises(ValueError, match="optax has no optimizer 'adamm'"):
    components.inner_optimizer(config_for("maml", "mlp", inner_optimizer="adamm"))


def test_augment_entries_parse_to_operations():
  augmentation, mixes = components.parse_augment(
      ("random_flip", "random_rotation(15.0)", "random_apply(cutout(0.35), 0.5)", "cutmix(1.0)"), mixing=True)
  image = jax.numpy.ones((8, 8, 1)) * 0.5
  assert augmentation(jax.random.key(0), image).shape == (8, 8, 1)
  assert len(mixes) == 1
  with pytest.raises(ValueError, match="unknown operation 'random_flop'"):
    components.parse_augment(("random_flop",))
  with pytest.raises(ValueError, match="mixes images and labels across a batch"):
    components.parse_augment(("mixup(0.2)",))
  with pytest.raises(ValueError, match="must be a tuple"):
    components.parse_augment("random_flip")


def test_prefixed_datasets_split_by_class(tmp_path):
  images = synthetic.class_images(10, 5, seed=0)
  np.savez(tmp_path / "data.npz", images=images)
  config = config_for("protonet", "conv4", dataset=f"npz:{tmp_path / 'data.npz'}", class_split=(0.6, 0.2, 0.2))
  splits = components.load_dataset(config)
  sizes = {name: data.num_classes for name, data in splits.items()}
  assert sizes == {"train": 6, "validation": 2, "test": 2}
  with pytest.raises(ValueError, match="class_split must be three fractions"):
    components.load_dataset(config_for("protonet", "conv4", dataset=f"npz:{tmp_path / 'data.npz'}",
                                       class_split=(0.5, 0.2, 0.2)))
