"""mini-ImageNet in both published layouts (pickle cache; images/ + CSV), generated in tmp_path."""

import csv
import pickle

import fake_data
import numpy as np
from PIL import Image
import pytest

from metalax.data import mini_imagenet
from metalax.data import _io

# Ravi & Larochelle's test classes, written out here as an independent reference.
RAVI_TEST = {"n01930112", "n01981276", "n02099601", "n02110063", "n02110341", "n02116738", "n02129165",
             "n02219486", "n02443484", "n02871525", "n03127925", "n03146219", "n03272010", "n03544143",
             "n03775546", "n04146614", "n04149813", "n04418357", "n04522168", "n07613480"}
RAVI_VALIDATION = {"n01855672", "n02091244", "n02114548", "n02138441", "n02174001", "n02950826", "n02971356",
                   "n02981792", "n03075370", "n03417042", "n03535780", "n03584254", "n03770439", "n03773504",
                   "n03980874", "n09256479"}


def _images(classes, per_class, size=84, seed=0):
  """``[len(classes) * per_class, size, size, 3]``: red = class index, green = image index."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (len(classes) * per_class, size, size, 3), dtype=np.uint8)
  images[..., 0] = np.repeat(np.arange(len(classes)), per_class)[:, None, None]
  images[..., 1] = np.tile(np.arange(per_class), len(classes))[:, None, None]
  return images


def _write_pickle(folder, file_split, classes, per_class, byte_keys=False):
  images = _images(classes, per_class)
  order = np.random.default_rng(1).permutation(len(images))  # the file's image order is arbitrary
  inverse = np.argsort(order)
  class_dict = {name: [int(inverse[c * per_class + k]) for k in range(per_class)]
                for c, name in enumerate(classes)}
  data = {"image_data": images[order], "class_dict": class_dict}
  if byte_keys:  # as a Python 2 pickle read with encoding="bytes" would show them
    data = {b"image_data": data["image_data"], b"class_dict": {k.encode(): v for k, v in class_dict.items()}}
  with open(folder / f"mini-imagenet-cache-{file_split}.pkl", "wb") as file:
    pickle.dump(data, file, protocol=2 if byte_keys else pickle.HIGHEST_PROTOCOL)
  return images


def test_split_files_are_ravis():
  splits = {split: _io.read_split("mini_imagenet", split) for split in ("train", "validation", "test")}
  assert set(splits["test"]) == RAVI_TEST and set(splits["validation"]) == RAVI_VALIDATION
  assert len(splits["train"]) == 64 and len(set(sum(splits.values(), ()))) == 100
  assert all(list(names) == sorted(names) for names in splits.values())


@pytest.mark.parametrize("byte_keys", [False, True])
def test_pickle_layout(tmp_path, byte_keys):
  classes = sorted(RAVI_TEST)
  images = _write_pickle(tmp_path, "test", classes, 3, byte_keys)
  data = mini_imagenet.load_mini_imagenet(tmp_path, "test")
  assert data.images.shape == (20, 3, 84, 84, 3) and data.images.dtype == np.uint8
  assert data.class_names == tuple(classes)
  np.testing.assert_array_equal(data.images, images.reshape(20, 3, 84, 84, 3))
  small = mini_imagenet.load_mini_imagenet(tmp_path, "test", image_size=21, dtype=np.float32)
  assert small.images.shape == (20, 3, 21, 21, 3) and small.images.dtype == np.float32
  reference = np.asarray(Image.fromarray(images[4]).resize((21, 21), Image.Resampling.LANCZOS)) / 255
  np.testing.assert_allclose(small.images[1, 1], reference, rtol=1e-6)


def test_pickle_with_other_classes(tmp_path):
  _write_pickle(tmp_path, "val", sorted(RAVI_TEST)[:16], 1)
  with pytest.raises(ValueError, match="does not hold Ravi & Larochelle's 16 validation classes"):
    mini_imagenet.load_mini_imagenet(tmp_path, "validation")
  with open(tmp_path / "mini-imagenet-cache-val.pkl", "wb") as file:
    pickle.dump({"images": np.zeros(3)}, file)
  with pytest.raises(ValueError, match="must be a dict with 'image_data' and 'class_dict'"):
    mini_imagenet.load_mini_imagenet(tmp_path, "validation")
  (tmp_path / "mini-imagenet-cache-val.pkl").write_bytes(b"\x80\x04truncated")
  with pytest.raises(ValueError, match="not a readable dataset pickle"):
    mini_imagenet.load_mini_imagenet(tmp_path, "validation")


def test_csv_layout(tmp_path):
  classes = sorted(RAVI_VALIDATION)
  (tmp_path / "images").mkdir()
  rows, expected = [], []
  for c, name in enumerate(classes):
    for k in range(2):
      array = np.zeros((84, 84, 3), np.uint8)
      array[..., 0], array[..., 1] = 10 * c, 100 + 50 * k
      file_name = f"{name}{k + 1:08d}.jpg"
      Image.fromarray(array).save(tmp_path / "images" / file_name, quality=95)
      rows.append([file_name, name])
      expected.append(np.asarray(Image.open(tmp_path / "images" / file_name).convert("RGB")))
  with open(tmp_path / "val.csv", "w", newline="") as file:
    csv.writer(file).writerows([["filename", "label"]] + rows[::-1])  # row order within a class is kept
  cache = tmp_path / "cache"
  data = mini_imagenet.load_mini_imagenet(tmp_path, "validation", cache_dir=cache)
  assert data.images.shape == (16, 2, 84, 84, 3) and data.class_names == tuple(classes)
  np.testing.assert_array_equal(data.images[:, ::-1].reshape(-1, 84, 84, 3), np.stack(expected))
  assert len(list(cache.glob("mini_imagenet_val_*.npz"))) == 1
  again = mini_imagenet.load_mini_imagenet(tmp_path, "validation", cache_dir=cache)
  np.testing.assert_array_equal(again.images, data.images)
  (tmp_path / "images" / rows[0][0]).unlink()
  with pytest.raises(FileNotFoundError, match="1 images named in .*val.csv are missing"):
    mini_imagenet.load_mini_imagenet(tmp_path, "validation", use_cache=False)


def test_missing_says_what_to_place_where(tmp_path, monkeypatch):
  monkeypatch.setenv("METALAX_DATA_DIR", str(tmp_path))
  with pytest.raises(FileNotFoundError) as error:
    mini_imagenet.load_mini_imagenet(split="train")
  text = str(error.value)
  for part in ("mini-ImageNet not found", "mini-imagenet-cache-train.pkl", "'image_data' uint8 [N, 84, 84, 3]",
               "train.csv", "images/", str(tmp_path / "mini_imagenet"), "$METALAX_DATA_DIR",
               "no stable public URL"):
    assert part in text, (part, text)
  with pytest.raises(ValueError, match="split must be one of"):
    mini_imagenet.load_mini_imagenet(tmp_path, "val")


@fake_data.needs_real_data("mini_imagenet")
def test_real_files():
  folder = fake_data.real_data("mini_imagenet")
  for split, count in (("validation", 16), ("test", 20)):
    data = mini_imagenet.load_mini_imagenet(folder, split)
    assert data.images.shape == (count, 600, 84, 84, 3)
