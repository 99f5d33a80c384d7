"""Helpers shared by the image loaders: safe pickles, decoding, caches, split lists."""

import hashlib
import importlib.resources
import io
import json
import os
import pickle
import tarfile
import tempfile
import zipfile
import zlib
from typing import Any, Callable, Iterator

from absl import logging
import numpy as np
from PIL import Image

from metalax.data.paths import default_cache_dir

SPLITS = ("train", "validation", "test")
"""The split names every benchmark loader takes."""

_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    ("_codecs", "encode"), ("builtins", "bytearray"), ("__builtin__", "bytearray"),
}


class _Refused(pickle.UnpicklingError):
  pass


class _ArrayUnpickler(pickle.Unpickler):
  """Builds only containers, strings, numbers and NumPy arrays: no other code runs."""

  def find_class(self, module, name):
    if (module, name) in _PICKLE_GLOBALS:
      return super().find_class(module, name)
    raise _Refused(
        f"refusing to load {module}.{name}: a dataset pickle holds only lists, dicts, strings, "
        "numbers and NumPy arrays")


def load_pickle(path: str, data: bytes | None = None) -> Any:
  """Reads a dataset pickle (Python 2 or 3) allowing only plain data and NumPy arrays.

  Args:
    path: the file, or the name to report when ``data`` is given.
    data: the pickle's bytes, to read them instead of the file.

  Raises:
    ValueError: if the file is truncated, not a pickle, or asks for any other
      class (which would run code).
  """
  try:
    if data is not None:
      return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    with open(path, "rb") as file:
      return _ArrayUnpickler(file, encoding="latin1").load()
  except _Refused as error:
    raise ValueError(f"{path}: {error}.") from error
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
          IndexError, KeyError) as error:
    raise ValueError(f"{path} is not a readable dataset pickle (truncated or corrupt?): "
                     f"{error}") from error


def str_keys(mapping: Any, path: str) -> dict:
  """A dict with ``bytes`` keys decoded (Python 2 pickles), checked to be a dict."""
  if not isinstance(mapping, dict):
    raise ValueError(f"{path} must hold a dict, got {type(mapping).__name__}.")
  return {key.decode() if isinstance(key, bytes) else key: value for key, value in mapping.items()}


def tar_gz_members(path: str, wanted: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
  """Streams ``(name, bytes)`` of the regular files of a ``.tar.gz`` whose name is ``wanted``.

  The whole compressed stream is read to its end, so a truncated archive is an
  error rather than a silently shorter list of members.

  Raises:
    ValueError: if the archive is not a readable, complete ``.tar.gz``.
  """
  try:
    with tarfile.open(path, "r:gz") as archive:
      for info in archive:
        if info.isfile() and wanted(info.name):
          yield info.name, archive.extractfile(info).read()
      while archive.fileobj.read(1 << 20):
        pass
  except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
    raise ValueError(f"{path} is not a readable tar.gz archive (truncated or corrupt?): "
                     f"{error}") from error


def check_split(split: str) -> str:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
  return split


def check_dtype(dtype) -> np.dtype:
  dtype = np.dtype(dtype)
  if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
    raise ValueError(f"dtype must be uint8 or a float type, got {dtype}.")
  return dtype


def convert(images: np.ndarray, dtype: np.dtype) -> np.ndarray:
  """uint8 ``[0, 255]`` -> ``dtype`` (uint8 unchanged, floats in ``[0, 1]``)."""
  if dtype == np.uint8:
    return images
  return images.astype(dtype) / dtype.type(255)


def check_image_size(image_size: int | None) -> None:
  if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                 or image_size <= 0):
    raise ValueError(f"image_size must be a positive int or None, got {image_size!r}.")


def decode_image(source: bytes | str, image_size: int | None, mode: str, where: str) -> np.ndarray:
  """PNG/JPEG bytes or a path -> ``[H, W, C]`` uint8 in ``mode`` (``"RGB"`` or ``"L"``).

  With ``image_size`` the image is resized to ``image_size x image_size`` with
  ``PIL.Image.LANCZOS`` (aspect ratio not kept).

  Raises:
    ValueError: naming ``where`` if the bytes are not a readable image.
  """
  try:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
      image = image.convert(mode)
      if image_size is not None and image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
      array = np.asarray(image, dtype=np.uint8)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
    raise ValueError(f"cannot read image {where} (truncated or corrupt?): {error}") from error
  return array[..., None] if array.ndim == 2 else array


def resize_array(image: np.ndarray, image_size: int) -> np.ndarray:
  """``[H, W, C]`` uint8 -> ``[image_size, image_size, C]`` with ``PIL.Image.LANCZOS``."""
  resized = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).resize(
      (image_size, image_size), Image.Resampling.LANCZOS)
  array = np.asarray(resized, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def read_split(dataset: str, split: str) -> tuple[str, ...]:
  """The class names of a published split, from ``metalax/data/splits/<dataset>/<split>.txt``."""
  resource = importlib.resources.files("metalax.data") / "splits" / dataset / f"{split}.txt"
  try:
    text = resource.read_text()
  except FileNotFoundError as error:
    raise FileNotFoundError(
        f"the class list {resource} is missing from the installed metalax package; reinstall it "
        "(the package data metalax/data/splits/*/*.txt must be included).") from error
  return tuple(line.strip() for line in text.splitlines()
               if line.strip() and not line.startswith("#"))


def file_fingerprint(path: str) -> dict:
  """Name, size and modification time: enough to notice a replaced file without reading it."""
  status = os.stat(path)
  return {"file": os.path.abspath(path), "size": status.st_size, "mtime_ns": status.st_mtime_ns}


def cached(prefix: str, key: dict, cache_dir: str | os.PathLike | None, use_cache: bool,
           build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """``build()``'s arrays, cached as ``<cache_dir>/<prefix>_<digest>.npz`` under ``key``.

  A cache file whose stored key differs, or that cannot be read, is rebuilt;
  writing is atomic and a failure to write only logs.
  """
  if not use_cache:
    return build()
  text = json.dumps(key, sort_keys=True)
  digest = hashlib.sha256(text.encode()).hexdigest()[:16]
  directory = os.fspath(cache_dir or default_cache_dir())
  path = os.path.join(directory, f"{prefix}_{digest}.npz")
  if os.path.isfile(path):
    try:
      with np.load(path, allow_pickle=False) as stored:
        if str(stored["__key__"]) == text:
          return {name: stored[name] for name in stored.files if name != "__key__"}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
      logging.warning("Ignoring unreadable cache %s: %s", path, error)
  arrays = build()
  temporary = None
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp.npz", delete=False) as file:
      temporary = file.name
      np.savez(file, __key__=np.array(text), **arrays)
    os.replace(temporary, path)
  except OSError as error:
    logging.warning("Could not write the cache %s: %s", path, error)
    if temporary is not None and os.path.exists(temporary):
      os.remove(temporary)
  return arrays


def group_by_label(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                     np.ndarray]:
  """Sorts by label (stably, without a copy when already sorted).

  Returns:
    ``(images sorted by label, distinct labels, counts)``.
  """
  if labels.size > 1 and np.any(np.diff(labels) < 0):
    order = np.argsort(labels, kind="stable")
    images, labels = images[order], labels[order]
  values, counts = np.unique(labels, return_counts=True)
  return images, values, counts
