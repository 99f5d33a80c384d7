"""mini-ImageNet (Vinyals et al., 2016) with the split of Ravi & Larochelle (2017).

100 ImageNet classes of 600 images each, 84x84 RGB: 64 classes for
meta-training, 16 for validation, 20 for test (class lists in
``metalax/data/splits/mini_imagenet/``). There is no stable canonical URL for
the images, so nothing is downloaded: place one of these two layouts in the
``mini_imagenet`` data folder (see :func:`metalax.data.resolve_data_dir`):

1. The pickle cache used by many libraries (learn2learn, Ren et al.'s
   few-shot-ssl code): ``mini-imagenet-cache-train.pkl``,
   ``mini-imagenet-cache-val.pkl``, ``mini-imagenet-cache-test.pkl``, each a
   dict with ``"image_data"`` (uint8 ``[N, 84, 84, 3]``) and ``"class_dict"``
   (WordNet id -> the indices of its images).
2. Ravi & Larochelle's layout: ``train.csv``, ``val.csv``, ``test.csv``
   (header ``filename,label``, then one ``<file>,<wnid>`` row per image) and an
   ``images/`` folder holding the files they name.

The pickles are checked to hold exactly the split's classes; the pickles are
read with an unpickler that builds only plain data and NumPy arrays (no code
runs). Images decoded from ``images/`` are cached as an ``.npz`` in
``cache_dir`` (default :func:`metalax.data.paths.default_cache_dir`).
"""

import csv
import os

import numpy as np

from metalax.data import _io
from metalax.data.images import ClassImages
from metalax.data.images import RaggedClassImages
from metalax.data.paths import not_found_message
from metalax.data.paths import resolve_data_dir

FILE_SPLITS = {"train": "train", "validation": "val", "test": "test"}
"""Split name -> the name the published files use."""

_VERSION = 1  # Bump when the decoding changes.


def _missing_error(data_dir, split: str) -> FileNotFoundError:
  name = FILE_SPLITS[split]
  return FileNotFoundError(not_found_message(
      "mini-ImageNet", "mini_imagenet", data_dir,
      [f"mini-imagenet-cache-{name}.pkl (a dict with 'image_data' uint8 [N, 84, 84, 3] and "
       "'class_dict' {wnid: [indices]})",
       f"or {name}.csv (rows 'filename,label') with the images it names in images/"],
      "mini-ImageNet has no stable public URL, so nothing is downloaded: obtain the pickles or "
      "Ravi & Larochelle's images and CSV files (see docs/data.md) and place them there."))


def _check_classes(found, split: str, where: str) -> None:
  expected = set(_io.read_split("mini_imagenet", split))
  found = set(found)
  if found != expected:
    raise ValueError(
        f"{where} does not hold Ravi & Larochelle's {len(expected)} {split} classes: missing "
        f"{sorted(expected - found)[:5]}{'...' if len(expected - found) > 5 else ''}, extra "
        f"{sorted(found - expected)[:5]}{'...' if len(found - expected) > 5 else ''}.")


def _group(images: np.ndarray, indices: list[np.ndarray], names: list[str],
           dtype: np.dtype) -> ClassImages | RaggedClassImages:
  counts = [index.size for index in indices]
  if len(set(counts)) == 1:
    return ClassImages(images=_io.convert(images[np.stack(indices)], dtype),
                       class_names=tuple(names))
  rows = np.concatenate(indices)
  offsets = (0,) + tuple(int(offset) for offset in np.cumsum(counts))
  return RaggedClassImages(images=_io.convert(images[rows], dtype), class_offsets=offsets,
                           class_names=tuple(names))


def _resize_all(images: np.ndarray, image_size: int | None) -> np.ndarray:
  if image_size is None or images.shape[1:3] == (image_size, image_size):
    return images
  return np.stack([_io.resize_array(image, image_size) for image in images])


def _from_pickle(path: str, split: str, image_size: int | None, dtype: np.dtype):
  data = _io.str_keys(_io.load_pickle(path), path)
  if "image_data" not in data or "class_dict" not in data:
    raise ValueError(f"{path} must be a dict with 'image_data' and 'class_dict', got keys "
                     f"{sorted(map(str, data))}.")
  images = np.asarray(data["image_data"])
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"{path}: image_data must be uint8 [N, H, W, 3], got {images.dtype} "
                     f"{images.shape}.")
  class_dict = _io.str_keys(data["class_dict"], f"{path} class_dict")
  _check_classes(class_dict, split, path)
  names = sorted(class_dict)
  indices = [np.asarray(class_dict[name], dtype=np.int64).reshape(-1) for name in names]
  for name, index in zip(names, indices):
    if index.size == 0 or index.min() < 0 or index.max() >= images.shape[0]:
      raise ValueError(f"{path}: class {name} has image indices outside [0, {images.shape[0]}).")
  images = _resize_all(images, image_size)
  return _group(images, indices, names, dtype)


def _from_csv(folder: str, csv_path: str, split: str, image_size: int | None, dtype: np.dtype,
              cache_dir, use_cache: bool):
  with open(csv_path, newline="") as file:
    rows = [row for row in csv.reader(file) if row]
  if rows and [cell.strip() for cell in rows[0]] == ["filename", "label"]:
    rows = rows[1:]
  if not rows or any(len(row) != 2 for row in rows):
    raise ValueError(f"{csv_path} must hold a 'filename,label' header and one 'file,wnid' row per "
                     "image.")
  by_class: dict[str, list[str]] = {}
  for file_name, label in rows:
    by_class.setdefault(label.strip(), []).append(file_name.strip())
  _check_classes(by_class, split, csv_path)
  names = sorted(by_class)
  images_dir = os.path.join(folder, "images")
  paths = [os.path.join(images_dir, file_name) for name in names for file_name in by_class[name]]
  absent = [path for path in paths if not os.path.isfile(path)]
  if absent:
    raise FileNotFoundError(f"{len(absent)} images named in {csv_path} are missing from "
                            f"{images_dir}, e.g. {absent[0]}.")

  def decode():
    return {"images": np.stack([_io.decode_image(path, image_size, "RGB", path)
                                for path in paths])}

  key = {"csv": _io.file_fingerprint(csv_path), "images": _io.file_fingerprint(images_dir),
         "image_size": image_size, "version": _VERSION}
  images = _io.cached(f"mini_imagenet_{FILE_SPLITS[split]}", key, cache_dir, use_cache,
                      decode)["images"]
  counts = np.cumsum([0] + [len(by_class[name]) for name in names])
  indices = [np.arange(start, stop) for start, stop in zip(counts[:-1], counts[1:])]
  return _group(images, indices, names, dtype)


def load_mini_imagenet(data_dir: str | os.PathLike | None = None, split: str = "train", *,
                       image_size: int | None = 84, dtype=np.uint8,
                       cache_dir: str | os.PathLike | None = None,
                       use_cache: bool = True) -> ClassImages | RaggedClassImages:
  """Loads one split of mini-ImageNet (Ravi & Larochelle's classes).

  Args:
    data_dir: folder holding ``mini-imagenet-cache-{train,val,test}.pkl`` or
      ``{train,val,test}.csv`` with ``images/``; None for
      :func:`metalax.data.resolve_data_dir`'s choice (``.../mini_imagenet``).
      The pickle is read when both are there.
    split: ``"train"`` (64 classes), ``"validation"`` (16) or ``"test"`` (20).
    image_size: side of the square output images (resized with
      ``PIL.Image.LANCZOS`` when they differ), or None to keep them as stored.
    dtype: ``np.uint8`` (``[0, 255]``, default; the training split is 0.8 GB,
      3.3 GB as float32) or a float type (``[0, 1]``).
    cache_dir: where images decoded from ``images/`` are cached; default
      :func:`metalax.data.paths.default_cache_dir`.
    use_cache: False to neither read nor write that cache.

  Returns:
    A :class:`~metalax.data.images.ClassImages` ``[num_classes, 600,
    image_size, image_size, 3]`` (RGB), classes sorted by WordNet id and named
    by it, images in file order (a variant whose classes differ in count gives
    a :class:`~metalax.data.images.RaggedClassImages`).

  Raises:
    FileNotFoundError: if neither layout is there (the message says what to
      place where), or an image named in a CSV file is missing.
    ValueError: for a bad argument, a corrupt file, or files whose classes are
      not the split's.

  Example:
    >>> train = load_mini_imagenet("/data/mini_imagenet", "train")
    >>> train.images.shape
    (64, 600, 84, 84, 3)

  References:
    Vinyals et al., Matching networks for one shot learning, 2016. Ravi and
    Larochelle, Optimization as a model for few-shot learning, ICLR 2017.
  """
  split = _io.check_split(split)
  dtype = _io.check_dtype(dtype)
  _io.check_image_size(image_size)
  folder = resolve_data_dir("mini_imagenet", data_dir)
  pickle_path = os.path.join(folder, f"mini-imagenet-cache-{FILE_SPLITS[split]}.pkl")
  csv_path = os.path.join(folder, f"{FILE_SPLITS[split]}.csv")
  if os.path.isfile(pickle_path):
    return _from_pickle(pickle_path, split, image_size, dtype)
  if os.path.isfile(csv_path):
    return _from_csv(folder, csv_path, split, image_size, dtype, cache_dir, use_cache)
  raise _missing_error(data_dir, split)
