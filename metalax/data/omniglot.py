"""Omniglot (Lake et al., 2015) read from its original zip archives.

``load_omniglot(data_dir)`` reads ``images_background.zip`` (30 alphabets, 964
characters) and ``images_evaluation.zip`` (20 alphabets, 659 characters), the
archives published in github.com/brendenlake/omniglot (``python/``), laid out as
``images_*/<Alphabet>/characterNN/XXXX_YY.png`` (105x105 1-bit PNGs, black ink
on white, 20 drawings per character). Members are read straight from the zips,
never extracted. The folder follows :func:`metalax.data.resolve_data_dir`
(``data_dir``, else ``$METALAX_DATA_DIR/omniglot``, else
``~/metalax_data/omniglot``); a missing archive is downloaded from that
repository and checked against its SHA-256 unless ``download=False``.

Processing: each PNG is converted to 8-bit grayscale (mode ``"L"``, 0 or 255),
resized to ``image_size x image_size`` with ``PIL.Image.LANCZOS`` (antialiased,
grey edges), then inverted so that **ink is 1 (or 255) and background 0**, like
the ``1 - x`` of MAML, Prototypical Networks and learn2learn. This is
learn2learn's processing (torchvision opens Omniglot as ``"L"``, then
``Resize(28, LANCZOS)``). MAML's ``resize_images.py`` and Prototypical Networks
resize the 1-bit image itself, for which Pillow silently uses nearest neighbour
whatever filter is asked, so their images are binary: ``resample="nearest"``
comes close to that (Prototypical Networks also rotates before resizing, where
this module rotates the resized images, so pixels can differ).

Decoding all 32,460 PNGs takes about 6 s on one core, so the result is cached
as an ``.npz`` in ``cache_dir`` (default ``$XDG_CACHE_HOME/metalax`` or
``~/.cache/metalax``); a cached load takes well under a second. The cache file
name holds a digest of each archive's size and SHA-256, the image size and the
processing version, so a changed archive or size is decoded afresh.

Class order is deterministic: sorted by archive (background first), alphabet,
then character (all by code point), and drawings by file name; class names are
the character folders, ``"images_background/Arcadian/character01"``.
:func:`omniglot_splits` makes the splits of the literature from that order.
"""

import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
import zlib
from typing import Sequence

from absl import logging
import numpy as np
from PIL import Image

from metalax.data.download import fetch
from metalax.data.images import ClassImages
from metalax.data.images import rotate_classes
from metalax.data.images import select_classes
from metalax.data.paths import default_cache_dir

ARCHIVES = ("background", "evaluation")
"""The two archives: ``images_background.zip`` and ``images_evaluation.zip``."""

NUM_CHARACTERS = {"background": 964, "evaluation": 659}
NUM_DRAWINGS = 20

SPLITS = ("vinyals", "snell", "lake")
"""Split names accepted by :func:`omniglot_splits`."""

SNELL_VALIDATION_ALPHABETS = (
    "Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)")
"""The 172 validation characters of Snell et al. (2017), ``splits/vinyals/val.txt``."""

_PROCESSING_VERSION = 1  # Bump when the decoding or resizing changes.
_MAX_MEMBER_BYTES = 1 << 24
_MEMBER = re.compile(
    r"^images_(background|evaluation)/([^/]+)/(character\d+)/(\d+_\d+)\.png$")


def _archive_paths(data_dir: str | os.PathLike | None, archives: Sequence[str],
                   download: bool) -> list[str]:
  folder = fetch("omniglot", data_dir, filenames=[f"images_{archive}.zip" for archive in archives],
                 download=download, title="Omniglot")
  return [os.path.join(folder, f"images_{archive}.zip") for archive in archives]


def _fingerprint(path: str) -> dict:
  digest = hashlib.sha256()
  with open(path, "rb") as file:
    for block in iter(lambda: file.read(1 << 20), b""):
      digest.update(block)
  return {"file": os.path.basename(path), "size": os.path.getsize(path),
          "sha256": digest.hexdigest()}


def _is_ignored(name: str) -> bool:
  """Directory entries and OS metadata (``__MACOSX/``, ``.DS_Store``)."""
  parts = name.split("/")
  return name.endswith("/") or any(part == "__MACOSX" or part.startswith(".") for part in parts)


def _check_member_name(name: str, path: str) -> None:
  normalized = name.replace("\\", "/")
  if (normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized)
      or ".." in normalized.split("/")):
    raise ValueError(
        f"{path}: member {name!r} has an absolute path or a '..' component; refusing to read "
        "this archive (Omniglot members are relative paths like "
        "images_background/<Alphabet>/characterNN/XXXX_YY.png).")


def _list_characters(archive: zipfile.ZipFile, path: str,
                     expected: str) -> dict[str, list[zipfile.ZipInfo]]:
  """Maps ``images_<expected>/<Alphabet>/characterNN`` to its PNG members."""
  characters: dict[str, list[zipfile.ZipInfo]] = {}
  for info in archive.infolist():
    _check_member_name(info.filename, path)
    if _is_ignored(info.filename):
      continue
    match = _MEMBER.match(info.filename)
    if match is None or match.group(1) != expected:
      raise ValueError(
          f"{path} is not an Omniglot {expected} archive: unexpected member "
          f"{info.filename!r}; expected members like "
          f"images_{expected}/<Alphabet>/characterNN/XXXX_YY.png.")
    if info.file_size > _MAX_MEMBER_BYTES:
      raise ValueError(
          f"{path}: member {info.filename!r} claims {info.file_size} bytes uncompressed, "
          f"more than the {_MAX_MEMBER_BYTES} an Omniglot PNG can need.")
    character = info.filename.rsplit("/", 1)[0]
    characters.setdefault(character, []).append(info)
  if not characters:
    raise ValueError(
        f"{path} is not an Omniglot archive: it holds no members like "
        f"images_{expected}/<Alphabet>/characterNN/XXXX_YY.png.")
  for character, members in characters.items():
    if len(members) != NUM_DRAWINGS:
      raise ValueError(
          f"{path}: character {character!r} has {len(members)} drawings, expected "
          f"{NUM_DRAWINGS} (one per drawer).")
  return characters


_RESAMPLE = {"lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX,
             "nearest": Image.Resampling.NEAREST}


def _decode(data: bytes, image_size: int | None, resample: str) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as image:
    image = image.convert("L")
    if image_size is not None and image.size != (image_size, image_size):
      image = image.resize((image_size, image_size), _RESAMPLE[resample])
    return 255 - np.asarray(image, dtype=np.uint8)


def _decode_archive(path: str, archive_name: str, image_size: int | None,
                    resample: str) -> tuple[list[str], list[np.ndarray]]:
  """Returns sorted character names and their ``[20, S, S]`` uint8 images (ink 255)."""
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, zlib.error, EOFError) as error:
    raise ValueError(
        f"{path} is not a readable zip archive (truncated or corrupt?): {error}") from error
  names, images = [], []
  with archive:
    characters = _list_characters(archive, path, archive_name)
    for character in sorted(characters):
      drawings = []
      for info in sorted(characters[character], key=lambda info: info.filename):
        try:
          drawings.append(_decode(archive.read(info), image_size, resample))
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, SyntaxError,
                Image.DecompressionBombError) as error:
          raise ValueError(
              f"{path}: cannot read member {info.filename!r} (truncated or corrupt "
              f"archive?): {error}") from error
      shapes = {drawing.shape for drawing in drawings}
      if len(shapes) != 1:
        raise ValueError(f"{path}: drawings of {character!r} differ in size: {sorted(shapes)}.")
      names.append(character)
      images.append(np.stack(drawings))
  return names, images


def _cache_key(fingerprints: list[dict], image_size: int | None,
               resample: str) -> tuple[str, str]:
  key = json.dumps({"archives": fingerprints, "image_size": image_size,
                    "resample": resample, "ink": 255, "version": _PROCESSING_VERSION},
                   sort_keys=True)
  return key, hashlib.sha256(key.encode()).hexdigest()[:16]


def _read_cache(path: str, key: str) -> tuple[np.ndarray, tuple[str, ...]] | None:
  if not os.path.isfile(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as cached:
      if str(cached["key"]) != key:
        return None
      images, names = cached["images"], tuple(str(name) for name in cached["class_names"])
    if images.dtype != np.uint8 or images.ndim != 5 or images.shape[0] != len(names):
      raise ValueError(f"unexpected cached array {images.dtype} {images.shape}")
    return images, names
  except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
    logging.warning("Ignoring unreadable Omniglot cache %s: %s", path, error)
    return None


def _write_cache(path: str, key: str, images: np.ndarray, names: list[str]) -> None:
  """Writes atomically (a temporary file, then a rename); failures only log."""
  temporary = None
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), suffix=".tmp.npz",
                                     delete=False) as file:
      temporary = file.name
      np.savez(file, images=images, class_names=np.array(names), key=np.array(key))
    os.replace(temporary, path)
  except OSError as error:
    logging.warning("Could not write the Omniglot cache %s: %s", path, error)
    if temporary is not None and os.path.exists(temporary):
      os.remove(temporary)


def load_omniglot(data_dir: str | os.PathLike | None = None, *, image_size: int | None = 28,
                  resample: str = "lanczos", dtype=np.float32,
                  cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                  archives: Sequence[str] = ARCHIVES, download: bool = True) -> ClassImages:
  """Loads every Omniglot character as one class, ink 1 on background 0.

  Args:
    data_dir: folder holding ``images_background.zip`` and
      ``images_evaluation.zip``; None for
      :func:`metalax.data.resolve_data_dir`'s choice.
    image_size: side of the square output images, or None to keep the original
      105x105.
    resample: the resize filter: ``"lanczos"`` (default), ``"box"`` (area
      average) or ``"nearest"`` (binary images, as MAML's and Snell et al.'s
      pipelines end up with).
    dtype: ``np.float32`` (values in ``[0, 1]``) or ``np.uint8`` (``[0, 255]``,
      four times smaller).
    cache_dir: where the decoded images are cached; default
      :func:`default_cache_dir`.
    use_cache: False to neither read nor write the cache.
    archives: which archives to read, a subset of ``("background",
      "evaluation")``, in that order.
    download: fetch a missing archive from github.com/brendenlake/omniglot
      (SHA-256 checked); False to only read.

  Returns:
    A :class:`~metalax.data.images.ClassImages`, ``images [1623, 20,
    image_size, image_size, 1]`` for both archives, classes sorted by archive,
    alphabet and character, named like
    ``"images_background/Arcadian/character01"``.

  Raises:
    FileNotFoundError: if an archive is missing and ``download`` is False (the
      message names the files, the folder and the download it would make).
    metalax.data.download.DownloadError: if a download failed.
    ValueError: if an archive is not a zip, is truncated or corrupt, is not an
      Omniglot archive, has a member with an absolute or ``..`` path, or a
      character without 20 drawings; or for a bad argument.

  Example:
    >>> characters = load_omniglot("/data/omniglot")
    >>> splits = omniglot_splits(characters, "vinyals")
    >>> splits["train"].images.shape
    (4800, 20, 28, 28, 1)

  References:
    Lake, Salakhutdinov and Tenenbaum, Human-level concept learning through
    probabilistic program induction, Science, 2015.
  """
  archives = tuple(archives)
  if (not archives or any(archive not in ARCHIVES for archive in archives)
      or len(set(archives)) != len(archives)):
    raise ValueError(f"archives must be distinct names from {ARCHIVES}, got {archives}.")
  archives = tuple(archive for archive in ARCHIVES if archive in archives)
  if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
    raise ValueError(f"image_size must be a positive int or None, got {image_size!r}.")
  if resample not in _RESAMPLE:
    raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}.")
  dtype = np.dtype(dtype)
  if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
    raise ValueError(f"dtype must be uint8 or a float type, got {dtype}.")
  paths = _archive_paths(data_dir, archives, download)

  images = names = None
  if use_cache:
    key, digest = _cache_key([_fingerprint(path) for path in paths], image_size, resample)
    size = "full" if image_size is None else f"{image_size}px"
    cache_path = os.path.join(os.fspath(cache_dir or default_cache_dir()),
                              f"omniglot_{'_'.join(archives)}_{size}_{resample}_{digest}.npz")
    cached = _read_cache(cache_path, key)
    if cached is not None:
      images, names = cached
  if images is None:
    names, images = [], []
    for archive, path in zip(archives, paths):
      archive_names, archive_images = _decode_archive(path, archive, image_size, resample)
      names += archive_names
      images += archive_images
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
      raise ValueError(f"Omniglot drawings differ in size across characters: {sorted(shapes)}.")
    images = np.stack(images)[..., None]
    if use_cache:
      _write_cache(cache_path, key, images, names)
  if dtype != np.uint8:
    images = images.astype(dtype) / dtype.type(255)
  return ClassImages(images=images, class_names=tuple(names))


def omniglot_splits(characters: ClassImages, split: str = "vinyals", *,
                    angles: Sequence[int] = (0, 90, 180, 270),
                    num_validation: int = 0) -> dict[str, ClassImages]:
  """Splits the 1623 characters of :func:`load_omniglot` by character, then rotates.

  Splits (counts in characters; each becomes ``len(angles)`` classes):

  * ``"vinyals"``: the first 1200 characters in :func:`load_omniglot`'s sorted
    order for ``"train"``, the last 423 for ``"test"``. The 423 are exactly the
    test characters of Vinyals et al. (2016) as published in the split files of
    Snell et al. (2017) (``splits/vinyals/test.txt``, also Torchmeta's
    ``omniglot/test.json``): Gurmukhi character42-45 and the evaluation
    alphabets after it. With ``num_validation > 0`` the last ``num_validation``
    of the 1200 become ``"validation"`` (e.g. 100 for the 1100/100/423 sizes of
    MAML and learn2learn, whose own choice of characters is a random shuffle
    -- seeded with ``random.seed(1)`` over ``os.listdir`` order in MAML,
    unseeded in learn2learn -- and so is not reproduced here).
  * ``"snell"``: the train/validation/test split of Snell et al. (2017):
    ``"test"`` as above, ``"validation"`` the 172 characters of
    :data:`SNELL_VALIDATION_ALPHABETS` (``val.txt``), ``"train"`` the other
    1028 (``train.txt``).
  * ``"lake"``: ``"train"`` the background archive (964), ``"test"`` the
    evaluation archive (659), as in Lake et al. (2015); ``num_validation``
    takes the last characters of the background archive.

  Args:
    characters: the output of :func:`load_omniglot` with both archives and no
      rotation.
    split: one of :data:`SPLITS`.
    angles: rotations (multiples of 90 degrees) turning each character into
      ``len(angles)`` classes, see
      :func:`~metalax.data.images.rotate_classes`; ``(0,)`` for none. Class
      ``c * len(angles) + r`` of a split is its character ``c`` rotated by
      ``angles[r]``.
    num_validation: characters to hold out for validation (``"vinyals"``,
      ``"lake"``).

  Returns:
    ``{"train": ..., "test": ...}`` plus ``"validation"`` when there is one,
    each a :class:`~metalax.data.images.ClassImages`.

  Raises:
    ValueError: if ``characters`` is not the full sorted set of 1623, the
      split is unknown, or ``num_validation`` is out of range.

  References:
    Vinyals et al., Matching networks for one shot learning, 2016.
    Snell, Swersky and Zemel, Prototypical networks for few-shot learning, 2017.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
  names = characters.class_names
  expected = sum(NUM_CHARACTERS.values())
  if characters.num_classes != expected or list(names) != sorted(names) or not all(
      re.match(r"^images_(background|evaluation)/[^/]+/character\d+$", name) for name in names):
    raise ValueError(
        f"omniglot_splits needs the {expected} unrotated characters of load_omniglot with both "
        f"archives, in its order; got {characters.num_classes} classes "
        f"(first {names[:1]}, last {names[-1:]}).")
  num_validation = int(num_validation)
  background = NUM_CHARACTERS["background"]
  if split == "snell":
    if num_validation:
      raise ValueError("the snell split has a fixed validation set; num_validation must be 0.")
    alphabets = [name.split("/")[1] for name in names]
    validation = [i for i in range(1200) if alphabets[i] in SNELL_VALIDATION_ALPHABETS]
    train = [i for i in range(1200) if alphabets[i] not in SNELL_VALIDATION_ALPHABETS]
    test = list(range(1200, expected))
  else:
    num_train = 1200 if split == "vinyals" else background
    if not 0 <= num_validation < num_train:
      raise ValueError(f"num_validation must be in [0, {num_train}), got {num_validation}.")
    train = list(range(num_train - num_validation))
    validation = list(range(num_train - num_validation, num_train))
    test = list(range(num_train, expected))
  parts = {"train": train, "validation": validation, "test": test}
  return {part: rotate_classes(select_classes(characters, indices), angles)
          for part, indices in parts.items() if indices}
