"""tiered-ImageNet (Ren et al., 2018) read from the files of its authors' code.

608 ImageNet classes grouped into 34 categories; the split is by category: 20
categories (351 classes, 448,695 images) for meta-training, 6 (97 classes,
124,261 images) for validation, 8 (160 classes, 206,209 images) for test.
Images are 84x84 RGB; classes have 732 to 1,300 images. The split is the
files themselves (one set per split), so no class list ships with metalax.
There is no stable canonical URL, so nothing is downloaded: place one of these
in the ``tiered_imagenet`` data folder (see
:func:`metalax.data.resolve_data_dir`), ``<s>`` being ``train``, ``val`` or
``test``:

1. Ren et al.'s release (github.com/renmengye/few-shot-ssl-public):
   ``<s>_images_png.pkl`` (a list of PNG-encoded images, one 1-D uint8 array
   each) and ``<s>_labels.pkl`` (a dict with ``"label_specific"`` ``[N]``
   int, the class of each image, ``"label_specific_str"`` the class names, and
   the category labels ``"label_general"``/``"label_general_str"``).
2. The decompressed variant many libraries use: ``<s>_images.npz`` (key
   ``"images"``, uint8 ``[N, 84, 84, 3]``) with the same ``<s>_labels.pkl``, or
   one whose dict holds ``"labels"`` ``[N]`` instead (MetaOptNet's copy).
   Ren et al.'s ``decompress`` writes the npz with OpenCV, in BGR channel
   order; ``npz_bgr=True`` (default) turns it back into RGB.

PNGs are decoded once (it takes minutes for the training split) and cached as
an ``.npz`` in ``cache_dir`` (default
:func:`metalax.data.paths.default_cache_dir`; 9.5 GB for the training split).
"""

import os
import zipfile

import numpy as np

from metalax.data import _io
from metalax.data.images import RaggedClassImages
from metalax.data.paths import not_found_message
from metalax.data.paths import resolve_data_dir

FILE_SPLITS = {"train": "train", "validation": "val", "test": "test"}
"""Split name -> the name the published files use."""

_VERSION = 1  # Bump when the decoding changes.


def _labels(path: str) -> tuple[np.ndarray, tuple[str, ...] | None]:
  data = _io.str_keys(_io.load_pickle(path), path)
  key = "label_specific" if "label_specific" in data else "labels" if "labels" in data else None
  if key is None:
    raise ValueError(f"{path} must be a dict with 'label_specific' (Ren et al.) or 'labels', got "
                     f"keys {sorted(map(str, data))}.")
  labels = np.asarray(data[key])
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.size == 0:
    raise ValueError(f"{path}: {key} must be a non-empty [N] integer array, got {labels.dtype} "
                     f"{labels.shape}.")
  names = data.get("label_specific_str") if key == "label_specific" else None
  if names is not None:
    names = tuple(name.decode() if isinstance(name, bytes) else str(name) for name in names)
    if len(names) <= labels.max():
      raise ValueError(f"{path}: label_specific_str has {len(names)} names, but labels go up to "
                       f"{labels.max()}.")
  return labels.astype(np.int64), names


def _decode_pngs(path: str) -> dict[str, np.ndarray]:
  encoded = _io.load_pickle(path)
  if not isinstance(encoded, (list, tuple)) or not encoded:
    raise ValueError(f"{path} must hold a non-empty list of PNG-encoded images, got "
                     f"{type(encoded).__name__}.")
  first = _io.decode_image(np.asarray(encoded[0]).tobytes(), None, "RGB", f"{path}[0]")
  images = np.empty((len(encoded),) + first.shape, np.uint8)
  for index, item in enumerate(encoded):
    image = _io.decode_image(np.asarray(item).tobytes(), None, "RGB", f"{path}[{index}]")
    if image.shape != first.shape:
      raise ValueError(f"{path}: image {index} is {image.shape}, image 0 is {first.shape}.")
    images[index] = image
  return {"images": images}


def _read_npz(path: str, bgr: bool) -> np.ndarray:
  try:
    with np.load(path, allow_pickle=False) as data:
      if "images" not in data.files:
        raise ValueError(f"{path} must hold an 'images' array, got {data.files}.")
      images = data["images"]
  except (OSError, zipfile.BadZipFile, EOFError) as error:
    raise ValueError(f"{path} is not a readable .npz (truncated or corrupt?): {error}") from error
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"{path}: images must be uint8 [N, H, W, 3], got {images.dtype} "
                     f"{images.shape}.")
  return images[..., ::-1] if bgr else images


def load_tiered_imagenet(data_dir: str | os.PathLike | None = None, split: str = "train", *,
                         dtype=np.uint8, npz_bgr: bool = True,
                         cache_dir: str | os.PathLike | None = None,
                         use_cache: bool = True) -> RaggedClassImages:
  """Loads one split of tiered-ImageNet from Ren et al.'s files.

  Args:
    data_dir: folder holding ``<s>_images_png.pkl`` or ``<s>_images.npz``,
      and ``<s>_labels.pkl``; None for
      :func:`metalax.data.resolve_data_dir`'s choice
      (``.../tiered_imagenet``). The PNG pickle is read when both are there.
    split: ``"train"``, ``"validation"`` or ``"test"``.
    dtype: ``np.uint8`` (``[0, 255]``, default; the training split is 9.5 GB)
      or a float type (``[0, 1]``).
    npz_bgr: whether an ``.npz`` holds BGR images (as Ren et al.'s
      ``decompress`` writes them) to be turned into RGB.
    cache_dir: where decoded PNGs are cached; default
      :func:`metalax.data.paths.default_cache_dir`.
    use_cache: False to neither read nor write that cache.

  Returns:
    A :class:`~metalax.data.images.RaggedClassImages` ``[N, 84, 84, 3]``
    (RGB), one class per ``label_specific`` value in increasing order, named
    by ``label_specific_str`` when the labels file has it (else by the
    label), images in file order.

  Raises:
    FileNotFoundError: if the files are missing (the message says what to
      place where).
    ValueError: for a bad argument, or files that are corrupt, disagree on
      the number of images, or are not in either format.

  References:
    Ren, Triantafillou, Ravi, Snell, Swersky, Tenenbaum, Larochelle and Zemel,
    Meta-learning for semi-supervised few-shot classification, ICLR 2018.
  """
  split = _io.check_split(split)
  dtype = _io.check_dtype(dtype)
  folder = resolve_data_dir("tiered_imagenet", data_dir)
  name = FILE_SPLITS[split]
  png_path = os.path.join(folder, f"{name}_images_png.pkl")
  npz_path = os.path.join(folder, f"{name}_images.npz")
  labels_path = os.path.join(folder, f"{name}_labels.pkl")
  if not os.path.isfile(labels_path) or not (os.path.isfile(png_path)
                                             or os.path.isfile(npz_path)):
    raise FileNotFoundError(not_found_message(
        "tiered-ImageNet", "tiered_imagenet", data_dir,
        [f"{name}_labels.pkl", f"{name}_images_png.pkl (Ren et al.'s PNG pickle) or "
         f"{name}_images.npz (key 'images', uint8 [N, 84, 84, 3])"],
        "tiered-ImageNet has no stable public URL, so nothing is downloaded: obtain Ren et al.'s "
        "files (see docs/data.md) and place them there."))
  labels, names = _labels(labels_path)
  if os.path.isfile(png_path):
    key = {"pngs": _io.file_fingerprint(png_path), "version": _VERSION}
    images = _io.cached(f"tiered_imagenet_{name}", key, cache_dir, use_cache,
                        lambda: _decode_pngs(png_path))["images"]
    source = png_path
  else:
    images, source = _read_npz(npz_path, npz_bgr), npz_path
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f"{source} has {images.shape[0]} images but {labels_path} has "
                     f"{labels.shape[0]} labels.")
  if labels.min() < 0:
    raise ValueError(f"{labels_path}: labels must be non-negative, got {labels.min()}.")
  images, values, counts = _io.group_by_label(images, labels)
  class_names = tuple(names[value] for value in values) if names else tuple(map(str, values))
  offsets = (0,) + tuple(int(offset) for offset in np.cumsum(counts))
  return RaggedClassImages(images=_io.convert(np.ascontiguousarray(images), dtype),
                           class_offsets=offsets, class_names=class_names)
