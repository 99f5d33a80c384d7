"""The NYUv2 and Cityscapes loaders on generated files in the MTAN/LibMTL .npy layout."""

import os

import numpy as np
import pytest

from metalax import data


def _write(root, split, num, size, tasks, num_classes, seed=0):
  rng = np.random.default_rng(seed)
  arrays = {task: [] for task in tasks}
  h, w = size
  for i in range(num):
    made = {
        "image": rng.uniform(0, 1, (h, w, 3)).astype(np.float32),
        "label": rng.integers(-1, num_classes, (h, w)).astype(np.float32),  # floats, as the archives
        "depth": (rng.uniform(0.5, 5, (h, w, 1)) * (rng.random((h, w, 1)) < 0.8)).astype(np.float32),
        "normal": rng.normal(size=(h, w, 3)).astype(np.float32),
    }
    for task in tasks:
      folder = os.path.join(root, split, task)
      os.makedirs(folder, exist_ok=True)
      np.save(os.path.join(folder, f"{i}.npy"), made[task])
      arrays[task].append(made[task])
  return {task: np.stack(a) for task, a in arrays.items()}


def test_nyuv2_loads_the_layout(tmp_path):
  tasks = ("image", "label", "depth", "normal")
  train = _write(tmp_path, "train", 3, (4, 6), tasks, 13)
  val = _write(tmp_path, "val", 2, (4, 6), tasks, 13, seed=1)
  loaded = data.load_nyuv2(tmp_path, "train")
  np.testing.assert_array_equal(loaded.images, train["image"])
  np.testing.assert_array_equal(loaded.segmentation, train["label"].astype(np.int32))
  assert loaded.segmentation.dtype == np.int32 and loaded.images.dtype == np.float32
  np.testing.assert_array_equal(loaded.depth, train["depth"])
  np.testing.assert_array_equal(loaded.normals, train["normal"])
  subset = data.load_nyuv2(tmp_path, "test", indices=[1])  # test: the val folder
  np.testing.assert_array_equal(subset.images, val["image"][1:2])
  with pytest.raises(ValueError, match="indices"):
    data.load_nyuv2(tmp_path, "val", indices=[2])
  with pytest.raises(ValueError, match="split"):
    data.load_nyuv2(tmp_path, "dev")


def test_cityscapes_loads_the_layout_and_validates(tmp_path):
  tasks = ("image", "label", "depth")
  train = _write(tmp_path, "train", 2, (3, 5), tasks, 7)
  loaded = data.load_cityscapes(tmp_path)
  assert loaded.normals is None
  np.testing.assert_array_equal(loaded.depth, train["depth"])
  with pytest.raises(FileNotFoundError, match="val"):
    data.load_cityscapes(tmp_path, "val")
  # Labels outside [-1, 7), a gap in the numbering, a mismatched size, a corrupt file.
  np.save(tmp_path / "train" / "label" / "1.npy", np.full((3, 5), 7.0, np.float32))
  with pytest.raises(ValueError, match=r"\[-1, 7\)"):
    data.load_cityscapes(tmp_path)
  np.save(tmp_path / "train" / "label" / "1.npy", np.zeros((3, 5), np.float32))
  np.save(tmp_path / "train" / "depth" / "1.npy", np.zeros((4, 5, 1), np.float32))
  with pytest.raises(ValueError, match="differ in size|one shape"):
    data.load_cityscapes(tmp_path)
  os.rename(tmp_path / "train" / "depth" / "1.npy", tmp_path / "train" / "depth" / "5.npy")
  with pytest.raises(ValueError, match="without gaps"):
    data.load_cityscapes(tmp_path)
  os.rename(tmp_path / "train" / "depth" / "5.npy", tmp_path / "train" / "depth" / "1.npy")
  (tmp_path / "train" / "image" / "0.npy").write_bytes(b"not a numpy file")
  with pytest.raises(ValueError, match="not a readable"):
    data.load_cityscapes(tmp_path)
