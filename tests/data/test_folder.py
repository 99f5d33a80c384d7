"""load_image_folder and load_npz on generated files."""

import numpy as np
from PIL import Image
import pytest

from metalax.data import folder
from metalax.data.images import ClassImages
from metalax.data.images import RaggedClassImages


def _write(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def test_image_folder_rgb(tmp_path):
  rgb = {name: [np.full((6, 6, 3), 10 * i + k, np.uint8) for k in range(2 + i)]
         for i, name in enumerate(("dog", "cat"))}
  for name, arrays in rgb.items():
    for k, array in enumerate(arrays):
      _write(tmp_path / name / f"{k:03d}.png", array)
  _write(tmp_path / "cat" / "zz.PNG", np.full((6, 6), 200, np.uint8))  # a grayscale image among RGB ones
  (tmp_path / "cat" / "notes.txt").write_text("not an image")
  (tmp_path / "cat" / ".hidden.png").write_bytes(b"junk")
  (tmp_path / ".git").mkdir()
  (tmp_path / "empty").mkdir()
  (tmp_path / "README").write_text("x")
  data = folder.load_image_folder(tmp_path)
  assert isinstance(data, RaggedClassImages)
  assert data.class_names == ("cat", "dog") and data.class_offsets == (0, 4, 6)
  assert data.image_shape == (6, 6, 3) and data.images.dtype == np.uint8
  np.testing.assert_array_equal(data.images_of_class(0)[:3], np.stack(rgb["cat"]))
  np.testing.assert_array_equal(data.images_of_class(0)[3], np.full((6, 6, 3), 200))
  np.testing.assert_array_equal(data.images_of_class(1), np.stack(rgb["dog"]))
  floats = folder.load_image_folder(tmp_path, dtype=np.float32)
  np.testing.assert_allclose(floats.images, data.images / 255, rtol=1e-6)


def test_image_folder_grayscale_and_resize(tmp_path):
  _write(tmp_path / "a" / "1.png", np.zeros((8, 10), np.uint8))
  _write(tmp_path / "b" / "1.jpg", np.full((12, 12), 255, np.uint8))
  with pytest.raises(ValueError, match="differ in size.*pass image_size"):
    folder.load_image_folder(tmp_path)
  data = folder.load_image_folder(str(tmp_path), image_size=4)
  assert data.images.shape == (2, 4, 4, 1)
  reference = np.asarray(Image.open(tmp_path / "a" / "1.png").resize((4, 4), Image.Resampling.LANCZOS))
  np.testing.assert_array_equal(data.images[0, ..., 0], reference)


def test_image_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="one subfolder of images per class"):
    folder.load_image_folder(tmp_path / "nowhere")
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "x.txt").write_text("x")
  with pytest.raises(ValueError, match="has no subfolder holding images"):
    folder.load_image_folder(tmp_path)
  (tmp_path / "a" / "x.png").write_bytes(b"not a png")
  with pytest.raises(ValueError, match="cannot read image .*x.png"):
    folder.load_image_folder(tmp_path)
  with pytest.raises(ValueError, match="image_size"):
    folder.load_image_folder(tmp_path, image_size=-1)


def test_npz_labelled(tmp_path):
  images = np.arange(5 * 2 * 2, dtype=np.uint8).reshape(5, 2, 2)
  labels = np.array([2, 0, 2, 1, 0])
  np.savez(tmp_path / "d.npz", images=images, labels=labels, class_names=np.array(["zero", "one", "two"]))
  data = folder.load_npz(tmp_path / "d.npz")
  assert isinstance(data, RaggedClassImages) and data.class_names == ("zero", "one", "two")
  assert data.class_offsets == (0, 2, 3, 5)
  np.testing.assert_array_equal(data.images[..., 0], images[[1, 4, 3, 0, 2]])
  floats = folder.load_npz(tmp_path / "d.npz", dtype=np.float32)
  np.testing.assert_allclose(floats.images, data.images / 255, rtol=1e-6)


def test_npz_grouped(tmp_path):
  images = np.random.default_rng(0).random((3, 4, 5, 5, 3)).astype(np.float32)
  np.savez(tmp_path / "d.npz", images=images)
  data = folder.load_npz(tmp_path / "d.npz", dtype=np.float32)
  assert isinstance(data, ClassImages) and data.class_names == ("0", "1", "2")
  np.testing.assert_array_equal(data.images, images)
  as_uint8 = folder.load_npz(tmp_path / "d.npz")
  np.testing.assert_array_equal(as_uint8.images, np.round(images * 255).astype(np.uint8))


def test_npz_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="'images' \\[num_classes, num_per_class, H, W, C\\]"):
    folder.load_npz(tmp_path / "none.npz")
  np.savez(tmp_path / "a.npz", x=np.zeros(3))
  with pytest.raises(ValueError, match="has no 'images' array; it has \\['x'\\]"):
    folder.load_npz(tmp_path / "a.npz")
  np.savez(tmp_path / "b.npz", images=np.zeros((2, 3), np.uint8))
  with pytest.raises(ValueError, match="images must be \\[num_classes, num_per_class, H, W, C\\]"):
    folder.load_npz(tmp_path / "b.npz")
  np.savez(tmp_path / "c.npz", images=np.zeros((2, 3, 3, 1), np.uint8), labels=np.array([0, 1, 1]))
  with pytest.raises(ValueError, match="labels must have shape \\[N\\] = \\[2\\]"):
    folder.load_npz(tmp_path / "c.npz")
  np.savez(tmp_path / "e.npz", images=np.array([object()] * 2, dtype=object))
  with pytest.raises(ValueError, match="not a readable .npz"):
    folder.load_npz(tmp_path / "e.npz")
  (tmp_path / "f.npz").write_bytes(b"PK\x03\x04 truncated")
  with pytest.raises(ValueError, match="not a readable .npz"):
    folder.load_npz(tmp_path / "f.npz")
