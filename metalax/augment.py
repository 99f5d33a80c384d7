r"""Image augmentations as pure, jittable functions with explicit per-example keys.

An augmentation is an :class:`Augmentation`, a NamedTuple of two pure
functions (the optax way):

* ``sample(key) -> params``: draws the random parameters of one image (a small
  pytree of scalars: crop box, angle, jitter factors, ...), nothing else;
* ``apply(params, image) -> image``: the deterministic transformation of one
  image ``[H, W, C]`` (float in ``[0, 1]``).

Calling it, ``augmentation(key, image)``, is ``apply(sample(key), image)``:
the ``augment(key, image)`` signature that :func:`metalax.episodes.sample_episode`
accepts. :func:`apply_batch` gives every image of a batch its own key (one
``jax.random.split``) and ``vmap``\ s; the caller decides where to ``jit``
(close over the augmentation, which is not a valid ``jit`` argument).
Splitting ``sample`` from ``apply`` lets tests check the distribution of the
parameters directly and lets a user log or replay them.

Constructors: :func:`random_resized_crop`, :func:`random_flip`,
:func:`random_rotation`, :func:`brightness_contrast`, :func:`color_jitter`
(RGB), :func:`gaussian_noise`, :func:`cutout`; combinators :func:`compose` and
:func:`random_apply`. Batch-level mixing with label mixing: :func:`mixup` and
:func:`cutmix` (labels as one-hot or soft ``[n, num_classes]`` rows).

Every output stays in ``[0, 1]`` (jitter and noise are clipped, crops and
rotations interpolate).

By name: :func:`parse` turns a comma list such as
``"random_flip,random_rotation(max_degrees=10)"`` into one
:class:`Augmentation` (the per-image operations of :data:`OPERATIONS`), for
episodes: ``metalax.sample_episodes(key, images, ..., augment=parse(spec))``
augments every support and query image with its own key. MixUp and CutMix mix
examples and labels across a batch, so they have no per-image form: ``parse``
rejects them, and :func:`parse_with_mixing` returns them separately for
batch training with one-hot labels (``experiments.representation``).
"""

import ast
import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Params = Any


class Augmentation(NamedTuple):
  """A random image transformation: ``sample(key) -> params`` and ``apply(params, image) -> image``."""

  sample: Callable[[jax.Array], Params]
  apply: Callable[[Params, jax.Array], jax.Array]

  def __call__(self, key: jax.Array, image: jax.Array) -> jax.Array:
    """``apply(sample(key), image)`` for one image ``[H, W, C]``."""
    return self.apply(self.sample(key), image)


def _check_image(image: jax.Array, who: str) -> None:
  if image.ndim != 3:
    raise ValueError(f"{who} works on one image [H, W, C]; got shape {tuple(image.shape)} (use apply_batch "
                     "for a batch).")


def _check_range(name: str, low: float, high: float) -> None:
  if not low <= high:
    raise ValueError(f"{name} must be an interval (low, high) with low <= high, got ({low}, {high}).")


def apply_batch(augmentation: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array,
                images: jax.Array) -> jax.Array:
  """Augments each image of ``images [n, H, W, C]`` with its own key from ``jax.random.split(key, n)``.

  Example:
    >>> augment = compose(random_resized_crop(scale=(0.5, 1.0)), gaussian_noise(0.1))
    >>> views = jax.jit(lambda k, x: apply_batch(augment, k, x))(key, images)
  """
  if images.ndim != 4:
    raise ValueError(f"images must have shape [n, H, W, C], got {tuple(images.shape)}.")
  return jax.vmap(augmentation)(jax.random.split(key, images.shape[0]), images)


def compose(*augmentations: Augmentation) -> Augmentation:
  """Applies ``augmentations`` in order, each with its own sub-key."""
  if not augmentations:
    raise ValueError("compose needs at least one augmentation.")

  def sample(key):
    keys = jax.random.split(key, len(augmentations))
    return tuple(a.sample(k) for a, k in zip(augmentations, keys))

  def apply(params, image):
    for augmentation, p in zip(augmentations, params):
      image = augmentation.apply(p, image)
    return image

  return Augmentation(sample, apply)


def random_apply(augmentation: Augmentation, probability: float) -> Augmentation:
  """Applies ``augmentation`` with the given probability (its output must keep the image's shape).

  Params: ``{"apply": bool, "inner": ...}``.
  """
  if not 0 <= probability <= 1:
    raise ValueError(f"probability must be in [0, 1], got {probability}.")

  def sample(key):
    gate_key, inner_key = jax.random.split(key)
    return {"apply": jax.random.bernoulli(gate_key, probability), "inner": augmentation.sample(inner_key)}

  def apply(params, image):
    return jnp.where(params["apply"], augmentation.apply(params["inner"], image), image)

  return Augmentation(sample, apply)


def random_resized_crop(scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        output_size: Sequence[int] | None = None) -> Augmentation:
  """Crops a random box and resizes it (bilinear, antialiased) to ``output_size``.

  The box's area is a fraction ``s ~ U(scale)`` of the image and its aspect
  ratio ``r`` is log-uniform in ``ratio``: height ``sqrt(s / r)`` and width
  ``sqrt(s r)`` (fractions of the image's, each clipped to 1), placed uniformly
  inside the image. torchvision instead retries up to 10 draws that do not fit
  and then falls back to a central crop; clipping gives the same boxes
  whenever a draw fits.

  Args:
    scale: range of the box's area fraction, within ``(0, 1]``.
    ratio: range of the box's width / height.
    output_size: ``(H', W')``; default the input's ``(H, W)``.

  Returns:
    An :class:`Augmentation` with params ``{"box": [top, left, height, width]}``
    (fractions of the image size).

  References:
    Szegedy et al., Going Deeper with Convolutions, CVPR 2015 (the crop);
    Chen et al., SimCLR, ICML 2020 (its key role for contrastive learning).
  """
  _check_range("scale", *scale)
  _check_range("ratio", *ratio)
  if not (0 < scale[0] and scale[1] <= 1):
    raise ValueError(f"scale must lie in (0, 1], got {scale}.")
  if not ratio[0] > 0:
    raise ValueError(f"ratio must be positive, got {ratio}.")

  def sample(key):
    area_key, ratio_key, y_key, x_key = jax.random.split(key, 4)
    area = jax.random.uniform(area_key, (), minval=scale[0], maxval=scale[1])
    log_ratio = jax.random.uniform(ratio_key, (), minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
    height = jnp.minimum(jnp.sqrt(area / jnp.exp(log_ratio)), 1.0)
    width = jnp.minimum(jnp.sqrt(area * jnp.exp(log_ratio)), 1.0)
    top = jax.random.uniform(y_key, ()) * (1 - height)
    left = jax.random.uniform(x_key, ()) * (1 - width)
    return {"box": jnp.stack([top, left, height, width])}

  def apply(params, image):
    _check_image(image, "random_resized_crop")
    h, w, c = image.shape
    out_h, out_w = tuple(output_size) if output_size is not None else (h, w)
    top, left, height, width = params["box"]
    scale_yx = jnp.stack([out_h / (height * h), out_w / (width * w)])
    translation = -jnp.stack([top * h, left * w]) * scale_yx
    return jax.image.scale_and_translate(image.astype(jnp.float32), (out_h, out_w, c), (0, 1), scale_yx,
                                         translation, method="linear", antialias=True)

  return Augmentation(sample, apply)


def random_flip(horizontal: bool = True, vertical: bool = False, probability: float = 0.5) -> Augmentation:
  """Flips left-right and/or up-down, each independently with ``probability``.

  Params: ``{"horizontal": bool, "vertical": bool}`` (always false for a disabled axis).
  """
  if not 0 <= probability <= 1:
    raise ValueError(f"probability must be in [0, 1], got {probability}.")

  def sample(key):
    h_key, v_key = jax.random.split(key)
    return {"horizontal": jax.random.bernoulli(h_key, probability) & horizontal,
            "vertical": jax.random.bernoulli(v_key, probability) & vertical}

  def apply(params, image):
    _check_image(image, "random_flip")
    image = jnp.where(params["horizontal"], image[:, ::-1], image)
    return jnp.where(params["vertical"], image[::-1], image)

  return Augmentation(sample, apply)


def random_rotation(max_degrees: float, fill: float = 0.0) -> Augmentation:
  """Rotates about the image centre by an angle uniform in ``[-max_degrees, max_degrees]`` (bilinear).

  Pixels from outside the image get ``fill`` (0 is the background of
  :func:`metalax.data.load_omniglot` and MNIST).

  Params: ``{"angle": radians}``; a positive angle turns the image clockwise as
  displayed (rows downwards): ``pi / 2`` is ``np.rot90(image, k=-1)``.
  """
  if not max_degrees >= 0:
    raise ValueError(f"max_degrees must be >= 0, got {max_degrees}.")
  limit = math.radians(max_degrees)

  def sample(key):
    return {"angle": jax.random.uniform(key, (), minval=-limit, maxval=limit)}

  def apply(params, image):
    _check_image(image, "random_rotation")
    h, w, c = image.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    y, x = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    cos, sin = jnp.cos(params["angle"]), jnp.sin(params["angle"])
    # Inverse map: the output pixel (y, x) reads the input at the point rotated back.
    source_y = cos * (y - cy) - sin * (x - cx) + cy
    source_x = sin * (y - cy) + cos * (x - cx) + cx
    channels = [jax.scipy.ndimage.map_coordinates(image[..., i].astype(jnp.float32), [source_y, source_x],
                                                  order=1, mode="constant", cval=fill) for i in range(c)]
    return jnp.stack(channels, axis=-1)

  return Augmentation(sample, apply)


def _factor(key: jax.Array, amount: float) -> jax.Array:
  return jax.random.uniform(key, (), minval=max(0.0, 1 - amount), maxval=1 + amount)


def _blend(image: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
  """``factor * image + (1 - factor) * other``, clipped to [0, 1] (torchvision's ``_blend``)."""
  return jnp.clip(factor * image + (1 - factor) * other, 0.0, 1.0)


def _grey(image: jax.Array) -> jax.Array:
  if image.shape[-1] == 3:
    return (image @ jnp.array([0.299, 0.587, 0.114], jnp.float32))[..., None]
  return jnp.mean(image, axis=-1, keepdims=True)


def brightness_contrast(brightness: float = 0.4, contrast: float = 0.4) -> Augmentation:
  """Brightness then contrast jitter, torchvision's definitions, for any number of channels.

  Brightness multiplies the image by ``b ~ U(max(0, 1 - brightness), 1 +
  brightness)``; contrast blends it with its mean grey level by ``c`` drawn
  alike. The result is clipped to ``[0, 1]``.

  Params: ``{"brightness": b, "contrast": c}``.
  """
  if brightness < 0 or contrast < 0:
    raise ValueError(f"brightness and contrast must be >= 0, got {brightness} and {contrast}.")

  def sample(key):
    b_key, c_key = jax.random.split(key)
    return {"brightness": _factor(b_key, brightness), "contrast": _factor(c_key, contrast)}

  def apply(params, image):
    _check_image(image, "brightness_contrast")
    image = jnp.clip(image.astype(jnp.float32) * params["brightness"], 0.0, 1.0)
    return _blend(image, jnp.mean(_grey(image)), params["contrast"])

  return Augmentation(sample, apply)


# NumPy, not jnp: a module-level jnp array would start the JAX backend on import (before jax.distributed.initialize).
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)


def color_jitter(brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.1) -> Augmentation:
  """Brightness, contrast, saturation and hue jitter of RGB images, in that order (SimCLR's colour distortion).

  Brightness and contrast as :func:`brightness_contrast`; saturation blends
  with the grey image by ``s ~ U(max(0, 1 - saturation), 1 + saturation)``;
  hue rotates the chroma plane of YIQ space by ``2 pi h``, ``h ~ U(-hue,
  hue)`` (``hue <= 0.5``), an approximation of torchvision's HSV hue shift.
  torchvision applies the four in a random order; this order is fixed.

  Params: ``{"brightness", "contrast", "saturation", "hue"}``.
  """
  if min(brightness, contrast, saturation) < 0 or not 0 <= hue <= 0.5:
    raise ValueError("brightness, contrast and saturation must be >= 0 and hue in [0, 0.5], got "
                     f"{brightness}, {contrast}, {saturation}, {hue}.")
  base = brightness_contrast(brightness, contrast)

  def sample(key):
    base_key, s_key, h_key = jax.random.split(key, 3)
    return {**base.sample(base_key), "saturation": _factor(s_key, saturation),
            "hue": jax.random.uniform(h_key, (), minval=-hue, maxval=hue)}

  def apply(params, image):
    _check_image(image, "color_jitter")
    if image.shape[-1] != 3:
      raise ValueError(f"color_jitter needs RGB images [H, W, 3], got {tuple(image.shape)}; use "
                       "brightness_contrast for grey images.")
    image = base.apply(params, image)
    image = _blend(image, _grey(image), params["saturation"])
    angle = 2 * jnp.pi * params["hue"]
    rotation = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], jnp.float32)
    rotation = rotation.at[1:, 1:].set(jnp.array([[jnp.cos(angle), -jnp.sin(angle)],
                                                  [jnp.sin(angle), jnp.cos(angle)]]))
    transform = np.linalg.inv(_RGB_TO_YIQ) @ rotation @ _RGB_TO_YIQ
    return jnp.clip(image @ transform.T, 0.0, 1.0)

  return Augmentation(sample, apply)


def gaussian_noise(std: float, clip: bool = True) -> Augmentation:
  """Adds i.i.d. ``N(0, std^2)`` noise to every pixel, then clips to ``[0, 1]`` (unless ``clip=False``).

  Params: ``{"key": the noise key}`` (the noise has the image's shape, known only at ``apply``).
  """
  if std < 0:
    raise ValueError(f"std must be >= 0, got {std}.")

  def sample(key):
    return {"key": key}

  def apply(params, image):
    _check_image(image, "gaussian_noise")
    noisy = image.astype(jnp.float32) + std * jax.random.normal(params["key"], image.shape)
    return jnp.clip(noisy, 0.0, 1.0) if clip else noisy

  return Augmentation(sample, apply)


def _box_mask(h: int, w: int, centre_y, centre_x, box_h, box_w) -> jax.Array:
  """``[h, w]`` bool: pixels whose centres fall in the box (fractions of the image; clipped at the edges)."""
  y = (jnp.arange(h) + 0.5) / h
  x = (jnp.arange(w) + 0.5) / w
  inside_y = jnp.abs(y - centre_y) <= box_h / 2
  inside_x = jnp.abs(x - centre_x) <= box_w / 2
  return inside_y[:, None] & inside_x[None, :]


def cutout(size: float = 0.5, fill: float = 0.0) -> Augmentation:
  """Sets a square of side ``size`` (a fraction of the image side) to ``fill``, centred uniformly.

  The square may extend past the border, as in DeVries & Taylor (2017), so
  on average less than ``size^2`` of the image is erased.

  Params: ``{"centre": [y, x]}`` (fractions of the image size).

  References:
    DeVries & Taylor, Improved Regularization of Convolutional Neural Networks
    with Cutout, arXiv:1708.04552, 2017.
  """
  if not 0 <= size <= 1:
    raise ValueError(f"size must be in [0, 1], got {size}.")

  def sample(key):
    return {"centre": jax.random.uniform(key, (2,))}

  def apply(params, image):
    _check_image(image, "cutout")
    h, w, _ = image.shape
    mask = _box_mask(h, w, params["centre"][0], params["centre"][1], size, size)
    return jnp.where(mask[..., None], jnp.asarray(fill, jnp.float32), image.astype(jnp.float32))

  return Augmentation(sample, apply)


def _check_mixing(inputs: jax.Array, labels: jax.Array, alpha: float, who: str) -> None:
  if alpha <= 0:
    raise ValueError(f"{who}: alpha must be > 0, got {alpha}.")
  if labels.ndim != 2 or labels.shape[0] != inputs.shape[0]:
    raise ValueError(f"{who}: labels must be one-hot or soft [n, num_classes] rows for inputs "
                     f"{tuple(inputs.shape)}, got {tuple(labels.shape)}; use jax.nn.one_hot(labels, num_classes).")


def mixup(key: jax.Array, inputs: jax.Array, labels: jax.Array, alpha: float = 0.2
          ) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""MixUp: convex combinations of examples and of their labels.

  Example ``i`` is mixed with example ``pi(i)`` of a random permutation
  ``pi``: :math:`\tilde x_i = \lambda_i x_i + (1 - \lambda_i) x_{\pi(i)}`, and the
  labels alike, with one :math:`\lambda_i \sim \mathrm{Beta}(\alpha, \alpha)`
  per example (the paper draws one per batch; per-example draws have the same
  marginal distribution and a lower-variance gradient).

  Args:
    key: a PRNG key.
    inputs: ``[n, ...]``.
    labels: ``[n, num_classes]`` one-hot or soft labels.
    alpha: the Beta distribution's parameter (> 0).

  Returns:
    ``(inputs [n, ...], labels [n, num_classes], lam [n])``.

  References:
    Zhang, Cisse, Dauphin & Lopez-Paz, mixup: Beyond Empirical Risk Minimization, ICLR 2018.
  """
  _check_mixing(inputs, labels, alpha, "mixup")
  perm_key, lam_key = jax.random.split(key)
  n = inputs.shape[0]
  partner = jax.random.permutation(perm_key, n)
  lam = jax.random.beta(lam_key, alpha, alpha, (n,))
  lam_x = lam.reshape((n,) + (1,) * (inputs.ndim - 1))
  mixed = lam_x * inputs + (1 - lam_x) * inputs[partner]
  return mixed, lam[:, None] * labels + (1 - lam[:, None]) * labels[partner], lam


def cutmix(key: jax.Array, inputs: jax.Array, labels: jax.Array, alpha: float = 1.0
           ) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""CutMix: paste a box from a partner image; labels mixed by the area kept.

  Example ``i`` gets a box from example ``pi(i)`` of a random permutation:
  with :math:`\lambda_i \sim \mathrm{Beta}(\alpha, \alpha)` the box has sides
  :math:`\sqrt{1 - \lambda_i}` of the image's and a uniform centre, clipped at
  the border; the label weight is the fraction of pixels *not* pasted (so a
  clipped box changes it, as in the paper's code).

  Args:
    key: a PRNG key.
    inputs: ``[n, H, W, C]``.
    labels: ``[n, num_classes]`` one-hot or soft labels.
    alpha: the Beta distribution's parameter (> 0).

  Returns:
    ``(inputs [n, H, W, C], labels [n, num_classes], lam [n])`` with ``lam``
    the kept fraction.

  References:
    Yun et al., CutMix: Regularization Strategy to Train Strong Classifiers
    with Localizable Features, ICCV 2019.
  """
  if inputs.ndim != 4:
    raise ValueError(f"cutmix: inputs must be images [n, H, W, C], got {tuple(inputs.shape)}.")
  _check_mixing(inputs, labels, alpha, "cutmix")
  perm_key, lam_key, centre_key = jax.random.split(key, 3)
  n, h, w, _ = inputs.shape
  partner = jax.random.permutation(perm_key, n)
  side = jnp.sqrt(1 - jax.random.beta(lam_key, alpha, alpha, (n,)))
  centres = jax.random.uniform(centre_key, (n, 2))
  masks = jax.vmap(lambda c, s: _box_mask(h, w, c[0], c[1], s, s))(centres, side)     # [n, h, w]
  mixed = jnp.where(masks[..., None], inputs[partner], inputs)
  lam = 1 - jnp.mean(masks, axis=(1, 2))
  return mixed, lam[:, None] * labels + (1 - lam[:, None]) * labels[partner], lam


Mixing = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]
"""``mixing(key, inputs [n, ...], labels [n, num_classes]) -> (inputs, labels, lam [n])``: :func:`mixup`, :func:`cutmix`."""

OPERATIONS: dict[str, Callable[..., Augmentation]] = {
    "brightness_contrast": brightness_contrast,
    "color_jitter": color_jitter,
    "cutout": cutout,
    "gaussian_noise": gaussian_noise,
    "random_flip": random_flip,
    "random_resized_crop": random_resized_crop,
    "random_rotation": random_rotation,
}
"""Per-image operations by name, for :func:`parse`."""

PARSE_DEFAULTS: dict[str, dict[str, Any]] = {
    "random_rotation": {"max_degrees": 15.0},
    "gaussian_noise": {"std": 0.05},
}
"""Arguments :func:`parse` gives to constructors that have no default (a name's own arguments override them)."""

MIXING: dict[str, Callable[..., Any]] = {"cutmix": cutmix, "mixup": mixup}
"""Batch-level operations that mix labels, for :func:`parse_with_mixing`."""


def _to_float32() -> Augmentation:
  """uint8 ``[0, 255]`` -> float32 ``[0, 1]``; float input is only cast (as :func:`metalax.data.to_float32`)."""

  def apply(params, image):
    del params
    if image.dtype == jnp.uint8:
      return image.astype(jnp.float32) / 255.0
    return image.astype(jnp.float32)

  return Augmentation(lambda key: (), apply)


def _split_top_level(spec: str) -> list[str]:
  """Splits at commas outside parentheses and brackets."""
  items, depth, start = [], 0, 0
  for i, char in enumerate(spec):
    if char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    elif char == "," and depth == 0:
      items.append(spec[start:i])
      start = i + 1
  items.append(spec[start:])
  return [item.strip() for item in items if item.strip()]


def _known() -> str:
  return (f"known operations: {', '.join(sorted(OPERATIONS))}; batch-level (parse_with_mixing only): "
          f"{', '.join(sorted(MIXING))}")


def _parse_item(item: str) -> tuple[str, dict[str, Any]]:
  """``"name"`` or ``"name(key=literal, ...)"`` -> ``(name, kwargs)``."""
  try:
    node = ast.parse(item, mode="eval").body
  except SyntaxError:
    node = None
  if isinstance(node, ast.Name):
    return node.id, {}
  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args:
    try:
      kwargs = {keyword.arg: ast.literal_eval(keyword.value) for keyword in node.keywords}
    except ValueError:
      kwargs = None
    if kwargs is not None and None not in kwargs:
      return node.func.id, kwargs
  raise ValueError(
      f"cannot parse augmentation {item!r}: expected a name or name(key=value, ...) with literal values, "
      f"e.g. random_rotation(max_degrees=10) or random_resized_crop(scale=(0.5, 1.0)); {_known()}.")


def _build(name: str, kwargs: dict[str, Any], table: dict[str, Callable[..., Any]]) -> Any:
  try:
    return table[name](**{**PARSE_DEFAULTS.get(name, {}), **kwargs})
  except TypeError as error:
    raise ValueError(f"augmentation {name}{tuple(kwargs.items()) if kwargs else ''}: {error}.") from None


def parse_with_mixing(spec: str | Sequence[str] | None) -> tuple[Augmentation | None, Mixing | None]:
  """Parses per-image operations and at most one batch-level mixing (``mixup`` or ``cutmix``).

  Args:
    spec: as in :func:`parse`; may also name ``mixup`` or ``cutmix`` (with
      ``alpha=...``), once.

  Returns:
    ``(augmentation, mixing)``: the per-image :class:`Augmentation` as
    :func:`parse` returns it (``None`` if there is none) and the
    :data:`Mixing` function (``None`` if there is none). Apply the
    augmentation to each image, then the mixing to the batch with one-hot
    labels: ``mixing(key, apply_batch(augmentation, key2, images),
    jax.nn.one_hot(labels, num_classes))``.

  Raises:
    ValueError: as :func:`parse`, or if more than one mixing is named.
  """
  items = _split_top_level(spec) if isinstance(spec, str) else [str(s).strip() for s in (spec or ()) if str(s).strip()]
  operations, mixings = [], []
  for item in items:
    name, kwargs = _parse_item(item)
    if name in OPERATIONS:
      operations.append(_build(name, kwargs, OPERATIONS))
    elif name in MIXING:
      alpha = kwargs.get("alpha", 1.0)
      if set(kwargs) - {"alpha"} or isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ValueError(f"augmentation {name} takes one argument, alpha > 0, got {kwargs}.")
      mixings.append(functools.partial(MIXING[name], **kwargs))
    else:
      raise ValueError(f"unknown augmentation {name!r}; {_known()}.")
  if len(mixings) > 1:
    raise ValueError(f"at most one of {sorted(MIXING)} can be applied to a batch, got {items}.")
  augmentation = compose(_to_float32(), *operations) if operations else None
  return augmentation, (mixings[0] if mixings else None)


def parse(spec: str | Sequence[str] | None) -> Augmentation | None:
  """One :class:`Augmentation` from a comma list of operation names, for per-image (per-episode) use.

  Each item is a name of :data:`OPERATIONS` or ``name(key=value, ...)`` with
  literal values, applied in the order given; a name alone uses the
  constructor's defaults (:data:`PARSE_DEFAULTS` for the arguments that have
  none: ``random_rotation`` 15 degrees, ``gaussian_noise`` std 0.05). The
  result first converts the image to float32 in ``[0, 1]`` (uint8 divided by
  255), so it applies to uint8 data as sampled and always returns float32.

  Apply it to every support and query image of training episodes with
  ``metalax.sample_episodes(key, images, num_tasks, num_ways, num_shots,
  num_queries, augment=parse(spec))`` (each image gets its own key; the
  labels are unchanged). Evaluation episodes are usually not augmented.

  Args:
    spec: e.g. ``"random_flip,random_rotation(max_degrees=10)"``, or a
      sequence of such items; ``None``, ``""`` give ``None``.

  Returns:
    An :class:`Augmentation` (``augment(key, image [H, W, C]) -> image``), or
    ``None`` for an empty spec.

  Raises:
    ValueError: for an unknown name (listing the known ones), ``mixup`` or
      ``cutmix`` (batch-level: see :func:`parse_with_mixing`), an item that
      does not parse, or arguments the constructor rejects.

  Example:
    >>> augmentation = parse("random_flip,random_resized_crop(scale=(0.5, 1.0))")
    >>> episodes = metalax.sample_episodes(key, images, 8, 5, 1, 15, augment=augmentation)
  """
  items = _split_top_level(spec) if isinstance(spec, str) else [str(s).strip() for s in (spec or ()) if str(s).strip()]
  for item in items:
    name, _ = _parse_item(item)
    if name in MIXING:
      raise ValueError(
          f"{name} mixes examples and their labels across a batch, so it cannot be applied per image or "
          "inside an episode (its labels are class indices of that episode); use it in batch training with "
          f"one-hot labels through parse_with_mixing (experiments.representation). Per-image operations: "
          f"{', '.join(sorted(OPERATIONS))}.")
  return parse_with_mixing(items)[0]
