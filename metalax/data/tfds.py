"""Image-classification datasets from tensorflow-datasets, without TensorFlow.

:func:`load_tfds` reads a prepared dataset through ``tfds.data_source`` (random
access over ``array_record`` files, decoded with NumPy and PIL; TensorFlow is
not imported) and groups it by label. The dataset must already be prepared in
``array_record`` format in ``data_dir``, e.g. with
``tfds build <name> --file_format=array_record`` or
``builder.download_and_prepare(file_format="array_record")``; data prepared as
TFRecord (the tfds default) cannot be read this way. Nothing is downloaded
unless ``download=True``.
"""

import os
from typing import Any

import numpy as np

from metalax.data.images import RaggedClassImages
from metalax.data.images import from_labelled


def _open(name: str, split: str, data_dir, download: bool) -> Any:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  where = ("in the default data_dir" if data_dir is None
           else f"in data_dir {os.fspath(data_dir)!r}")
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=download)
  except tfds.core.registered.DatasetNotFoundError as error:
    raise FileNotFoundError(
        f"tensorflow-datasets dataset {name!r} not found {where}: it is neither registered "
        "nor prepared there.") from error
  except NotImplementedError as error:
    # tfds raises this for data that are missing or in TFRecord format.
    raise FileNotFoundError(
        f"tensorflow-datasets dataset {name!r} is not prepared in array_record format {where} "
        f"(prepare it with `tfds build {name} --file_format=array_record`, or pass "
        f"download=True): {error}") from error


def load_tfds(name: str, *, split: str = "train", data_dir: str | os.PathLike | None = None,
              image_key: str | None = None, label_key: str | None = None, dtype=np.float32,
              download: bool = False) -> RaggedClassImages:
  """Loads an image-classification dataset of tensorflow-datasets, grouped by label.

  Args:
    name: the dataset, e.g. ``"mnist"``, ``"omniglot"``, ``"cifar100"``, with an
      optional config and version (``"name/config:1.0.0"``).
    split: the split, any tfds split string (``"train"``, ``"test[:10%]"``).
    data_dir: where the prepared dataset is; default the tfds default.
    image_key: the image feature; default the first of the dataset's
      ``supervised_keys``, else ``"image"``.
    label_key: the integer label feature; default the second of the
      ``supervised_keys``, else ``"label"``.
    dtype: ``np.float32`` (``[0, 1]``) or ``np.uint8`` (``[0, 255]``).
    download: whether tfds may download and prepare the data (network).

  Returns:
    A :class:`~metalax.data.images.RaggedClassImages`, images ``[N, H, W, C]``
    grouped by label (increasing, each in dataset order), named by the label's
    ``ClassLabel`` names when it has them, else by the label value.

  Raises:
    FileNotFoundError: if the dataset is not prepared (in ``array_record``
      format) where asked.
    ValueError: if the split is unknown, a key is missing, the images are not
      uint8 ``[H, W, C]`` of one shape, or the labels are not non-negative
      ints.

  Example:
    >>> data = load_tfds("mnist", split="train", data_dir="~/tensorflow_datasets")
    >>> data.num_classes
    10
  """
  dtype = np.dtype(dtype)
  if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
    raise ValueError(f"dtype must be uint8 or a float type, got {dtype}.")
  source = _open(name, split, data_dir, download)
  info = source.dataset_info
  supervised = tuple(info.supervised_keys or ())
  image_key = image_key or (supervised[0] if len(supervised) == 2 else "image")
  label_key = label_key or (supervised[1] if len(supervised) == 2 else "label")
  features = info.features
  for role, key in (("image", image_key), ("label", label_key)):
    if key not in features:
      raise ValueError(
          f"{name!r} has no {role} feature {key!r}; its features are {sorted(features.keys())}. "
          f"Pass {role}_key.")
  if len(source) == 0:
    raise ValueError(f"{name!r} split {split!r} is empty.")
  images, labels = [], []
  for index in range(len(source)):  # Decodes with PIL: about 5,000 MNIST images a second.
    example = source[index]
    images.append(np.asarray(example[image_key]))
    labels.append(example[label_key])
  shapes = {image.shape for image in images}
  if len(shapes) != 1:
    raise ValueError(
        f"{name!r} images have different shapes ({len(shapes)} distinct, e.g. "
        f"{sorted(shapes)[:3]}); resize them to one shape first.")
  images = np.stack(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(
        f"{name!r} feature {image_key!r} must hold uint8 images [H, W, C], got "
        f"{images.dtype} {images.shape[1:]}.")
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f"{name!r} feature {label_key!r} must hold integer class labels, got "
        f"{labels.dtype} with shape {labels.shape[1:]} per example.")
  names = getattr(features[label_key], "names", None)
  data = from_labelled(images, labels, class_names=names)
  if dtype != np.uint8:
    data = data.replace(images=data.images.astype(dtype) / dtype.type(255))
  return data
