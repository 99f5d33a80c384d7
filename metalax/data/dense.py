"""Dense multi-task datasets: NYUv2 (13-class segmentation, depth, normals) and Cityscapes (7-class
segmentation, depth), in the preprocessed ``.npy`` layout of MTAN and LibMTL.

The layout (one file per image and task, numbered from 0, as the MTAN
authors' preprocessed archives unpack)::

  <root>/train/image/0.npy   [H, W, 3] float   (NYUv2 288 x 384, Cityscapes 128 x 256)
  <root>/train/label/0.npy   [H, W]    float   class index, -1 where unlabelled
  <root>/train/depth/0.npy   [H, W, 1] float   0 where there is no depth
  <root>/train/normal/0.npy  [H, W, 3] float   unit normals, 0 where none (NYUv2 only)
  <root>/val/...                               the evaluation split

NYUv2 has 795 training and 654 validation images, Cityscapes 2975 and 500;
MTAN and LibMTL report results on ``val``. The archives are the MTAN
authors' (linked from LibMTL's ``examples/nyu`` and ``examples/cityscapes``
READMEs); this module does not download them. ``<root>`` is found by
:func:`metalax.data.resolve_data_dir` (``"nyuv2"``, ``"cityscapes"``).

Arrays are channels last (``jax.image``/``flax`` convention), loaded whole
into memory: the NYUv2 training split takes about 2.4 GB as float32; pass
``indices`` for a subset.

References:
  Silberman, Hoiem, Kohli & Fergus, Indoor Segmentation and Support
  Inference from RGBD Images (NYUv2), ECCV 2012. Cordts et al., The
  Cityscapes Dataset for Semantic Urban Scene Understanding, CVPR 2016.
  Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention (the
  preprocessed versions), CVPR 2019.
"""

import os
from typing import Sequence

import flax
import numpy as np

from metalax.data.paths import resolve_data_dir

NYUV2_CLASSES = 13
CITYSCAPES_CLASSES = 7

_SPLIT_FOLDERS = {"train": "train", "val": "val", "test": "val", "validation": "val"}


@flax.struct.dataclass
class DenseData:
  """Images with per-pixel targets for several tasks.

  Attributes:
    images: ``[n, H, W, 3]`` float32.
    segmentation: ``[n, H, W]`` int32 class indices, -1 where unlabelled (what
      :func:`metalax.metrics.confusion_matrix` and a cross-entropy with an
      ignore label skip).
    depth: ``[n, H, W, 1]`` float32, 0 where there is no ground truth.
    normals: ``[n, H, W, 3]`` float32 unit normals, 0 where there is none; None
      for Cityscapes.
  """

  images: np.ndarray
  segmentation: np.ndarray
  depth: np.ndarray
  normals: np.ndarray | None = None


def _count(folder: str) -> int:
  names = [name for name in os.listdir(folder) if name.endswith(".npy")]
  numbers = sorted(int(name[:-4]) for name in names if name[:-4].isdigit())
  if numbers != list(range(len(names))):
    raise ValueError(f"{folder} must hold 0.npy, 1.npy, ... numbered without gaps (the MTAN/LibMTL layout), "
                     f"got {len(names)} files: {sorted(names)[:5]}...")
  return len(numbers)


def _load(name: str, data_dir, split: str, tasks: Sequence[str], num_classes: int,
          indices: Sequence[int] | None, dtype) -> DenseData:
  if split not in _SPLIT_FOLDERS:
    raise ValueError(f"split must be one of {sorted(_SPLIT_FOLDERS)} ('test' and 'validation' are the "
                     f"'val' folder, on which MTAN and LibMTL report), got {split!r}.")
  root = resolve_data_dir(name, data_dir)
  base = os.path.join(root, _SPLIT_FOLDERS[split])
  folders = {task: os.path.join(base, task) for task in ("image",) + tuple(tasks)}
  missing = [path for path in folders.values() if not os.path.isdir(path)]
  if missing:
    raise FileNotFoundError(f"{name}: expected the preprocessed .npy layout <root>/{{train,val}}/"
                            f"{{{','.join(folders)}}}/<i>.npy under {root}; missing {missing}.")
  counts = {task: _count(path) for task, path in folders.items()}
  if len(set(counts.values())) != 1:
    raise ValueError(f"{name} {split}: every task folder must hold the same number of files, got {counts}.")
  num_examples = counts["image"]
  if num_examples == 0:
    raise ValueError(f"{name} {split}: {folders['image']} holds no .npy file.")
  indices = list(range(num_examples)) if indices is None else [int(i) for i in indices]
  if not indices or min(indices) < 0 or max(indices) >= num_examples:
    raise ValueError(f"indices must be non-empty and in [0, {num_examples}), got {indices[:5]}...")

  def read(task, i, rank):
    path = os.path.join(folders[task], f"{i}.npy")
    try:
      array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
      raise ValueError(f"{path} is not a readable .npy file (truncated or corrupt?): {error}") from error
    if array.ndim != rank:
      raise ValueError(f"{path}: expected a {rank}-d array, got shape {array.shape}.")
    return array

  arrays = {}
  ranks = {"image": 3, "label": 2, "depth": 3, "normal": 3}
  channels = {"image": 3, "depth": 1, "normal": 3}
  for task in folders:
    stacked = [read(task, i, ranks[task]) for i in indices]
    shapes = {a.shape for a in stacked}
    if len(shapes) != 1:
      raise ValueError(f"{name} {split} {task}: all files must have one shape, got {sorted(shapes)[:3]}.")
    array = np.stack(stacked)
    if task in channels and array.shape[-1] != channels[task]:
      raise ValueError(f"{name} {split} {task}: expected [H, W, {channels[task]}] arrays, got "
                       f"{array.shape[1:]}.")
    arrays[task] = array
  spatial = {task: a.shape[1:3] for task, a in arrays.items()}
  if len(set(spatial.values())) != 1:
    raise ValueError(f"{name} {split}: the tasks' images differ in size: {spatial}.")
  labels = arrays["label"]
  if np.any(labels != np.round(labels)) or labels.min() < -1 or labels.max() >= num_classes:
    raise ValueError(f"{name} {split}: labels must be integers in [-1, {num_classes}), got values in "
                     f"[{labels.min()}, {labels.max()}].")
  return DenseData(
      images=arrays["image"].astype(dtype),
      segmentation=labels.astype(np.int32),
      depth=arrays["depth"].astype(dtype),
      normals=arrays["normal"].astype(dtype) if "normal" in arrays else None)


def load_nyuv2(data_dir: str | os.PathLike | None = None, split: str = "train", *,
               indices: Sequence[int] | None = None, dtype=np.float32) -> DenseData:
  """NYUv2 with 13-class segmentation, depth and surface normals (MTAN's preprocessed files).

  Args:
    data_dir: the folder holding ``train/`` and ``val/``; None for
      ``$METALAX_DATA_DIR/nyuv2`` or ``~/metalax_data/nyuv2``.
    split: ``"train"`` or ``"val"`` (``"test"``/``"validation"`` read ``val``).
    indices: the examples to load (all by default).
    dtype: float dtype of images, depth and normals.

  Returns:
    A :class:`DenseData` with ``normals``.

  Raises:
    FileNotFoundError: if a task folder is missing.
    ValueError: on gaps in the numbering, differing counts or shapes, labels
      outside ``[-1, 13)`` or an unreadable file.
  """
  return _load("nyuv2", data_dir, split, ("label", "depth", "normal"), NYUV2_CLASSES, indices, dtype)


def load_cityscapes(data_dir: str | os.PathLike | None = None, split: str = "train", *,
                    indices: Sequence[int] | None = None, dtype=np.float32) -> DenseData:
  """Cityscapes with 7-class segmentation and depth (MTAN's preprocessed 128 x 256 files).

  Args:
    data_dir: the folder holding ``train/`` and ``val/``; None for
      ``$METALAX_DATA_DIR/cityscapes`` or ``~/metalax_data/cityscapes``.
    split: ``"train"`` or ``"val"`` (``"test"``/``"validation"`` read ``val``).
    indices: the examples to load (all by default).
    dtype: float dtype of images and depth.

  Returns:
    A :class:`DenseData` with ``normals=None``.

  Raises:
    FileNotFoundError: if a task folder is missing.
    ValueError: as :func:`load_nyuv2`, with labels in ``[-1, 7)``.
  """
  return _load("cityscapes", data_dir, split, ("label", "depth"), CITYSCAPES_CLASSES, indices, dtype)
