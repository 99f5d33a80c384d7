"""CIFAR-FS and FC100: few-shot splits of CIFAR-100 read from its python archive.

Both read ``cifar-100-python.tar.gz`` (Krizhevsky, 2009; the python version
from www.cs.toronto.edu/~kriz/cifar.html), or the folder
``cifar-100-python/`` it extracts to, in the ``cifar100`` data folder (see
:func:`metalax.data.resolve_data_dir`); a missing archive is downloaded and
checked against its SHA-256 unless ``download=False``. The archive holds three
pickles: ``train`` and ``test`` (``data`` uint8 ``[N, 3072]``, each row the
1024 red, then green, then blue values of a 32x32 image in row-major order;
``fine_labels``, ``coarse_labels``) and ``meta`` (``fine_label_names``,
``coarse_label_names``). Few-shot splits use all 600 images of a class: the
500 of ``train`` in archive order, then the 100 of ``test``.

The class splits ship with metalax (``metalax/data/splits/``):

* CIFAR-FS (Bertinetto et al., 2019): 64 / 16 / 20 classes, the lists of the
  R2D2 code (``splits/bertinetto/{train,val,test}.txt``).
* FC100 (Oreshkin et al., 2018): by superclass, 12 / 4 / 4 superclasses (60 /
  20 / 20 classes): coarse labels 1-6, 9, 10, 15, 17-19 / 8, 11, 13, 16 / 0, 7,
  12, 14.
"""

import os
import re

import numpy as np

from metalax.data import _io
from metalax.data.download import fetch
from metalax.data.images import ClassImages
from metalax.data.paths import resolve_data_dir

ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
_MEMBERS = ("train", "test", "meta")


def _read_members(data_dir: str | os.PathLike | None, download: bool) -> dict[str, object]:
  """``{"train", "test", "meta"}`` unpickled, from the extracted folder or the archive."""
  folder = resolve_data_dir("cifar100", data_dir)
  extracted = os.path.join(folder, FOLDER)
  if all(os.path.isfile(os.path.join(extracted, member)) for member in _MEMBERS):
    return {member: _io.load_pickle(os.path.join(extracted, member)) for member in _MEMBERS}
  folder = fetch("cifar100", data_dir, download=download, title="CIFAR-100 (python version)",
                 expected=[f"{ARCHIVE} (or the {FOLDER}/ folder it extracts to)"])
  path = os.path.join(folder, ARCHIVE)
  pattern = re.compile(rf"(?:\./)?{FOLDER}/(train|test|meta)")
  contents = {pattern.fullmatch(name).group(1): _io.load_pickle(f"{path}:{name}", data)
              for name, data in _io.tar_gz_members(path, pattern.fullmatch)}
  missing = [f"{FOLDER}/{member}" for member in _MEMBERS if member not in contents]
  if missing:
    raise ValueError(f"{path} is not the CIFAR-100 python archive: it has no {', '.join(missing)}.")
  return contents


def _read_cifar100(data_dir: str | os.PathLike | None, download: bool):
  """Returns ``(images [N, 32, 32, 3] uint8, fine [N], coarse [N], fine names, coarse names)``."""
  members = _read_members(data_dir, download)
  meta = _io.str_keys(members["meta"], "meta")
  images, fine, coarse = [], [], []
  for part in ("train", "test"):
    batch = _io.str_keys(members[part], part)
    try:
      data = np.asarray(batch["data"], dtype=np.uint8)
      fine.append(np.asarray(batch["fine_labels"], dtype=np.int64))
      coarse.append(np.asarray(batch["coarse_labels"], dtype=np.int64))
    except KeyError as error:
      raise ValueError(f"CIFAR-100 {part} pickle has no {error} entry; expected data, "
                       "fine_labels and coarse_labels.") from error
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != fine[-1].shape[0]:
      raise ValueError(f"CIFAR-100 {part} data must be [N, 3072] with N labels, got "
                       f"{data.shape} and {fine[-1].shape[0]} labels.")
    images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
  try:
    fine_names = tuple(str(name) for name in meta["fine_label_names"])
    coarse_names = tuple(str(name) for name in meta["coarse_label_names"])
  except KeyError as error:
    raise ValueError(f"CIFAR-100 meta pickle has no {error} entry.") from error
  fine, coarse = np.concatenate(fine), np.concatenate(coarse)
  if len(fine_names) != 100 or len(coarse_names) != 20 or fine.min() < 0 or fine.max() >= 100 \
      or coarse.min() < 0 or coarse.max() >= 20:
    raise ValueError(f"expected 100 fine and 20 coarse CIFAR-100 classes, got {len(fine_names)} "
                     f"and {len(coarse_names)} names, labels up to {fine.max()} and "
                     f"{coarse.max()}.")
  return np.concatenate(images), fine, coarse, fine_names, coarse_names


def _class_images(images: np.ndarray, fine: np.ndarray, classes: list[int],
                  names: list[str], dtype: np.dtype) -> ClassImages:
  rows = [np.flatnonzero(fine == label) for label in classes]
  counts = {row.size for row in rows}
  if len(counts) != 1 or 0 in counts:
    raise ValueError(f"every CIFAR-100 class must have the same number of images (600), got "
                     f"counts {sorted(counts)}.")
  return ClassImages(images=_io.convert(images[np.stack(rows)], dtype), class_names=tuple(names))


def load_cifar_fs(data_dir: str | os.PathLike | None = None, split: str = "train", *,
                  dtype=np.uint8, download: bool = True) -> ClassImages:
  """Loads one split of CIFAR-FS, Bertinetto et al.'s few-shot split of CIFAR-100.

  Args:
    data_dir: folder holding ``cifar-100-python.tar.gz`` (or its extracted
      ``cifar-100-python/``); None for
      :func:`metalax.data.resolve_data_dir`'s choice (``.../cifar100``).
    split: ``"train"`` (64 classes), ``"validation"`` (16) or ``"test"`` (20).
    dtype: ``np.uint8`` (``[0, 255]``, default) or a float type (``[0, 1]``).
    download: fetch a missing archive from www.cs.toronto.edu (SHA-256
      checked); False to only read.

  Returns:
    A :class:`~metalax.data.images.ClassImages` ``[num_classes, 600, 32, 32,
    3]`` (RGB), classes in the split file's (alphabetical) order, named by
    their CIFAR-100 fine label names.

  Raises:
    FileNotFoundError: if the archive is missing and ``download`` is False.
    metalax.data.download.DownloadError: if a download failed.
    ValueError: for an unknown split or dtype, or an archive that is corrupt
      or not CIFAR-100's python version.

  Example:
    >>> train = load_cifar_fs(split="train")
    >>> train.images.shape
    (64, 600, 32, 32, 3)

  References:
    Bertinetto, Henriques, Torr and Vedaldi, Meta-learning with differentiable
    closed-form solvers, ICLR 2019.
  """
  split = _io.check_split(split)
  dtype = _io.check_dtype(dtype)
  images, fine, _, fine_names, _ = _read_cifar100(data_dir, download)
  names = list(_io.read_split("cifar_fs", split))
  unknown = [name for name in names if name not in fine_names]
  if unknown:
    raise ValueError(f"the archive's fine classes lack CIFAR-FS classes {unknown}; is it CIFAR-100?")
  return _class_images(images, fine, [fine_names.index(name) for name in names], names, dtype)


def load_fc100(data_dir: str | os.PathLike | None = None, split: str = "train", *,
               dtype=np.uint8, download: bool = True) -> ClassImages:
  """Loads one split of FC100, Oreshkin et al.'s superclass split of CIFAR-100.

  Args:
    data_dir: folder holding ``cifar-100-python.tar.gz`` (or its extracted
      ``cifar-100-python/``); None for
      :func:`metalax.data.resolve_data_dir`'s choice (``.../cifar100``).
    split: ``"train"`` (12 superclasses, 60 classes), ``"validation"`` (4,
      20) or ``"test"`` (4, 20).
    dtype: ``np.uint8`` (``[0, 255]``, default) or a float type (``[0, 1]``).
    download: fetch a missing archive (SHA-256 checked); False to only read.

  Returns:
    A :class:`~metalax.data.images.ClassImages` ``[num_classes, 600, 32, 32,
    3]`` (RGB): the superclasses in the split file's order, each one's five
    classes by increasing fine label; named ``"<superclass>/<class>"``.

  Raises:
    FileNotFoundError, metalax.data.download.DownloadError, ValueError: as
    :func:`load_cifar_fs`.

  References:
    Oreshkin, Rodriguez and Lacoste, TADAM: Task dependent adaptive metric for
    improved few-shot learning, NeurIPS 2018.
  """
  split = _io.check_split(split)
  dtype = _io.check_dtype(dtype)
  images, fine, coarse, fine_names, coarse_names = _read_cifar100(data_dir, download)
  superclasses = _io.read_split("fc100", split)
  unknown = [name for name in superclasses if name not in coarse_names]
  if unknown:
    raise ValueError(f"the archive's superclasses lack FC100 superclasses {unknown}; is it "
                     "CIFAR-100?")
  classes, names = [], []
  for superclass in superclasses:
    index = coarse_names.index(superclass)
    members = sorted(set(fine[coarse == index].tolist()))
    classes += members
    names += [f"{superclass}/{fine_names[label]}" for label in members]
  return _class_images(images, fine, classes, names, dtype)
