"""Tests for metalax.data.mnist: fake IDX files, then the real files."""

import gzip

import fake_data
import numpy as np
import pytest

from metalax.data import mnist
from metalax.data.images import RaggedClassImages

REAL_DATA = fake_data.real_data("mnist")


def _idx(array: np.ndarray, type_code: int = 0x08) -> bytes:
  header = bytes([0, 0, type_code, array.ndim])
  header += b"".join(int(size).to_bytes(4, "big") for size in array.shape)
  dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[type_code]
  return header + array.astype(dtype).tobytes()


def _write(path, data: bytes, compress: bool = True):
  if compress:
    with gzip.open(path, "wb") as file:
      file.write(data)
  else:
    path.write_bytes(data)
  return path


@pytest.fixture
def fake_dir(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
  labels = np.array([3, 1, 3, 0, 9, 1, 3], np.uint8)
  for prefix in ("train", "t10k"):
    _write(tmp_path / f"{prefix}-images-idx3-ubyte.gz", _idx(images))
    _write(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", _idx(labels))
  return tmp_path, images, labels


class TestReadIdx:

  def test_round_trip_types(self, tmp_path):
    values = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    path = _write(tmp_path / "ints.idx.gz", _idx(values, 0x0C))
    read = mnist.read_idx(path)
    np.testing.assert_array_equal(read, values)
    assert read.dtype == np.int32 and read.dtype.isnative
    floats = np.linspace(0, 1, 5, dtype=np.float32)
    np.testing.assert_array_equal(
        mnist.read_idx(_write(tmp_path / "floats.idx", _idx(floats, 0x0D), compress=False)),
        floats)

  def test_truncated_data(self, tmp_path):
    data = _idx(np.zeros((10, 28, 28), np.uint8))
    path = _write(tmp_path / "short.gz", data[:-100])
    with pytest.raises(ValueError, match="truncated: the header announces shape \\(10, 28, 28\\)"):
      mnist.read_idx(path)

  def test_too_long(self, tmp_path):
    path = _write(tmp_path / "long.gz", _idx(np.zeros(4, np.uint8)) + b"\0")
    with pytest.raises(ValueError, match="too long"):
      mnist.read_idx(path)

  def test_truncated_header(self, tmp_path):
    path = _write(tmp_path / "header.gz", _idx(np.zeros((2, 2), np.uint8))[:9])
    with pytest.raises(ValueError, match="the header needs 12"):
      mnist.read_idx(path)
    with pytest.raises(ValueError, match="fewer than the 4-byte IDX magic"):
      mnist.read_idx(_write(tmp_path / "tiny.gz", b"\0\0"))

  def test_truncated_gzip(self, tmp_path):
    path = tmp_path / "cut.gz"
    _write(path, _idx(np.arange(5000, dtype=np.uint8) % 7))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match="not a complete gzip file \\(truncated or corrupt"):
      mnist.read_idx(path)

  def test_not_gzip(self, tmp_path):
    path = tmp_path / "plain.gz"
    path.write_bytes(b"<html>not gzip</html>")
    with pytest.raises(ValueError, match="not a complete gzip file"):
      mnist.read_idx(path)

  def test_bad_magic(self, tmp_path):
    path = _write(tmp_path / "magic.gz", b"\x1f\x8b\x08\x03" + bytes(8))
    with pytest.raises(ValueError, match="is not an IDX file: magic number"):
      mnist.read_idx(path)

  def test_missing(self, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.gz"):
      mnist.read_idx(tmp_path / "nothing.gz")


class TestLoadMnist:

  def test_fake_files(self, fake_dir):
    data_dir, images, labels = fake_dir
    read_images, read_labels = mnist.load_mnist(data_dir, "test")
    assert read_images.shape == (7, 28, 28, 1) and read_images.dtype == np.uint8
    assert read_labels.dtype == np.int32
    np.testing.assert_array_equal(read_images[..., 0], images)
    np.testing.assert_array_equal(read_labels, labels)

  def test_class_images(self, fake_dir):
    data_dir, images, labels = fake_dir
    data = mnist.mnist_class_images(data_dir, "train")
    assert isinstance(data, RaggedClassImages)
    assert data.class_names == ("0", "1", "3", "9")
    assert data.class_offsets == (0, 1, 3, 6, 7)
    assert data.images.dtype == np.float32
    np.testing.assert_allclose(data.images_of_class(2)[..., 0], images[[0, 2, 6]] / 255, rtol=1e-6)
    assert mnist.mnist_class_images(data_dir, "train", dtype=np.uint8).images.dtype == np.uint8

  def test_uncompressed_files(self, fake_dir):
    data_dir, images, labels = fake_dir
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
      gz = data_dir / (name + ".gz")
      (data_dir / name).write_bytes(gzip.decompress(gz.read_bytes()))
      gz.unlink()
    np.testing.assert_array_equal(mnist.load_mnist(data_dir, "test")[1], labels)

  def test_missing_file(self, fake_dir):
    data_dir, _, _ = fake_dir
    (data_dir / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="expected train-labels-idx1-ubyte.gz in"):
      mnist.load_mnist(data_dir, "train", download=False)

  def test_swapped_files(self, fake_dir):
    data_dir, _, _ = fake_dir
    images = data_dir / "train-images-idx3-ubyte.gz"
    labels = data_dir / "train-labels-idx1-ubyte.gz"
    content = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
      mnist.load_mnist(data_dir, "train")
    images.write_bytes(content)
    labels.write_bytes(content)
    with pytest.raises(ValueError, match="magic number 2051, expected 2049"):
      mnist.load_mnist(data_dir, "train")

  def test_inconsistent_files(self, fake_dir):
    data_dir, images, _ = fake_dir
    _write(data_dir / "train-labels-idx1-ubyte.gz", _idx(np.zeros(6, np.uint8)))
    with pytest.raises(ValueError, match="7 images but 6 labels"):
      mnist.load_mnist(data_dir, "train")
    _write(data_dir / "train-labels-idx1-ubyte.gz", _idx(np.full(7, 10, np.uint8)))
    with pytest.raises(ValueError, match="labels must be in \\[0, 10\\)"):
      mnist.load_mnist(data_dir, "train")
    _write(data_dir / "train-images-idx3-ubyte.gz", _idx(np.zeros((7, 32, 32), np.uint8)))
    with pytest.raises(ValueError, match="must be 28x28"):
      mnist.load_mnist(data_dir, "train")

  def test_bad_split_and_dtype(self, fake_dir):
    with pytest.raises(ValueError, match="split must be one of"):
      mnist.load_mnist(fake_dir[0], "validation")
    with pytest.raises(ValueError, match="dtype"):
      mnist.mnist_class_images(fake_dir[0], dtype=np.int16)


@fake_data.needs_real_data("mnist")
class TestRealData:

  def test_splits(self):
    images, labels = mnist.load_mnist(REAL_DATA, "train", download=False)
    assert images.shape == (60000, 28, 28, 1) and labels.shape == (60000,)
    np.testing.assert_array_equal(
        np.bincount(labels), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    assert images.max() == 255 and images.min() == 0
    assert (images[:, 0, 0, 0] == 0).all()  # black background, white digit
    test = mnist.mnist_class_images(REAL_DATA, "test", dtype=np.uint8, download=False)
    np.testing.assert_array_equal(
        test.counts, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert test.class_names == tuple(str(digit) for digit in range(10))
