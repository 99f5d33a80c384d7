"""CUB-200-2011 with Chen et al.'s split, on a generated CUB_200_2011.tgz (and the real one when present)."""

import os
import tarfile

import fake_data
import numpy as np
from PIL import Image
import pytest

from metalax.data import cub
from metalax.data import download


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
  members, images = fake_data.cub_members()
  folder = tmp_path_factory.mktemp("cub")
  (folder / cub.ARCHIVE).write_bytes(fake_data.tar_gz(members))
  return folder, images


def _reference(image: np.ndarray, size: int) -> np.ndarray:
  return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))


def test_chen_rule():
  assert cub.chen_split(200, "train") == list(range(0, 200, 2))
  assert cub.chen_split(200, "validation") == list(range(1, 200, 4))
  assert cub.chen_split(200, "test") == list(range(3, 200, 4))
  assert [len(cub.chen_split(200, s)) for s in ("train", "validation", "test")] == [100, 50, 50]
  every = sorted(sum((cub.chen_split(200, s) for s in ("train", "validation", "test")), []))
  assert every == list(range(200))


def test_splits_order_and_pixels(archive, tmp_path):
  folder, images = archive
  names = fake_data.CUB_CLASSES
  for split, indices in (("train", [0, 2, 4, 6]), ("validation", [1, 5]), ("test", [3, 7])):
    data = cub.load_cub(folder, split, image_size=10, download=False, cache_dir=tmp_path)
    assert data.class_names == tuple(names[i] for i in indices)
    assert data.image_shape == (10, 10, 3) and data.images.dtype == np.uint8
    for c, i in enumerate(indices):
      expected = np.stack([_reference(image, 10) for image in images[names[i]]])
      np.testing.assert_array_equal(data.images_of_class(c), expected)
  test = cub.load_cub(folder, "test", image_size=10, download=False, cache_dir=tmp_path)
  assert test.class_offsets == (0, 3, 6)  # class 3 (3 images, one grayscale) and class 7 (3)
  gray = test.images_of_class(0)[0]
  assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
  assert len(list(tmp_path.glob("cub_10px_*.npz"))) == 1  # one decode for all three splits
  floats = cub.load_cub(folder, "test", image_size=10, dtype=np.float32, download=False, cache_dir=tmp_path)
  np.testing.assert_allclose(floats.images, test.images / 255, rtol=1e-6)


def test_cache_is_used(archive, tmp_path, monkeypatch):
  folder, _ = archive
  first = cub.load_cub(folder, "train", image_size=6, download=False, cache_dir=tmp_path)

  def fail(*args):
    raise AssertionError("decoded again instead of reading the cache")

  monkeypatch.setattr(cub, "_decode_all", fail)
  second = cub.load_cub(folder, "train", image_size=6, download=False, cache_dir=tmp_path)
  np.testing.assert_array_equal(first.images, second.images)
  assert first.class_offsets == second.class_offsets and first.class_names == second.class_names


def test_extracted_folder(archive, tmp_path, monkeypatch):
  folder, _ = archive
  with tarfile.open(folder / cub.ARCHIVE) as tar:
    tar.extractall(tmp_path / "cub", filter="data")
  monkeypatch.setenv("METALAX_DATA_DIR", str(tmp_path))
  extracted = cub.load_cub(split="validation", image_size=10, download=False, use_cache=False)
  packed = cub.load_cub(folder, "validation", image_size=10, download=False, use_cache=False)
  np.testing.assert_array_equal(extracted.images, packed.images)
  assert extracted.class_names == packed.class_names


def test_download_on_first_use(archive, http_server, tmp_path, monkeypatch):
  folder, _ = archive
  body = (folder / cub.ARCHIVE).read_bytes()
  http_server.routes["/cub.tgz"] = (body, None)
  monkeypatch.setitem(download.RESOURCES, "cub", (download.Resource(
      cub.ARCHIVE, (http_server.url("/cub.tgz"),), fake_data.sha256(body), len(body)),))
  data = cub.load_cub(tmp_path / "c", "test", image_size=8, use_cache=False)
  assert data.num_classes == 2 and os.listdir(tmp_path / "c") == [cub.ARCHIVE]


def test_errors(archive, tmp_path):
  folder, _ = archive
  with pytest.raises(FileNotFoundError) as error:
    cub.load_cub(tmp_path, download=False)
  for part in ("CUB-200-2011 not found", "CUB_200_2011.tgz (or the CUB_200_2011/ folder", "data.caltech.edu",
               "0c685df5", "METALAX_DATA_DIR"):
    assert part in str(error.value)
  with pytest.raises(ValueError, match="split must be one of"):
    cub.load_cub(folder, "novel")
  with pytest.raises(ValueError, match="image_size"):
    cub.load_cub(folder, image_size=0)
  body = (folder / cub.ARCHIVE).read_bytes()
  for cut in (len(body) // 2, len(body) - 30):  # the second one ends inside the last members
    (tmp_path / cub.ARCHIVE).write_bytes(body[:cut])
    with pytest.raises(ValueError, match="not a readable tar.gz archive"):
      cub.load_cub(tmp_path, download=False, use_cache=False)
  (tmp_path / cub.ARCHIVE).write_bytes(fake_data.tar_gz({"CUB_200_2011/README": b"x"}))
  with pytest.raises(ValueError, match="holds no images"):
    cub.load_cub(tmp_path, download=False, use_cache=False)
  (tmp_path / cub.ARCHIVE).write_bytes(fake_data.tar_gz({"CUB_200_2011/images/001.A/a.jpg": b"not a jpeg"}))
  with pytest.raises(ValueError, match="cannot read image .*001.A/a.jpg"):
    cub.load_cub(tmp_path, download=False, use_cache=False)


@fake_data.needs_real_data("cub")
def test_real_archive(tmp_path):
  folder = fake_data.real_data("cub")
  counts = {}
  for split in ("train", "validation", "test"):
    data = cub.load_cub(folder, split, download=False, cache_dir=tmp_path)
    counts[split] = data.num_classes
    assert data.image_shape == (84, 84, 3)
  assert counts == {"train": 100, "validation": 50, "test": 50}
  assert data.class_names[0] == "004.Groove_billed_Ani"
