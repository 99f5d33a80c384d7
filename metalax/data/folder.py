"""A user's own images: a folder with one subfolder per class, or an ``.npz`` file."""

import os
import zipfile

import numpy as np
from PIL import Image

from metalax.data import _io
from metalax.data.images import ClassImages
from metalax.data.images import RaggedClassImages
from metalax.data.images import _convert
from metalax.data.images import class_images
from metalax.data.images import from_labelled

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp")
"""File name endings read as images (case-insensitive); other files are skipped."""


def _is_image(name: str) -> bool:
  return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def load_image_folder(path: str | os.PathLike, image_size: int | None = None, *,
                      dtype=np.uint8) -> RaggedClassImages:
  """Loads a folder with one subfolder of images per class.

  Classes are the subfolders sorted by name (hidden ones skipped); a class's
  images are its files with an image ending (:data:`IMAGE_EXTENSIONS`) sorted
  by name. Images become grayscale (1 channel) when every image is grayscale
  (PIL modes ``"1"``, ``"L"``, ``"I"``, ``"F"``), else RGB (alpha dropped).

  Args:
    path: the folder.
    image_size: resize every image to ``image_size x image_size`` with
      ``PIL.Image.LANCZOS``; None to keep the sizes, which must then agree.
    dtype: ``np.uint8`` (``[0, 255]``, default) or a float type (``[0, 1]``).

  Returns:
    A :class:`~metalax.data.images.RaggedClassImages` ``[N, H, W, C]`` with
    one class per non-empty subfolder, named by it.

  Raises:
    FileNotFoundError: if ``path`` is not a folder.
    ValueError: if it has no subfolder with images, an image cannot be read,
      or sizes differ and ``image_size`` is None.

  Example:
    >>> data = load_image_folder("/data/flowers", image_size=84)
    >>> data.class_names[:2]
    ('daisy', 'rose')
  """
  path = os.fspath(path)
  dtype = _io.check_dtype(dtype)
  _io.check_image_size(image_size)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"image folder not found: {path}. Expected a folder with one "
                            "subfolder of images per class (e.g. path/cat/001.jpg).")
  files = {}
  for name in sorted(os.listdir(path)):
    class_dir = os.path.join(path, name)
    if name.startswith(".") or not os.path.isdir(class_dir):
      continue
    images = sorted(file for file in os.listdir(class_dir)
                    if _is_image(file) and os.path.isfile(os.path.join(class_dir, file)))
    if images:
      files[name] = [os.path.join(class_dir, file) for file in images]
  if not files:
    raise ValueError(f"{path} has no subfolder holding images ({', '.join(IMAGE_EXTENSIONS)}); "
                     "expected one subfolder of images per class.")
  paths = [file for class_files in files.values() for file in class_files]
  grayscale = True
  for file in paths:
    try:
      with Image.open(file) as image:
        grayscale = image.mode in ("1", "L", "I", "I;16", "F")
    except (OSError, ValueError, SyntaxError) as error:
      raise ValueError(f"cannot read image {file}: {error}") from error
    if not grayscale:
      break
  mode = "L" if grayscale else "RGB"
  images = [_io.decode_image(file, image_size, mode, file) for file in paths]
  shapes = sorted({image.shape for image in images})
  if len(shapes) != 1:
    raise ValueError(f"images in {path} differ in size ({shapes[:4]}); pass image_size to resize "
                     "them to one size.")
  counts = [len(class_files) for class_files in files.values()]
  offsets = (0,) + tuple(int(offset) for offset in np.cumsum(counts))
  return RaggedClassImages(images=_io.convert(np.stack(images), dtype), class_offsets=offsets,
                           class_names=tuple(files))


def load_npz(path: str | os.PathLike, *, dtype=np.uint8) -> ClassImages | RaggedClassImages:
  """Loads images grouped by class from an ``.npz`` file (``numpy.savez``).

  Two layouts (the keys are case-sensitive):

  * ``images`` ``[num_classes, num_per_class, H, W, C]`` (or ``[..., H, W]``
    for grayscale): already grouped; gives a
    :class:`~metalax.data.images.ClassImages`.
  * ``images`` ``[N, H, W, C]`` (or ``[N, H, W]``) and ``labels`` ``[N]``
    non-negative ints: grouped by label in increasing order, keeping file
    order within a class; gives a
    :class:`~metalax.data.images.RaggedClassImages`.

  Optional ``class_names``: strings, one per class (5-D layout) or indexed by
  label value (labelled layout). Pixels are uint8 in ``[0, 255]`` or floats in
  ``[0, 1]``. The file is read with ``allow_pickle=False``.

  Args:
    path: the ``.npz`` file.
    dtype: ``np.uint8`` (default) or a float type; float pixels are rounded to
      uint8 when asked.

  Returns:
    A :class:`~metalax.data.images.ClassImages` or
    :class:`~metalax.data.images.RaggedClassImages`, as above.

  Raises:
    FileNotFoundError: if the file does not exist.
    ValueError: if it is not a readable ``.npz``, lacks ``images``, or the
      shapes, labels or names do not fit a layout.

  Example:
    >>> np.savez("digits.npz", images=images, labels=labels)  # [N, 28, 28, 1], [N]
    >>> load_npz("digits.npz").num_classes
    10
  """
  path = os.fspath(path)
  dtype = _io.check_dtype(dtype)
  if not os.path.isfile(path):
    raise FileNotFoundError(f".npz file not found: {path}. Expected 'images' [num_classes, "
                            "num_per_class, H, W, C], or 'images' [N, H, W, C] with 'labels' [N].")
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {key: data[key] for key in data.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
    raise ValueError(f"{path} is not a readable .npz file (numpy.savez, no pickled objects): "
                     f"{error}") from error
  if "images" not in arrays:
    raise ValueError(f"{path} has no 'images' array; it has {sorted(arrays)}. Expected 'images' "
                     "[num_classes, num_per_class, H, W, C], or 'images' [N, H, W, C] with "
                     "'labels' [N].")
  images = arrays["images"]
  names = arrays.get("class_names")
  names = None if names is None else [str(name) for name in np.asarray(names).reshape(-1)]
  labelled = "labels" in arrays
  rank = 3 if labelled else 4
  if images.ndim == rank:
    images = images[..., None]
  if images.ndim != rank + 1:
    layout = "[N, H, W, C] (with 'labels')" if labelled else "[num_classes, num_per_class, H, W, C]"
    raise ValueError(f"{path}: images must be {layout}, got shape {images.shape}.")
  if labelled:
    data = from_labelled(images, arrays["labels"], names)
  else:
    data = class_images(images, names)
  if np.dtype(data.images.dtype) != dtype:
    data = data.replace(images=_convert(np.asarray(data.images), dtype))
  return data
