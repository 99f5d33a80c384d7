"""tiered-ImageNet in Ren et al.'s PNG-pickle format and the decompressed .npz variant, generated in tmp_path."""

import pickle

import fake_data
import numpy as np
import pytest

from metalax.data import tiered_imagenet


def _images(labels, size=16, seed=0):
  """Red = label, green = position in the file, blue random."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (len(labels), size, size, 3), dtype=np.uint8)
  images[..., 0] = np.asarray(labels)[:, None, None]
  images[..., 1] = np.arange(len(labels))[:, None, None]
  return images


def _write_labels(path, labels, names=True):
  data = {b"label_specific": np.asarray(labels, np.int32), b"label_general": np.zeros(len(labels), np.int32)}
  if names:
    data[b"label_specific_str"] = ["tench", "goldfish", "shark"]
    data[b"label_general_str"] = ["fish"]
  with open(path, "wb") as file:
    pickle.dump(data, file, protocol=2)


def test_png_pickle(tmp_path):
  labels = [0, 0, 1, 1, 1, 2]
  images = _images(labels)
  # cv2.imencode returns [bytes, 1] uint8 arrays; the release pickles a list of them.
  encoded = [np.frombuffer(fake_data.png_bytes(image), np.uint8).reshape(-1, 1) for image in images]
  with open(tmp_path / "test_images_png.pkl", "wb") as file:
    pickle.dump(encoded, file, protocol=2)
  _write_labels(tmp_path / "test_labels.pkl", labels)
  cache = tmp_path / "cache"
  data = tiered_imagenet.load_tiered_imagenet(tmp_path, "test", cache_dir=cache)
  assert data.class_names == ("tench", "goldfish", "shark") and data.class_offsets == (0, 2, 5, 6)
  np.testing.assert_array_equal(data.images, images)  # PNG is lossless
  assert len(list(cache.glob("tiered_imagenet_test_*.npz"))) == 1
  floats = tiered_imagenet.load_tiered_imagenet(tmp_path, "test", cache_dir=cache, dtype=np.float32)
  np.testing.assert_allclose(floats.images, images / 255, rtol=1e-6)


def test_npz_variant_is_bgr_and_grouped(tmp_path):
  labels = [2, 0, 2, 1, 0]  # MetaOptNet's copy: a plain "labels" list, any order
  images = _images(labels)
  np.savez(tmp_path / "val_images.npz", images=images[..., ::-1])  # as cv2 writes them
  with open(tmp_path / "val_labels.pkl", "wb") as file:
    pickle.dump({"labels": labels}, file)
  data = tiered_imagenet.load_tiered_imagenet(tmp_path, "validation")
  assert data.class_names == ("0", "1", "2") and data.class_offsets == (0, 2, 3, 5)
  np.testing.assert_array_equal(data.images, images[[1, 4, 3, 0, 2]])  # stable within a class
  as_stored = tiered_imagenet.load_tiered_imagenet(tmp_path, "validation", npz_bgr=False)
  np.testing.assert_array_equal(as_stored.images, images[[1, 4, 3, 0, 2]][..., ::-1])


def test_errors(tmp_path, monkeypatch):
  monkeypatch.setenv("METALAX_DATA_DIR", str(tmp_path))
  with pytest.raises(FileNotFoundError) as error:
    tiered_imagenet.load_tiered_imagenet(split="train")
  for part in ("tiered-ImageNet not found", "train_labels.pkl", "train_images_png.pkl", "train_images.npz",
               str(tmp_path / "tiered_imagenet"), "no stable public URL"):
    assert part in str(error.value), part
  folder = tmp_path / "tiered_imagenet"
  folder.mkdir()
  np.savez(folder / "train_images.npz", images=np.zeros((3, 4, 4, 3), np.uint8))
  with open(folder / "train_labels.pkl", "wb") as file:
    pickle.dump({"labels": [0, 1]}, file)
  with pytest.raises(ValueError, match="has 3 images but .*train_labels.pkl has 2 labels"):
    tiered_imagenet.load_tiered_imagenet(folder, "train")
  with open(folder / "train_labels.pkl", "wb") as file:
    pickle.dump({"classes": [0, 1, 2]}, file)
  with pytest.raises(ValueError, match="'label_specific' \\(Ren et al.\\) or 'labels'"):
    tiered_imagenet.load_tiered_imagenet(folder, "train")
  (folder / "train_images_png.pkl").write_bytes(pickle.dumps([np.frombuffer(b"not a png", np.uint8)]))
  with open(folder / "train_labels.pkl", "wb") as file:
    pickle.dump({"labels": [0]}, file)
  with pytest.raises(ValueError, match="cannot read image .*train_images_png.pkl\\[0\\]"):
    tiered_imagenet.load_tiered_imagenet(folder, "train", use_cache=False)


@fake_data.needs_real_data("tiered_imagenet")
def test_real_files():
  data = tiered_imagenet.load_tiered_imagenet(fake_data.real_data("tiered_imagenet"), "validation")
  assert data.num_classes == 97 and data.images.shape == (124261, 84, 84, 3)
