"""CUB-200-2011 (Wah et al., 2011) with the few-shot split of Chen et al. (2019).

Reads ``CUB_200_2011.tgz`` (data.caltech.edu) or the folder ``CUB_200_2011/``
it extracts to, in the ``cub`` data folder (see
:func:`metalax.data.resolve_data_dir`); a missing archive (1.1 GB) is
downloaded and checked against its SHA-256 unless ``download=False``. Images
are ``CUB_200_2011/images/<NNN.Class_name>/<file>.jpg`` (11,788 JPEGs of 200
bird species, 41 to 60 per class, various sizes, a few grayscale). Members are
read straight from the archive, never extracted.

The split is the rule of Chen et al.'s ``write_CUB_filelist.py`` ("A Closer
Look at Few-shot Classification"): with the class folders sorted by name and
numbered from 0, class ``i`` is meta-training when ``i % 2 == 0`` (100
classes), validation when ``i % 4 == 1`` (50) and test when ``i % 4 == 3``
(50). Each image is converted to RGB and resized to ``image_size x
image_size`` with ``PIL.Image.LANCZOS`` (the aspect ratio is not kept; Chen et
al. resize to 1.15 times the size, then centre-crop, at test time).

Decoding takes a while, so all 200 classes are decoded once and cached as an
``.npz`` (about 250 MB at 84x84) in ``cache_dir`` (default
:func:`metalax.data.paths.default_cache_dir`), keyed by the source's size and
modification time and the image size.
"""

import os
import re

import numpy as np

from metalax.data import _io
from metalax.data.download import fetch
from metalax.data.images import RaggedClassImages
from metalax.data.paths import resolve_data_dir

ARCHIVE = "CUB_200_2011.tgz"
FOLDER = "CUB_200_2011"
_IMAGE = re.compile(rf"^(?:\./)?{FOLDER}/images/([^/]+)/([^/]+)$")
_VERSION = 1  # Bump when the decoding changes.


def chen_split(num_classes: int, split: str) -> list[int]:
  """Chen et al.'s rule: the indices (into the sorted class folders) of a split.

  Args:
    num_classes: how many class folders there are (200 for CUB).
    split: ``"train"``, ``"validation"`` or ``"test"``.

  Returns:
    ``i % 2 == 0`` for train, ``i % 4 == 1`` for validation, ``i % 4 == 3``
    for test, increasing.
  """
  _io.check_split(split)
  keep = {"train": lambda i: i % 2 == 0, "validation": lambda i: i % 4 == 1,
          "test": lambda i: i % 4 == 3}[split]
  return [i for i in range(num_classes) if keep(i)]


def _visible(name: str) -> bool:
  return not name.startswith(".")


def _decode_all(source: str, image_size: int) -> dict[str, np.ndarray]:
  """Every image of every class, classes and files sorted by name."""
  decoded: dict[str, dict[str, np.ndarray]] = {}

  def add(class_name: str, file_name: str, data: bytes | str) -> None:
    decoded.setdefault(class_name, {})[file_name] = _io.decode_image(
        data, image_size, "RGB", f"{source}: {class_name}/{file_name}")

  if os.path.isdir(source):
    root = os.path.join(source, "images")
    for class_name in filter(_visible, os.listdir(root)):
      class_dir = os.path.join(root, class_name)
      if os.path.isdir(class_dir):
        for file_name in filter(_visible, os.listdir(class_dir)):
          if os.path.isfile(os.path.join(class_dir, file_name)):
            add(class_name, file_name, os.path.join(class_dir, file_name))
  else:
    for member, data in _io.tar_gz_members(source, _IMAGE.match):
      match = _IMAGE.match(member)
      if _visible(match.group(2)):
        add(match.group(1), match.group(2), data)
  if not decoded:
    raise ValueError(f"{source} holds no images like {FOLDER}/images/<class>/<file>.jpg; is it "
                     "CUB-200-2011?")
  names = sorted(decoded)
  images = [decoded[name][file] for name in names for file in sorted(decoded[name])]
  return {"images": np.stack(images), "counts": np.array([len(decoded[name]) for name in names]),
          "class_names": np.array(names)}


def load_cub(data_dir: str | os.PathLike | None = None, split: str = "train", *,
             image_size: int = 84, dtype=np.uint8, download: bool = True,
             cache_dir: str | os.PathLike | None = None,
             use_cache: bool = True) -> RaggedClassImages:
  """Loads one split of CUB-200-2011 with Chen et al.'s class split.

  Args:
    data_dir: folder holding ``CUB_200_2011.tgz`` or the extracted
      ``CUB_200_2011/``; None for :func:`metalax.data.resolve_data_dir`'s
      choice (``.../cub``).
    split: ``"train"`` (100 classes), ``"validation"`` (50) or ``"test"``
      (50).
    image_size: side of the square output images.
    dtype: ``np.uint8`` (``[0, 255]``, default) or a float type (``[0, 1]``).
    download: fetch a missing archive from data.caltech.edu (SHA-256 checked);
      False to only read.
    cache_dir: where decoded images are cached; default
      :func:`metalax.data.paths.default_cache_dir`.
    use_cache: False to neither read nor write the cache.

  Returns:
    A :class:`~metalax.data.images.RaggedClassImages` ``[N, image_size,
    image_size, 3]`` (classes differ in count: 41 to 60), classes in folder
    order, named by their folders (``"001.Black_footed_Albatross"``), images
    by file name.

  Raises:
    FileNotFoundError: if the data are missing and ``download`` is False.
    metalax.data.download.DownloadError: if a download failed.
    ValueError: for a bad argument, or an archive that is corrupt or not
      CUB-200-2011.

  Example:
    >>> test = load_cub(split="test")
    >>> test.num_classes, test.image_shape
    (50, (84, 84, 3))

  References:
    Wah, Branson, Welinder, Perona and Belongie, The Caltech-UCSD
    Birds-200-2011 dataset, 2011. Chen, Liu, Kira, Wang and Huang, A closer
    look at few-shot classification, ICLR 2019.
  """
  split = _io.check_split(split)
  dtype = _io.check_dtype(dtype)
  _io.check_image_size(image_size)
  folder = resolve_data_dir("cub", data_dir)
  source = os.path.join(folder, FOLDER)
  if not os.path.isdir(os.path.join(source, "images")):
    folder = fetch("cub", data_dir, download=download, title="CUB-200-2011",
                   expected=[f"{ARCHIVE} (or the {FOLDER}/ folder it extracts to)"])
    source = os.path.join(folder, ARCHIVE)
  key = {"source": _io.file_fingerprint(source), "image_size": image_size, "version": _VERSION}
  arrays = _io.cached(f"cub_{image_size}px", key, cache_dir, use_cache,
                      lambda: _decode_all(source, image_size))
  counts = arrays["counts"]
  offsets = np.concatenate([[0], np.cumsum(counts)])
  keep = chen_split(len(counts), split)
  if not keep:
    raise ValueError(f"{source} has {len(counts)} classes, too few for a {split} split "
                     "(CUB-200-2011 has 200).")
  rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in keep])
  new_offsets = (0,) + tuple(int(offset) for offset in np.cumsum(counts[keep]))
  return RaggedClassImages(images=_io.convert(arrays["images"][rows], dtype),
                           class_offsets=new_offsets,
                           class_names=tuple(str(arrays["class_names"][i]) for i in keep))
