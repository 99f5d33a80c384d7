"""Augmentations: shapes, value ranges, determinism per key, parameter distributions, label mixing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalax import augment

KEY = jax.random.key(0)
IMAGES = jax.random.uniform(jax.random.key(1), (6, 12, 10, 1))
RGB = jax.random.uniform(jax.random.key(2), (6, 8, 8, 3))

AUGMENTATIONS = {
    "crop": augment.random_resized_crop(scale=(0.3, 1.0)),
    "crop_resize": augment.random_resized_crop(output_size=(7, 9)),
    "flip": augment.random_flip(horizontal=True, vertical=True),
    "rotation": augment.random_rotation(30.0),
    "brightness_contrast": augment.brightness_contrast(0.5, 0.5),
    "noise": augment.gaussian_noise(0.3),
    "cutout": augment.cutout(0.4),
    "compose": augment.compose(augment.random_resized_crop(scale=(0.5, 1.0)), augment.random_rotation(10.0),
                               augment.random_apply(augment.cutout(0.3), 0.5), augment.gaussian_noise(0.1)),
}


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS) + ["color_jitter"])
def test_shapes_ranges_and_determinism(name):
  augmentation = augment.color_jitter() if name == "color_jitter" else AUGMENTATIONS[name]
  images = RGB if name == "color_jitter" else IMAGES
  run = jax.jit(lambda key, x: augment.apply_batch(augmentation, key, x))
  out = run(KEY, images)
  expected_hw = (7, 9) if name == "crop_resize" else images.shape[1:3]
  assert out.shape == (images.shape[0], *expected_hw, images.shape[3])
  assert out.dtype == jnp.float32
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6
  np.testing.assert_array_equal(out, run(KEY, images))                   # same key, same result
  assert not np.array_equal(out, run(jax.random.key(7), images))        # another key, another result
  # Per-example keys: the batch equals a loop over the split keys, and images differ from each other's draws.
  keys = jax.random.split(KEY, images.shape[0])
  looped = np.stack([augmentation(k, x) for k, x in zip(keys, images)])
  np.testing.assert_allclose(out, looped, atol=1e-5)


def test_identity_parameters():
  image = IMAGES[0]
  crop = augment.random_resized_crop()
  np.testing.assert_allclose(crop.apply({"box": jnp.array([0.0, 0.0, 1.0, 1.0])}, image), image, atol=1e-5)
  np.testing.assert_allclose(augment.random_rotation(10).apply({"angle": 0.0}, image), image, atol=1e-5)
  flip = augment.random_flip(vertical=True)
  np.testing.assert_array_equal(flip.apply({"horizontal": True, "vertical": False}, image), image[:, ::-1])
  np.testing.assert_array_equal(flip.apply({"horizontal": False, "vertical": True}, image), image[::-1])
  jitter = augment.brightness_contrast()
  np.testing.assert_allclose(jitter.apply({"brightness": 1.0, "contrast": 1.0}, image), image, atol=1e-6)
  color = augment.color_jitter()
  np.testing.assert_allclose(color.apply({"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0},
                                         RGB[0]), RGB[0], atol=1e-5)
  # A 90-degree rotation of a square image is np.rot90 (clockwise as displayed).
  square = IMAGES[0, :10]
  rotated = augment.random_rotation(90).apply({"angle": jnp.pi / 2}, square)
  np.testing.assert_allclose(rotated, np.rot90(square, k=-1, axes=(0, 1)), atol=1e-4)
  # Cropping the left half and resizing to half width keeps the left half.
  half = crop.apply({"box": jnp.array([0.0, 0.0, 1.0, 0.5])}, jnp.tile(jnp.arange(10.0)[None, :, None] / 10,
                                                                        (12, 1, 1)))
  assert float(half[0, -1, 0]) < 0.55


def sample_many(augmentation, n=4000):
  return jax.vmap(augmentation.sample)(jax.random.split(KEY, n))


def test_parameter_distributions():
  box = sample_many(augment.random_resized_crop(scale=(0.2, 1.0), ratio=(1.0, 1.0)))["box"]
  area = box[:, 2] * box[:, 3]
  np.testing.assert_allclose(np.mean(area), 0.6, atol=0.02)              # U(0.2, 1) without clipping at ratio 1
  assert float(area.min()) >= 0.2 - 1e-6 and float(area.max()) <= 1.0 + 1e-6
  assert np.all(box[:, 0] + box[:, 2] <= 1 + 1e-6) and np.all(box[:, 1] + box[:, 3] <= 1 + 1e-6)
  log_ratio = np.log(sample_many(augment.random_resized_crop(scale=(0.01, 0.01)))["box"])
  log_ratio = log_ratio[:, 3] - log_ratio[:, 2]
  np.testing.assert_allclose(np.mean(log_ratio), 0.0, atol=0.02)         # log-uniform in (3/4, 4/3), symmetric
  assert np.max(np.abs(log_ratio)) <= np.log(4 / 3) + 1e-5
  flips = sample_many(augment.random_flip(probability=0.3))
  np.testing.assert_allclose(np.mean(flips["horizontal"]), 0.3, atol=0.03)
  assert not np.any(flips["vertical"])
  angle = sample_many(augment.random_rotation(30))["angle"]
  assert np.max(np.abs(angle)) <= np.radians(30) + 1e-6
  np.testing.assert_allclose(np.std(angle), np.radians(30) / np.sqrt(3), rtol=0.05)   # uniform
  jitter = sample_many(augment.brightness_contrast(0.4, 0.2))
  np.testing.assert_allclose([jitter["brightness"].min(), jitter["brightness"].max()], [0.6, 1.4], atol=0.01)
  np.testing.assert_allclose(np.mean(jitter["contrast"]), 1.0, atol=0.01)
  centre = sample_many(augment.cutout())["centre"]
  np.testing.assert_allclose(np.mean(centre, 0), [0.5, 0.5], atol=0.02)
  gate = sample_many(augment.random_apply(augment.cutout(), 0.25))["apply"]
  np.testing.assert_allclose(np.mean(gate), 0.25, atol=0.03)


def test_noise_statistics_and_cutout_area():
  grey = jnp.full((64, 64, 1), 0.5)
  noisy = augment.gaussian_noise(0.1)(KEY, grey)
  np.testing.assert_allclose(np.std(noisy - 0.5), 0.1, rtol=0.05)
  erased = augment.cutout(0.5).apply({"centre": jnp.array([0.5, 0.5])}, grey)
  np.testing.assert_allclose(np.mean(erased == 0), 0.25, atol=0.01)


def test_mixup_and_cutmix_mix_labels_like_inputs():
  n, classes = 6, 4
  labels = jax.nn.one_hot(jnp.arange(n) % classes, classes)
  # Constant images equal to the class index, so the mixed pixel mean reveals the mixing weight.
  inputs = jnp.broadcast_to((jnp.arange(n) % classes).astype(jnp.float32)[:, None, None, None], (n, 8, 8, 1))
  for mix in (augment.mixup, augment.cutmix):
    mixed, mixed_labels, lam = jax.jit(mix)(KEY, inputs, labels)
    assert mixed.shape == inputs.shape and mixed_labels.shape == labels.shape and lam.shape == (n,)
    np.testing.assert_allclose(mixed_labels.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(mixed.mean(axis=(1, 2, 3)), mixed_labels @ jnp.arange(classes, dtype=jnp.float32),
                               rtol=1e-5, atol=1e-5)
    assert np.all((lam >= 0) & (lam <= 1))
  lam = jax.vmap(lambda k: augment.mixup(k, inputs, labels, alpha=0.5)[2])(jax.random.split(KEY, 500))
  np.testing.assert_allclose(np.mean(lam), 0.5, atol=0.02)               # Beta(a, a) has mean 1/2
  np.testing.assert_allclose(np.var(lam), 0.25 / (2 * 0.5 + 1), rtol=0.1)


@pytest.mark.parametrize("call, match", [
    (lambda: augment.random_resized_crop(scale=(0.0, 1.0)), "scale"),
    (lambda: augment.random_flip(probability=1.5), "probability"),
    (lambda: augment.color_jitter().apply(augment.color_jitter().sample(KEY), IMAGES[0]), "RGB"),
    (lambda: augment.mixup(KEY, IMAGES, jnp.arange(6)), "one_hot"),
    (lambda: augment.cutout()(KEY, IMAGES), "one image"),
    (lambda: augment.compose(), "at least one"),
])
def test_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_parse_composes_named_operations_in_order():
  parsed = augment.parse("random_flip(horizontal=True, vertical=True), random_rotation(max_degrees=10)")
  same = augment.parse(["random_flip(horizontal=True, vertical=True)", "random_rotation(max_degrees=10)"])
  flip, rotation = augment.random_flip(vertical=True), augment.random_rotation(10.0)

  @jax.jit
  def run(key, image):
    params = parsed.sample(key)
    expected = rotation.apply(params[2], flip.apply(params[1], image))
    return params, parsed.apply(params, image), parsed(key, image), same(key, image), expected

  (conversion, _, rotation_params), applied, called, same_called, expected = run(KEY, IMAGES[0])
  assert conversion == ()
  assert abs(float(rotation_params["angle"])) <= np.radians(10)
  for out in (applied, called, same_called):
    np.testing.assert_allclose(out, expected, atol=1e-6)
  assert augment.parse("") is None and augment.parse(None) is None and augment.parse(" , ") is None


def test_parse_defaults_uint8_and_tuple_arguments():
  rotate = augment.parse("random_rotation")
  crop = augment.parse("random_resized_crop(scale=(0.5, 1.0), output_size=(6, 5)),gaussian_noise")
  flip = augment.parse("random_flip(probability=1.0)")
  pixels = (IMAGES[0] * 255).astype(jnp.uint8)

  @jax.jit
  def run(key):
    angles = jax.vmap(lambda k: rotate.sample(k)[1]["angle"])(jax.random.split(key, 400))
    return angles, crop(key, IMAGES[0]), flip(key, pixels)

  angles, cropped, flipped = run(KEY)
  assert np.radians(14) < np.abs(angles).max() <= np.radians(15)           # PARSE_DEFAULTS: 15 degrees
  assert cropped.shape == (6, 5, 1)
  assert flipped.dtype == jnp.float32                                     # uint8 in, float32 in [0, 1] out
  np.testing.assert_allclose(flipped, np.asarray(pixels)[:, ::-1].astype(np.float32) / 255, rtol=1e-6)


def test_parse_with_mixing_returns_the_batch_operation():
  augmentation, mixing = augment.parse_with_mixing("random_flip,cutmix(alpha=0.5)")
  assert isinstance(augmentation, augment.Augmentation)
  assert mixing.func is augment.cutmix and mixing.keywords == {"alpha": 0.5}
  assert augment.parse_with_mixing("mixup")[0] is None
  assert augment.parse_with_mixing("cutout")[1] is None


@pytest.mark.parametrize("call, match", [
    (lambda: augment.parse("random_flip,random_blur"),
     "unknown augmentation 'random_blur'; known operations: brightness_contrast, color_jitter, cutout, "
     "gaussian_noise, random_flip, random_resized_crop, random_rotation; batch-level"),
    (lambda: augment.parse("random_flip,mixup"), "mixup mixes examples and their labels across a batch"),
    (lambda: augment.parse("cutmix(alpha=1.0)"), "cutmix mixes .* parse_with_mixing"),
    (lambda: augment.parse_with_mixing("mixup,cutmix"), "at most one of"),
    (lambda: augment.parse_with_mixing("mixup(alpha=0)"), "alpha > 0"),
    (lambda: augment.parse_with_mixing("mixup(beta=1)"), "alpha > 0"),
    (lambda: augment.parse("random_rotation(15)"), "name\\(key=value"),
    (lambda: augment.parse("random_rotation(max_degrees=x)"), "literal values"),
    (lambda: augment.parse("random_flip(angle=3)"), "random_flip.*unexpected keyword argument 'angle'"),
    (lambda: augment.parse("random_flip(probability=2.0)"), "probability must be in"),
])
def test_parse_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()
