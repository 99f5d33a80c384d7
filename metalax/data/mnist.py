"""MNIST (LeCun et al., 1998) read from the original IDX files.

The four files ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` (gzip, as once
distributed at yann.lecun.com/exdb/mnist; the uncompressed files without
``.gz`` are read too). IDX format: a big-endian header ``0, 0, type, ndim``
(images: magic 2051 = uint8 with 3 dimensions; labels: 2049 = uint8 with 1),
``ndim`` big-endian uint32 sizes, then the data in C order.

The folder follows :func:`metalax.data.resolve_data_dir` (``data_dir``, else
``$METALAX_DATA_DIR/mnist``, else ``~/metalax_data/mnist``); missing files are
downloaded (:data:`metalax.data.download.RESOURCES`, checked against their
SHA-256) unless ``download=False``.
"""

import gzip
import os
import zlib

import numpy as np

from metalax.data.download import fetch
from metalax.data.images import RaggedClassImages
from metalax.data.images import from_labelled
from metalax.data.paths import resolve_data_dir

SPLITS = {"train": "train", "test": "t10k"}
"""Split name -> file prefix."""

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_bytes(path: str) -> bytes:
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as file:
        return file.read()
    with open(path, "rb") as file:
      return file.read()
  except (EOFError, gzip.BadGzipFile, zlib.error) as error:
    raise ValueError(
        f"{path} is not a complete gzip file (truncated or corrupt?): {error}") from error


def _read_idx(path: str) -> tuple[int, np.ndarray]:
  """Returns ``(magic, array)``; see :func:`read_idx`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"IDX file not found: {path}.")
  data = _read_bytes(path)
  if len(data) < 4:
    raise ValueError(f"{path} is truncated: {len(data)} bytes, fewer than the 4-byte IDX magic.")
  magic = int.from_bytes(data[:4], "big")
  zero, type_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
  if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
    raise ValueError(
        f"{path} is not an IDX file: magic number {magic} (bytes {data[:4].hex()}); expected "
        f"0x0000 then a type code in {sorted(hex(code) for code in _IDX_DTYPES)} and a rank "
        "> 0, e.g. 2051 for MNIST images and 2049 for labels.")
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f"{path} is truncated: {len(data)} bytes, the header needs {header}.")
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  dtype = _IDX_DTYPES[type_code]
  expected = header + int(np.prod(shape)) * dtype.itemsize
  if len(data) != expected:
    raise ValueError(
        f"{path} is {'truncated' if len(data) < expected else 'too long'}: the header "
        f"announces shape {shape} ({expected} bytes with the header), the file has "
        f"{len(data)} bytes.")
  array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
  return magic, array.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads one IDX file (gzip-compressed when the name ends in ``.gz``).

  Args:
    path: the file.

  Returns:
    The array, shaped as the header says, in native byte order.

  Raises:
    FileNotFoundError: if the file does not exist.
    ValueError: if the gzip stream is truncated or corrupt, the magic number is
      not an IDX one, or the data are shorter or longer than the header says.

  Example:
    >>> read_idx("t10k-labels-idx1-ubyte.gz").shape
    (10000,)
  """
  return _read_idx(os.fspath(path))[1]


def _find(data_dir: str, name: str) -> str:
  candidates = [os.path.join(data_dir, name + ".gz"), os.path.join(data_dir, name)]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate
  raise FileNotFoundError(
      f"MNIST file not found: {candidates[0]} (or uncompressed {candidates[1]}). Expected the "
      "original IDX files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
      f"t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in {data_dir}.")


def _ensure_files(data_dir: str | os.PathLike | None, prefix: str, download: bool) -> str:
  """The MNIST folder, after downloading the split's missing files (gzip or not counts)."""
  folder = resolve_data_dir("mnist", data_dir)
  missing = [f"{prefix}-{kind}-idx{rank}-ubyte.gz" for kind, rank in (("images", 3), ("labels", 1))
             if not any(os.path.isfile(os.path.join(folder, f"{prefix}-{kind}-idx{rank}-ubyte"
                                                    + suffix)) for suffix in (".gz", ""))]
  if missing:
    fetch("mnist", data_dir, filenames=missing, download=download, title="MNIST")
  return folder


def load_mnist(data_dir: str | os.PathLike | None = None, split: str = "train", *,
               download: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Loads one MNIST split as arrays.

  Args:
    data_dir: folder holding the IDX files; None for
      :func:`metalax.data.resolve_data_dir`'s choice.
    split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
    download: fetch the split's missing files (ossci-datasets S3 mirror, then
      Google's cvdf mirror; SHA-256 checked); False to only read.

  Returns:
    ``(images, labels)``: ``images [N, 28, 28, 1]`` uint8 in ``[0, 255]``
    (white digit on black, as stored), ``labels [N]`` int32 in ``[0, 10)``.

  Raises:
    FileNotFoundError: if a file is missing and ``download`` is False (the
      message names the files, the folder and the download it would make).
    metalax.data.download.DownloadError: if a download failed.
    ValueError: if a file is truncated or corrupt, has the wrong magic number,
      images are not 28x28, the counts of images and labels differ, or a label
      is outside ``[0, 10)``; or for an unknown split.

  Example:
    >>> images, labels = load_mnist("/data/mnist", "test")
    >>> images.shape, labels.shape
    ((10000, 28, 28, 1), (10000,))
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}.")
  prefix = SPLITS[split]
  data_dir = _ensure_files(data_dir, prefix, download)
  arrays = {}
  for kind, magic, rank in (("images", IMAGES_MAGIC, 3), ("labels", LABELS_MAGIC, 1)):
    path = _find(data_dir, f"{prefix}-{kind}-idx{rank}-ubyte")
    found, arrays[kind] = _read_idx(path)
    if found != magic:
      raise ValueError(
          f"{path} has magic number {found}, expected {magic} (MNIST {kind}: uint8, "
          f"{rank} dimension{'s' if rank > 1 else ''}).")
  images, labels = arrays["images"], arrays["labels"]
  if images.shape[1:] != (28, 28):
    raise ValueError(f"MNIST images must be 28x28, got shape {images.shape}.")
  if images.shape[0] != labels.shape[0]:
    raise ValueError(
        f"MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels.")
  if labels.size and labels.max() > 9:
    raise ValueError(f"MNIST labels must be in [0, 10), got maximum {labels.max()}.")
  return images[..., None], labels.astype(np.int32)


def mnist_class_images(data_dir: str | os.PathLike | None = None, split: str = "train",
                       dtype=np.float32, *, download: bool = True) -> RaggedClassImages:
  """Loads one MNIST split grouped by digit.

  The ten classes have different counts (train: 5421 to 6742 images), so the
  result is ragged; the episode samplers use it as is, and
  :func:`~metalax.data.images.to_dense` with ``num_per_class`` truncates
  explicitly.

  Args:
    data_dir: folder holding the IDX files; None for
      :func:`metalax.data.resolve_data_dir`'s choice.
    split: ``"train"`` or ``"test"``.
    dtype: ``np.float32`` (``[0, 1]``) or ``np.uint8`` (``[0, 255]``).
    download: fetch missing files, as :func:`load_mnist`.

  Returns:
    A :class:`~metalax.data.images.RaggedClassImages` with classes ``"0"`` to
    ``"9"``, images ``[N, 28, 28, 1]``, each class in file order.

  Raises:
    FileNotFoundError, ValueError: as :func:`load_mnist`, or for a bad dtype.
  """
  dtype = np.dtype(dtype)
  if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
    raise ValueError(f"dtype must be uint8 or a float type, got {dtype}.")
  images, labels = load_mnist(data_dir, split, download=download)
  data = from_labelled(images, labels)
  if dtype != np.uint8:
    data = data.replace(images=data.images.astype(dtype) / dtype.type(255))
  return data
