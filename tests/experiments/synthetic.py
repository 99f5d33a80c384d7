"""Small generated few-shot data for the entrypoint tests: a user's own dataset by import path.

``--config.dataset=tests.experiments.synthetic:load`` gives class-structured images (each class a fixed
random pattern plus noise), so a few meta-iterations learn something and no download is needed.
"""

import numpy as np

import metalax

IMAGE_SHAPE = (16, 16, 1)


def class_images(num_classes: int, per_class: int, seed: int, image_shape=IMAGE_SHAPE) -> np.ndarray:
  """uint8 ``[num_classes, per_class, *image_shape]``: a random pattern per class, with pixel noise."""
  rng = np.random.default_rng(seed)
  patterns = rng.uniform(0, 255, (num_classes, 1, *image_shape))
  noise = rng.normal(0, 40, (num_classes, per_class, *image_shape))
  return np.clip(patterns + noise, 0, 255).astype(np.uint8)


def load(config) -> dict[str, metalax.data.ClassImages]:
  """``{"train", "validation", "test"}``: 12, 6 and 6 disjoint classes of 10 images each."""
  images = class_images(24, 10, seed=1234)
  return {"train": metalax.data.class_images(images[:12]),
          "validation": metalax.data.class_images(images[12:18]),
          "test": metalax.data.class_images(images[18:])}
