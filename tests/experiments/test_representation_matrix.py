"""The "Done when" matrix of the representation entrypoint: every objective x two augmentation lists.

Built through ``experiments.representation.build`` (the entrypoint's own objective, encoder, projector and
augmentation), a few Adam steps each on one fixed generated batch (one key, so the augmented views repeat and the
objective is a fixed function): a finite loss that decreased. One jitted program per objective runs both lists.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import representation
from experiments.configs import representation as representation_config
from tests.experiments import synthetic

AUGMENT_LISTS = (("random_flip", "gaussian_noise(0.05)"),
                 ("random_resized_crop(scale=(0.5, 1.0))", "random_rotation(10.0)", "cutmix(1.0)"))
NUM_STEPS = 4


def config_for(loss, augment):
  config = representation_config.get_config("simclr")
  config.update(dict(loss=loss, augment=augment, hidden=4, batch_size=12, classes_per_batch=3, examples_per_class=2,
                     projector_hidden=8, projection_dim=4, decoder_features=(8,),
                     conv_impl="xla"))
  return config


@pytest.mark.parametrize("loss", sorted(representation.OBJECTIVES) + ["autoencoder"])
def test_every_objective_with_two_augmentation_lists_decreases_its_loss(loss):
  images = jnp.asarray(synthetic.class_images(4, 4, seed=0))
  builds = [representation.build(config_for(loss, augment), synthetic.IMAGE_SHAPE) for augment in AUGMENT_LISTS]
  optimizer = optax.adam(1e-2)

  @jax.jit
  def run(key):
    def steps(init, objective):
      params = init(jax.random.key(0))

      def body(state, _):
        (value, _), grads = jax.value_and_grad(objective, has_aux=True)(state[0], key, images)
        updates, opt_state = optimizer.update(grads, state[1], state[0])
        return (optax.apply_updates(state[0], updates), opt_state), value

      return jax.lax.scan(body, (params, optimizer.init(params)), None, NUM_STEPS)[1]
    return jnp.stack([steps(init, objective) for init, objective, _, _ in builds])

  losses = np.asarray(run(jax.random.key(1)))   # [lists, NUM_STEPS]: each step's loss before its update
  for augment, values in zip(AUGMENT_LISTS, losses):
    assert np.all(np.isfinite(values)), (loss, augment, values)
    assert values[-1] < values[0], (loss, augment, values)
