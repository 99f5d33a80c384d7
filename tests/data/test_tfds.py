"""Tests for metalax.data.tfds, offline and without TensorFlow.

A tiny dataset is prepared in ``array_record`` format by a local builder in a
temporary directory (images are given to tfds as PIL images, which tfds encodes
without TensorFlow), then read back by name from that directory.
"""

import sys

import numpy as np
from PIL import Image
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from metalax.data.images import RaggedClassImages  # pylint: disable=g-import-not-at-top
from metalax.data.tfds import load_tfds  # pylint: disable=g-import-not-at-top

LABELS = np.array([2, 0, 1, 2, 2, 0, 1, 2, 0])
NAMES = ["cat", "dog", "emu"]


def _image(index: int) -> np.ndarray:
  rng = np.random.default_rng(index)
  return rng.integers(0, 256, (6, 5, 1), dtype=np.uint8)


class MetalaxTinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Nine 6x5 grayscale images in three classes (train) and three (test)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "picture": tfds.features.Image(shape=(6, 5, 1)),
            "kind": tfds.features.ClassLabel(names=NAMES),
            "other": tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=("picture", "kind"))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(range(9)),
            "test": self._generate_examples(range(3))}

  def _generate_examples(self, indices):
    for index in indices:
      yield index, {"picture": Image.fromarray(_image(index)[..., 0], "L"),
                    "kind": int(LABELS[index]), "other": index}


class MetalaxRaggedShapes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Images of different sizes."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 1)),
            "label": tfds.features.ClassLabel(num_classes=2)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for index, size in enumerate((4, 5)):
      yield index, {"image": Image.new("L", (size, size)), "label": index}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tfds")
  tfds.disable_progress_bar()
  for builder in (MetalaxTinyImages, MetalaxRaggedShapes):
    builder(data_dir=str(directory), file_format="array_record").download_and_prepare()
  return str(directory)


def test_reads_by_name_grouped_by_label(data_dir):
  data = load_tfds("metalax_tiny_images", split="train", data_dir=data_dir)
  assert isinstance(data, RaggedClassImages)
  assert data.class_names == tuple(NAMES)
  np.testing.assert_array_equal(data.counts, np.bincount(LABELS))
  assert data.images.shape == (9, 6, 5, 1) and data.images.dtype == np.float32
  # Class c holds the images labelled c in dataset order, whatever order tfds stores.
  for label in range(3):
    pixels = np.round(data.images_of_class(label) * 255).astype(np.uint8)
    stored = {image.tobytes() for image in pixels}
    expected = {_image(index).tobytes() for index in np.flatnonzero(LABELS == label)}
    assert stored == expected


def test_uint8_split_slice_and_keys(data_dir):
  data = load_tfds("metalax_tiny_images", split="test", data_dir=data_dir, dtype=np.uint8,
                   image_key="picture", label_key="kind")
  assert data.images.dtype == np.uint8 and data.images.shape[0] == 3
  assert data.class_names == ("cat", "dog", "emu")
  sliced = load_tfds("metalax_tiny_images", split="train[:4]", data_dir=data_dir)
  assert sliced.images.shape[0] == 4
  # Any integer feature can be the label; without ClassLabel names, classes are named by value.
  by_index = load_tfds("metalax_tiny_images", data_dir=data_dir, label_key="other")
  assert by_index.class_names == tuple(str(index) for index in range(9))


def test_tensorflow_not_needed(data_dir):
  if "tensorflow" in sys.modules:
    pytest.skip("TensorFlow was already imported by something else")
  load_tfds("metalax_tiny_images", split="train", data_dir=data_dir)
  assert "tensorflow" not in sys.modules


def test_mock_data_for_a_registered_dataset():
  with tfds.testing.mock_data(num_examples=40):
    data = load_tfds("mnist", split="train")
  assert data.images.shape == (40, 28, 28, 1)
  assert data.num_classes <= 10 and set(data.class_names) <= {str(d) for d in range(10)}


def test_errors(data_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="'metalax_nothing' not found in data_dir"):
    load_tfds("metalax_nothing", data_dir=data_dir)
  with pytest.raises(FileNotFoundError, match="not prepared in array_record format"):
    load_tfds("mnist", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="Unknown split 'validation'"):
    load_tfds("metalax_tiny_images", split="validation", data_dir=data_dir)
  with pytest.raises(ValueError, match="no image feature 'image'.*Pass image_key"):
    load_tfds("metalax_tiny_images", data_dir=data_dir, image_key="image")
  with pytest.raises(ValueError, match="feature 'picture' must hold integer class labels"):
    load_tfds("metalax_tiny_images", data_dir=data_dir, label_key="picture")
  with pytest.raises(ValueError, match="different shapes"):
    load_tfds("metalax_ragged_shapes", data_dir=data_dir)
  with pytest.raises(ValueError, match="dtype"):
    load_tfds("metalax_tiny_images", data_dir=data_dir, dtype=np.int32)
