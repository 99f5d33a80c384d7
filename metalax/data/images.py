"""Image datasets grouped by class, independent of where the images came from.

Two containers, both pytrees (``flax.struct.dataclass``) whose only array leaf
is ``images``; class names (and, for the ragged kind, the class boundaries) are
static metadata:

* :class:`ClassImages`: every class has the same number of images, stored as one
  array ``images [num_classes, num_per_class, H, W, C]``. This is what
  :func:`metalax.episodes.sample_episode` indexes.
* :class:`RaggedClassImages`: classes have different numbers of images (MNIST,
  most tensorflow-datasets datasets), stored flat as ``images [N, H, W, C]``
  sorted by class, with ``class_offsets``: class ``c`` is
  ``images[class_offsets[c]:class_offsets[c + 1]]``. The episode samplers accept
  it directly (no padding, no truncation). :func:`to_dense` turns it into a
  :class:`ClassImages` only when asked, and truncates only when told how far.

Pixel values are either ``float32`` in ``[0, 1]`` or ``uint8`` in ``[0, 255]``;
:func:`to_float32` converts the latter (``x / 255``). Loaders take a ``dtype``
argument: the small grayscale ones (Omniglot, MNIST) default to ``float32``,
the colour benchmarks and a user's own folders and ``.npz`` files to ``uint8``
(a quarter of the memory: mini-ImageNet's training split is 0.8 GB as uint8,
3.3 GB as float32). Arrays are NumPy arrays on the host; move them once with
``jax.device_put``.
"""

from typing import Sequence

import flax.struct
import jax
import numpy as np

Array = np.ndarray | jax.Array


@flax.struct.dataclass
class ClassImages:
  """Images grouped by class, the same number per class.

  Attributes:
    images: ``[num_classes, num_per_class, H, W, C]``, ``float32`` in ``[0, 1]``
      or ``uint8`` in ``[0, 255]``.
    class_names: ``num_classes`` strings, static (not a pytree leaf).
  """

  images: Array
  class_names: tuple[str, ...] = flax.struct.field(pytree_node=False)

  @property
  def num_classes(self) -> int:
    return self.images.shape[0]

  @property
  def num_per_class(self) -> int:
    return self.images.shape[1]

  @property
  def image_shape(self) -> tuple[int, ...]:
    """``(H, W, C)``."""
    return tuple(self.images.shape[2:])


@flax.struct.dataclass
class RaggedClassImages:
  """Images grouped by class, any number (at least one) per class.

  Attributes:
    images: ``[N, H, W, C]`` sorted by class, ``float32`` in ``[0, 1]`` or
      ``uint8`` in ``[0, 255]``.
    class_offsets: ``num_classes + 1`` increasing ints, static: class ``c`` is
      ``images[class_offsets[c]:class_offsets[c + 1]]``; the first is 0 and the
      last is ``N``.
    class_names: ``num_classes`` strings, static.
  """

  images: Array
  class_offsets: tuple[int, ...] = flax.struct.field(pytree_node=False)
  class_names: tuple[str, ...] = flax.struct.field(pytree_node=False)

  @property
  def num_classes(self) -> int:
    return len(self.class_offsets) - 1

  @property
  def counts(self) -> np.ndarray:
    """``[num_classes]`` int64: the number of images of each class."""
    return np.diff(np.asarray(self.class_offsets, dtype=np.int64))

  @property
  def image_shape(self) -> tuple[int, ...]:
    """``(H, W, C)``."""
    return tuple(self.images.shape[1:])

  def images_of_class(self, index: int) -> Array:
    """The images of class ``index``: ``[count, H, W, C]``."""
    return self.images[self.class_offsets[index]:self.class_offsets[index + 1]]


def _check_pixels(images: Array, name: str) -> None:
  dtype = np.dtype(images.dtype)
  if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
    raise ValueError(
        f"{name} must be uint8 in [0, 255] or floating point in [0, 1], got dtype {dtype}.")


def _names(class_names: Sequence[str] | None, num_classes: int, name: str) -> tuple[str, ...]:
  if class_names is None:
    return tuple(str(index) for index in range(num_classes))
  names = tuple(str(class_name) for class_name in class_names)
  if len(names) != num_classes:
    raise ValueError(f"{name} needs {num_classes} class names, got {len(names)}.")
  return names


def class_images(images: Array, class_names: Sequence[str] | None = None) -> ClassImages:
  """Wraps a ``[num_classes, num_per_class, H, W, C]`` array, checking it.

  Args:
    images: ``[num_classes, num_per_class, H, W, C]``, uint8 or float.
    class_names: ``num_classes`` names; default ``"0", "1", ...``.

  Returns:
    A :class:`ClassImages`.

  Raises:
    ValueError: if ``images`` is not 5-D with at least one class and one image
      per class, has another dtype, or the names do not match the classes.

  Example:
    >>> data = class_images(np.zeros((5, 20, 28, 28, 1), np.float32))
    >>> data.num_classes, data.num_per_class
    (5, 20)
  """
  check_class_images(ClassImages(images=images, class_names=()), check_names=False)
  return ClassImages(images=images, class_names=_names(class_names, images.shape[0], "images"))


def ragged_class_images(images: Array, counts: Sequence[int],
                        class_names: Sequence[str] | None = None) -> RaggedClassImages:
  """Wraps a flat ``[N, H, W, C]`` array sorted by class, given each class's count.

  Args:
    images: ``[N, H, W, C]``, the images of class 0 first, then class 1, ...
    counts: ``[num_classes]`` positive ints summing to ``N``.
    class_names: ``num_classes`` names; default ``"0", "1", ...``.

  Returns:
    A :class:`RaggedClassImages`.

  Raises:
    ValueError: if ``images`` is not 4-D, a count is not positive, or the
      counts do not sum to ``N``.
  """
  counts = np.asarray(counts)
  if counts.ndim != 1 or counts.size == 0 or not np.issubdtype(counts.dtype, np.integer):
    raise ValueError(f"counts must be a non-empty 1-D sequence of ints, got {counts!r}.")
  offsets = (0,) + tuple(int(offset) for offset in np.cumsum(counts))
  data = RaggedClassImages(images=images, class_offsets=offsets,
                           class_names=_names(class_names, counts.size, "counts"))
  check_class_images(data)
  return data


def check_class_images(data: ClassImages | RaggedClassImages, check_names: bool = True) -> None:
  """Checks the shapes, dtype, offsets and names of a container.

  Args:
    data: a :class:`ClassImages` or :class:`RaggedClassImages`.
    check_names: whether to check that there is one name per class.

  Raises:
    ValueError: naming what was expected and what came.
  """
  if isinstance(data, ClassImages):
    images = data.images
    if not hasattr(images, "shape") or images.ndim != 5:
      raise ValueError(
          "ClassImages.images must have shape [num_classes, num_per_class, H, W, C], got "
          f"{getattr(images, 'shape', type(images).__name__)}.")
    if images.shape[0] == 0 or images.shape[1] == 0:
      raise ValueError(
          f"ClassImages.images must have at least one class and one image per class, "
          f"got shape {tuple(images.shape)}.")
    _check_pixels(images, "ClassImages.images")
    num_classes = images.shape[0]
  elif isinstance(data, RaggedClassImages):
    images = data.images
    if not hasattr(images, "shape") or images.ndim != 4:
      raise ValueError(
          "RaggedClassImages.images must have shape [N, H, W, C], got "
          f"{getattr(images, 'shape', type(images).__name__)}.")
    _check_pixels(images, "RaggedClassImages.images")
    offsets = np.asarray(data.class_offsets)
    if (offsets.ndim != 1 or offsets.size < 2 or offsets[0] != 0
        or offsets[-1] != images.shape[0] or np.any(np.diff(offsets) <= 0)):
      raise ValueError(
          "RaggedClassImages.class_offsets must start at 0, increase strictly (every class "
          f"has at least one image) and end at N = {images.shape[0]}, got "
          f"{data.class_offsets[:8]}{'...' if len(data.class_offsets) > 8 else ''} "
          f"(length {len(data.class_offsets)}).")
    num_classes = offsets.size - 1
  else:
    raise ValueError(
        f"expected ClassImages or RaggedClassImages, got {type(data).__name__}.")
  if check_names and len(data.class_names) != num_classes:
    raise ValueError(
        f"expected {num_classes} class names (one per class), got {len(data.class_names)}.")


def to_float32(images: Array) -> Array:
  """Converts pixels to ``float32`` in ``[0, 1]``: uint8 is divided by 255.

  Works on NumPy and JAX arrays (also inside ``jit``); float input is only cast.

  Args:
    images: any shape, uint8 in ``[0, 255]`` or float in ``[0, 1]``.

  Returns:
    The same shape, ``float32``.
  """
  if np.dtype(images.dtype) == np.uint8:
    return images.astype(np.float32) / np.float32(255)
  _check_pixels(images, "images")
  return images.astype(np.float32)


def _convert(images: np.ndarray, dtype) -> np.ndarray:
  """uint8 or float pixels -> ``dtype`` (uint8 or float)."""
  dtype = np.dtype(dtype)
  if dtype == images.dtype:
    return images
  if dtype == np.uint8:
    return np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)
  if not np.issubdtype(dtype, np.floating):
    raise ValueError(f"dtype must be uint8 or a float type, got {dtype}.")
  return to_float32(images).astype(dtype)


def from_labelled(images: Array, labels: Array,
                  class_names: Sequence[str] | None = None) -> RaggedClassImages:
  """Groups any labelled image set by class.

  Classes are the distinct label values in increasing order; images of a class
  keep their original relative order (a stable sort). Use :func:`to_dense` to get
  a :class:`ClassImages` when the counts are equal (or to truncate explicitly).

  Args:
    images: ``[N, H, W, C]``, uint8 or float (add a channel axis to ``[N, H, W]``
      grayscale images with ``images[..., None]``).
    labels: ``[N]`` non-negative ints.
    class_names: optional names indexed by label value (``class_names[label]``,
      e.g. a tfds ``ClassLabel``'s ``names``); default ``str(label)``.

  Returns:
    A :class:`RaggedClassImages` with one class per distinct label.

  Raises:
    ValueError: if the shapes or dtypes are wrong, ``images`` and ``labels``
      disagree on ``N``, a label is negative, or a label has no name.

  Example:
    >>> data = from_labelled(np.zeros((6, 2, 2, 1), np.uint8), np.array([1, 0, 1, 1, 0, 2]))
    >>> data.class_offsets, data.class_names
    ((0, 2, 5, 6), ('0', '1', '2'))
  """
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.ndim != 4:
    raise ValueError(f"images must have shape [N, H, W, C], got {images.shape}.")
  if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
    raise ValueError(
        f"labels must have shape [N] = [{images.shape[0]}] to match images "
        f"{images.shape}, got {labels.shape}.")
  if images.shape[0] == 0:
    raise ValueError("images is empty: got N = 0.")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}.")
  if labels.min() < 0:
    raise ValueError(f"labels must be non-negative, got minimum {labels.min()}.")
  _check_pixels(images, "images")
  order = np.argsort(labels, kind="stable")
  values, counts = np.unique(labels, return_counts=True)
  if class_names is None:
    names = tuple(str(value) for value in values)
  else:
    if values[-1] >= len(class_names):
      raise ValueError(
          f"class_names has {len(class_names)} names, but labels go up to {values[-1]}.")
    names = tuple(str(class_names[value]) for value in values)
  offsets = (0,) + tuple(int(offset) for offset in np.cumsum(counts))
  return RaggedClassImages(images=images[order], class_offsets=offsets, class_names=names)


def to_ragged(data: ClassImages) -> RaggedClassImages:
  """Flattens a :class:`ClassImages` into a :class:`RaggedClassImages` (a reshape)."""
  check_class_images(data)
  num_classes, num_per_class = data.images.shape[:2]
  offsets = tuple(range(0, (num_classes + 1) * num_per_class, num_per_class))
  return RaggedClassImages(images=data.images.reshape((-1,) + data.images.shape[2:]),
                           class_offsets=offsets, class_names=data.class_names)


def to_dense(data: RaggedClassImages, num_per_class: int | None = None) -> ClassImages:
  """Stacks a :class:`RaggedClassImages` into a :class:`ClassImages`.

  Without ``num_per_class`` every class must have the same count and nothing is
  dropped. With it, each class keeps its *first* ``num_per_class`` images in
  stored order and the rest are dropped (never padded); every class must have
  at least that many. Sample with :func:`metalax.episodes.sample_episode` on
  the ragged data instead to use every image.

  Args:
    data: the ragged images.
    num_per_class: how many images to keep per class, or None to require equal
      counts.

  Returns:
    A :class:`ClassImages` ``[num_classes, num_per_class, H, W, C]``.

  Raises:
    ValueError: if the counts differ and ``num_per_class`` is None, or a class
      has fewer than ``num_per_class`` images (the message names it).
  """
  check_class_images(data)
  counts = data.counts
  if num_per_class is None:
    if np.any(counts != counts[0]):
      raise ValueError(
          f"classes have different numbers of images ({counts.min()} to {counts.max()}); "
          "pass num_per_class to keep the first num_per_class images of each class, "
          "or sample from the RaggedClassImages directly.")
    num_per_class = int(counts[0])
  if num_per_class <= 0:
    raise ValueError(f"num_per_class must be positive, got {num_per_class}.")
  short = np.flatnonzero(counts < num_per_class)
  if short.size:
    index = int(short[0])
    raise ValueError(
        f"num_per_class={num_per_class}, but {short.size} classes have fewer images, "
        f"e.g. class {index} ({data.class_names[index]!r}) has {counts[index]}.")
  starts = np.asarray(data.class_offsets[:-1])
  indices = starts[:, None] + np.arange(num_per_class)[None, :]
  return ClassImages(images=np.asarray(data.images)[indices], class_names=data.class_names)


def select_classes(data: ClassImages | RaggedClassImages,
                   indices: Sequence[int]) -> ClassImages | RaggedClassImages:
  """Keeps the classes at ``indices``, in that order.

  Args:
    data: a :class:`ClassImages` or :class:`RaggedClassImages`.
    indices: distinct class indices in ``[0, num_classes)``.

  Returns:
    The same kind of container with ``len(indices)`` classes.

  Raises:
    ValueError: if ``indices`` is empty, out of range, repeats a class or is
      not integer.
  """
  check_class_images(data)
  indices = np.asarray(indices)
  if indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer):
    raise ValueError(f"indices must be a non-empty 1-D sequence of ints, got {indices!r}.")
  if indices.min() < 0 or indices.max() >= data.num_classes:
    raise ValueError(
        f"indices must be in [0, {data.num_classes}), got values from {indices.min()} "
        f"to {indices.max()}.")
  if np.unique(indices).size != indices.size:
    raise ValueError("indices must not repeat a class.")
  names = tuple(data.class_names[index] for index in indices)
  if isinstance(data, ClassImages):
    return ClassImages(images=np.asarray(data.images)[indices], class_names=names)
  offsets = np.asarray(data.class_offsets)
  counts = offsets[indices + 1] - offsets[indices]
  rows = np.concatenate([np.arange(offsets[index], offsets[index + 1]) for index in indices])
  new_offsets = (0,) + tuple(int(offset) for offset in np.cumsum(counts))
  return RaggedClassImages(images=np.asarray(data.images)[rows], class_offsets=new_offsets,
                           class_names=names)


def split_classes(data: ClassImages | RaggedClassImages,
                  sizes: Sequence[int]) -> tuple[ClassImages | RaggedClassImages, ...]:
  """Splits the classes into consecutive groups of the given sizes.

  Args:
    data: a :class:`ClassImages` or :class:`RaggedClassImages`.
    sizes: positive ints summing to ``num_classes``.

  Returns:
    One container per size: classes ``[0, sizes[0])``, then the next
    ``sizes[1]``, ...

  Raises:
    ValueError: if a size is not positive or the sizes do not sum to
      ``num_classes``.

  Example:
    >>> train, test = split_classes(characters, [1200, 423])  # Vinyals et al. (2016)
  """
  sizes = [int(size) for size in sizes]
  if not sizes or min(sizes) <= 0 or sum(sizes) != data.num_classes:
    raise ValueError(
        f"sizes must be positive and sum to num_classes = {data.num_classes}, got {sizes}.")
  bounds = np.cumsum([0] + sizes)
  return tuple(select_classes(data, np.arange(start, stop))
               for start, stop in zip(bounds[:-1], bounds[1:]))


def concatenate(
    datasets: Sequence[ClassImages | RaggedClassImages]) -> ClassImages | RaggedClassImages:
  """Puts the classes of several containers after one another.

  All must be of one kind and share the image shape and dtype; dense ones must
  also share ``num_per_class`` (convert with :func:`to_ragged` otherwise).

  Args:
    datasets: a non-empty sequence of :class:`ClassImages`, or one of
      :class:`RaggedClassImages`.

  Returns:
    A container of the same kind with the classes of ``datasets[0]`` first.

  Raises:
    ValueError: if the kinds, image shapes, dtypes or (dense) counts differ.
  """
  datasets = list(datasets)
  if not datasets:
    raise ValueError("concatenate needs at least one dataset, got none.")
  kinds = {type(data) for data in datasets}
  if len(kinds) != 1:
    raise ValueError(
        "cannot concatenate ClassImages with RaggedClassImages; convert with to_ragged first.")
  for data in datasets:
    check_class_images(data)
  shapes = {(data.image_shape, np.dtype(data.images.dtype)) for data in datasets}
  if len(shapes) != 1:
    raise ValueError(f"datasets must share image shape and dtype, got {sorted(map(str, shapes))}.")
  names = sum((data.class_names for data in datasets), ())
  if isinstance(datasets[0], ClassImages):
    per_class = {data.num_per_class for data in datasets}
    if len(per_class) != 1:
      raise ValueError(
          f"dense datasets must share num_per_class, got {sorted(per_class)}; "
          "convert with to_ragged first.")
    return ClassImages(images=np.concatenate([np.asarray(data.images) for data in datasets]),
                       class_names=names)
  counts = np.concatenate([data.counts for data in datasets])
  offsets = (0,) + tuple(int(offset) for offset in np.cumsum(counts))
  return RaggedClassImages(images=np.concatenate([np.asarray(data.images) for data in datasets]),
                           class_offsets=offsets, class_names=names)


def rotate_classes(data: ClassImages | RaggedClassImages,
                   angles: Sequence[int] = (0, 90, 180, 270)) -> ClassImages | RaggedClassImages:
  """Makes each class into one new class per rotation angle.

  Class ``c`` becomes classes ``c * len(angles) + r`` for ``r`` in
  ``range(len(angles))``, holding every image of ``c`` rotated
  counter-clockwise by ``angles[r]`` degrees (``np.rot90`` on the ``H, W``
  axes, as ``PIL.Image.rotate``); the names get ``"/rot000"``, ``"/rot090"``,
  ... appended, as in the split files of Snell et al. (2017). This is the
  Omniglot class augmentation of Santoro et al. (2016) and Vinyals et al. (2016).

  Args:
    data: a :class:`ClassImages` or :class:`RaggedClassImages`.
    angles: distinct multiples of 90.

  Returns:
    The same kind of container with ``len(angles)`` times as many classes.

  Raises:
    ValueError: if an angle is not a multiple of 90, angles repeat, or the
      images are not square while an angle turns them by 90 or 270 degrees.

  References:
    Santoro et al., Meta-learning with memory-augmented neural networks, 2016.
  """
  check_class_images(data)
  angles = [int(angle) for angle in angles]
  distinct = len({angle % 360 for angle in angles}) == len(angles)
  if not angles or any(angle % 90 for angle in angles) or not distinct:
    raise ValueError(f"angles must be distinct multiples of 90, got {angles}.")
  height, width = data.image_shape[:2]
  if height != width and any(angle % 180 for angle in angles):
    raise ValueError(
        f"rotating by 90 or 270 degrees needs square images, got H, W = {height}, {width}.")
  names = tuple(f"{name}/rot{angle % 360:03d}" for name in data.class_names for angle in angles)
  images = np.asarray(data.images)
  axes = (images.ndim - 3, images.ndim - 2)
  rotated = np.stack([np.rot90(images, (angle // 90) % 4, axes=axes) for angle in angles],
                     axis=1)
  if isinstance(data, ClassImages):
    # [num_classes, num_rotations, num_per_class, H, W, C] -> classes in (class, angle) order.
    return ClassImages(images=rotated.reshape((-1,) + rotated.shape[2:]), class_names=names)
  counts = np.repeat(data.counts, len(angles))
  offsets = np.asarray(data.class_offsets)
  rows = [rotated[offsets[index]:offsets[index + 1], r]
          for index in range(data.num_classes) for r in range(len(angles))]
  new_offsets = (0,) + tuple(int(offset) for offset in np.cumsum(counts))
  return RaggedClassImages(images=np.concatenate(rows), class_offsets=new_offsets,
                           class_names=names)
