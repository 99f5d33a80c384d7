"""Tests for metalax.data.images."""

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from metalax.data import images as images_lib
from metalax.data.images import RaggedClassImages


def _dense(num_classes=3, num_per_class=4, size=3):
  """images[c, k] is filled with 10 * c + k, with a marked corner to see rotations."""
  values = 10 * np.arange(num_classes)[:, None] + np.arange(num_per_class)[None, :]
  images = np.broadcast_to(values[:, :, None, None, None],
                           (num_classes, num_per_class, size, size, 1)).astype(np.float32) / 100
  images = images.copy()
  images[:, :, 0, 0, 0] = 1.0
  return images_lib.class_images(images, [f"c{index}" for index in range(num_classes)])


def _ragged(counts=(2, 5, 3), size=3):
  labels = np.repeat(np.arange(len(counts)), counts)
  images = np.zeros((labels.size, size, size, 1), np.uint8)
  images[:, 1, 1, 0] = np.arange(labels.size)
  names = [f"r{index}" for index in range(len(counts))]
  return images_lib.ragged_class_images(images, counts, names)


class TestContainers:

  def test_properties(self):
    data = _dense()
    assert (data.num_classes, data.num_per_class, data.image_shape) == (3, 4, (3, 3, 1))
    ragged = _ragged()
    assert ragged.num_classes == 3
    np.testing.assert_array_equal(ragged.counts, [2, 5, 3])
    assert ragged.class_offsets == (0, 2, 7, 10)
    np.testing.assert_array_equal(ragged.images_of_class(1)[:, 1, 1, 0], [2, 3, 4, 5, 6])

  def test_default_names(self):
    data = images_lib.class_images(np.zeros((2, 1, 2, 2, 1), np.uint8))
    assert data.class_names == ("0", "1")

  def test_are_pytrees_with_static_metadata(self):
    data = _dense()
    assert len(jax.tree.leaves(data)) == 1
    total = jax.jit(lambda data: data.images.sum() * data.num_classes)(data)
    np.testing.assert_allclose(total, data.images.sum() * 3, rtol=1e-6)
    ragged = _ragged()
    assert len(jax.tree.leaves(ragged)) == 1
    mapped = jax.tree.map(jnp.asarray, ragged)
    assert mapped.class_offsets == ragged.class_offsets

  @pytest.mark.parametrize("shape, message", [
      ((3, 4, 2, 2), "num_classes, num_per_class, H, W, C"),
      ((0, 4, 2, 2, 1), "at least one class"),
      ((3, 0, 2, 2, 1), "at least one class"),
  ])
  def test_class_images_rejects_bad_shapes(self, shape, message):
    with pytest.raises(ValueError, match=message):
      images_lib.class_images(np.zeros(shape, np.float32))

  def test_rejects_bad_dtype_and_names(self):
    with pytest.raises(ValueError, match="uint8 in \\[0, 255\\] or floating"):
      images_lib.class_images(np.zeros((2, 2, 2, 2, 1), np.int32))
    with pytest.raises(ValueError, match="needs 2 class names, got 3"):
      images_lib.class_images(np.zeros((2, 2, 2, 2, 1), np.uint8), ["a", "b", "c"])

  def test_ragged_rejects_bad_counts(self):
    images = np.zeros((5, 2, 2, 1), np.uint8)
    with pytest.raises(ValueError, match="end at N = 5"):
      images_lib.ragged_class_images(images, [2, 2])
    with pytest.raises(ValueError, match="at least one image"):
      images_lib.ragged_class_images(images, [5, 0])
    with pytest.raises(ValueError, match="\\[N, H, W, C\\]"):
      images_lib.ragged_class_images(np.zeros((5, 2, 2), np.uint8), [5])
    with pytest.raises(ValueError, match="non-empty 1-D sequence of ints"):
      images_lib.ragged_class_images(images, [])


class TestFromLabelled:

  def test_groups_by_label_stably(self):
    labels = np.array([2, 0, 2, 5, 0, 2])
    images = np.arange(6, dtype=np.uint8).reshape(6, 1, 1, 1)
    data = images_lib.from_labelled(images, labels)
    assert isinstance(data, RaggedClassImages)
    assert data.class_names == ("0", "2", "5")
    assert data.class_offsets == (0, 2, 5, 6)
    np.testing.assert_array_equal(data.images[:, 0, 0, 0], [1, 4, 0, 2, 5, 3])

  def test_class_names_by_label_value(self):
    data = images_lib.from_labelled(np.zeros((3, 1, 1, 1), np.float32), np.array([1, 3, 1]),
                                    class_names=["zero", "one", "two", "three"])
    assert data.class_names == ("one", "three")
    with pytest.raises(ValueError, match="class_names has 2 names, but labels go up to 3"):
      images_lib.from_labelled(np.zeros((3, 1, 1, 1), np.float32), np.array([1, 3, 1]),
                               class_names=["a", "b"])

  @pytest.mark.parametrize("images, labels, message", [
      (np.zeros((3, 2, 2), np.uint8), np.zeros(3, int), "\\[N, H, W, C\\]"),
      (np.zeros((3, 2, 2, 1), np.uint8), np.zeros(4, int), "\\[N\\] = \\[3\\]"),
      (np.zeros((3, 2, 2, 1), np.uint8), np.array([0, -1, 0]), "non-negative"),
      (np.zeros((3, 2, 2, 1), np.uint8), np.zeros(3, np.float32), "integers"),
      (np.zeros((0, 2, 2, 1), np.uint8), np.zeros(0, int), "empty"),
  ])
  def test_errors(self, images, labels, message):
    with pytest.raises(ValueError, match=message):
      images_lib.from_labelled(images, labels)


class TestDenseRagged:

  def test_round_trip(self):
    data = _dense()
    ragged = images_lib.to_ragged(data)
    assert ragged.class_offsets == (0, 4, 8, 12)
    back = images_lib.to_dense(ragged)
    np.testing.assert_array_equal(back.images, data.images)
    assert back.class_names == data.class_names

  def test_unequal_counts_need_num_per_class(self):
    ragged = _ragged()
    with pytest.raises(ValueError, match="different numbers of images \\(2 to 5\\)"):
      images_lib.to_dense(ragged)

  def test_truncation_keeps_first_images(self):
    dense = images_lib.to_dense(_ragged(), num_per_class=2)
    assert dense.images.shape == (3, 2, 3, 3, 1)
    np.testing.assert_array_equal(dense.images[:, :, 1, 1, 0], [[0, 1], [2, 3], [7, 8]])

  def test_truncation_names_the_short_class(self):
    with pytest.raises(ValueError, match="class 0 \\('r0'\\) has 2"):
      images_lib.to_dense(_ragged(), num_per_class=3)


class TestSelectSplitConcatenate:

  def test_select_dense(self):
    data = images_lib.select_classes(_dense(), [2, 0])
    assert data.class_names == ("c2", "c0")
    np.testing.assert_array_equal(data.images, _dense().images[[2, 0]])

  def test_select_ragged(self):
    data = images_lib.select_classes(_ragged(), [2, 0])
    assert data.class_names == ("r2", "r0")
    assert data.class_offsets == (0, 3, 5)
    np.testing.assert_array_equal(data.images[:, 1, 1, 0], [7, 8, 9, 0, 1])

  @pytest.mark.parametrize("indices, message", [
      ([3], "in \\[0, 3\\)"), ([-1], "in \\[0, 3\\)"), ([0, 0], "repeat"),
      ([], "non-empty"), ([0.5], "ints"),
  ])
  def test_select_errors(self, indices, message):
    with pytest.raises(ValueError, match=message):
      images_lib.select_classes(_dense(), indices)

  def test_split(self):
    first, second = images_lib.split_classes(_ragged(), [1, 2])
    assert first.class_names == ("r0",) and second.class_names == ("r1", "r2")
    assert second.class_offsets == (0, 5, 8)
    with pytest.raises(ValueError, match="sum to num_classes = 3"):
      images_lib.split_classes(_dense(), [1, 1])

  def test_concatenate(self):
    both = images_lib.concatenate([_dense(), images_lib.select_classes(_dense(), [1])])
    assert both.class_names == ("c0", "c1", "c2", "c1")
    np.testing.assert_array_equal(both.images[3], _dense().images[1])
    ragged = images_lib.concatenate([_ragged(), _ragged((1, 1))])
    assert ragged.class_offsets == (0, 2, 7, 10, 11, 12)

  def test_concatenate_errors(self):
    with pytest.raises(ValueError, match="convert with to_ragged"):
      images_lib.concatenate([_dense(), _ragged()])
    with pytest.raises(ValueError, match="share num_per_class"):
      images_lib.concatenate([_dense(num_per_class=4), _dense(num_per_class=5)])
    with pytest.raises(ValueError, match="share image shape and dtype"):
      images_lib.concatenate([_dense(size=3), _dense(size=4)])
    with pytest.raises(ValueError, match="at least one"):
      images_lib.concatenate([])


class TestRotateClasses:

  def test_dense_order_names_and_pixels(self):
    data = _dense()
    rotated = images_lib.rotate_classes(data)
    assert rotated.images.shape == (12, 4, 3, 3, 1)
    assert rotated.class_names[:5] == ("c0/rot000", "c0/rot090", "c0/rot180", "c0/rot270",
                                       "c1/rot000")
    for c in range(3):
      for r in range(4):
        np.testing.assert_array_equal(rotated.images[4 * c + r],
                                      np.rot90(data.images[c], r, axes=(1, 2)))

  def test_rotation_is_counter_clockwise_like_pil(self):
    image = np.zeros((5, 5), np.uint8)
    image[0, 4] = 255  # top right
    data = images_lib.class_images(image[None, None, :, :, None])
    rotated = images_lib.rotate_classes(data, angles=(90,))
    expected = np.asarray(Image.fromarray(image).rotate(90))
    np.testing.assert_array_equal(rotated.images[0, 0, :, :, 0], expected)
    assert rotated.images[0, 0, 0, 0, 0] == 255  # top right -> top left

  def test_ragged(self):
    ragged = _ragged()
    rotated = images_lib.rotate_classes(ragged, angles=(0, 180))
    assert rotated.class_offsets == (0, 2, 4, 9, 14, 17, 20)
    assert rotated.class_names[2:4] == ("r1/rot000", "r1/rot180")
    np.testing.assert_array_equal(rotated.images_of_class(3),
                                  np.rot90(ragged.images_of_class(1), 2, axes=(1, 2)))

  def test_errors(self):
    with pytest.raises(ValueError, match="multiples of 90"):
      images_lib.rotate_classes(_dense(), angles=(0, 45))
    with pytest.raises(ValueError, match="distinct"):
      images_lib.rotate_classes(_dense(), angles=(0, 360))
    non_square = images_lib.class_images(np.zeros((1, 1, 2, 3, 1), np.float32))
    with pytest.raises(ValueError, match="square images"):
      images_lib.rotate_classes(non_square)
    assert images_lib.rotate_classes(non_square, angles=(0, 180)).num_classes == 2


def test_to_float32():
  images = np.array([0, 51, 255], np.uint8)
  np.testing.assert_allclose(images_lib.to_float32(images), [0.0, 0.2, 1.0], rtol=1e-6)
  assert images_lib.to_float32(images).dtype == np.float32
  jitted = jax.jit(images_lib.to_float32)(jnp.asarray(images))
  np.testing.assert_allclose(jitted, [0.0, 0.2, 1.0], rtol=1e-6)
  floats = np.array([0.5], np.float64)
  assert images_lib.to_float32(floats).dtype == np.float32
  with pytest.raises(ValueError, match="uint8"):
    images_lib.to_float32(np.array([1], np.int32))
