"""CIFAR-FS and FC100 on a generated cifar-100-python.tar.gz (and the real one when METALAX_DATA_DIR has it)."""

import os
import pickle
import tarfile

import fake_data
import numpy as np
import pytest

from metalax.data import cifar
from metalax.data import download

# Published splits, written out here as an independent reference: CIFAR-FS val/test from the R2D2
# split files (as shipped by Torchmeta), FC100 superclasses from Oreshkin et al. (2018).
CIFAR_FS_VALIDATION = {"beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly",
                       "sea", "camel", "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor"}
CIFAR_FS_TEST = {"whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe", "leopard",
                 "plain", "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman", "bicycle",
                 "pickup_truck", "rocket"}
FC100 = {"train": {1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19}, "validation": {8, 11, 13, 16}, "test": {0, 7, 12, 14}}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
  members, images, fine = fake_data.cifar100_members()
  folder = tmp_path_factory.mktemp("cifar100")
  (folder / cifar.ARCHIVE).write_bytes(fake_data.tar_gz(members))
  return folder, images, fine


def test_cifar_fs_splits(archive):
  folder, images, fine = archive
  splits = {split: cifar.load_cifar_fs(folder, split, download=False)
            for split in ("train", "validation", "test")}
  assert [splits[s].num_classes for s in ("train", "validation", "test")] == [64, 16, 20]
  assert set(splits["validation"].class_names) == CIFAR_FS_VALIDATION
  assert set(splits["test"].class_names) == CIFAR_FS_TEST
  every = [name for data in splits.values() for name in data.class_names]
  assert sorted(every) == sorted(fake_data.CIFAR100_FINE)
  test = splits["test"]
  assert test.images.shape == (20, 3, 32, 32, 3) and test.images.dtype == np.uint8
  for c, name in enumerate(test.class_names):
    label = fake_data.CIFAR100_FINE.index(name)
    assert (test.images[c, ..., 0] == label).all()
    # The two train images (green 0 and 1) in archive order, then the test image (green 100).
    green = test.images[c, :, 0, 0, 1]
    assert sorted(green[:2]) == [0, 1] and green[2] == 100
    np.testing.assert_array_equal(test.images[c], images[fine == label])
  floats = cifar.load_cifar_fs(folder, "test", dtype=np.float32, download=False)
  np.testing.assert_allclose(floats.images, test.images / 255, rtol=1e-6)


def test_fc100_splits(archive):
  folder, images, fine = archive
  for split, superclasses in FC100.items():
    data = cifar.load_fc100(folder, split, download=False)
    expected = [f"{fake_data.CIFAR100_COARSE[s]}/{name}" for s in sorted(superclasses)
                for name in fake_data.CIFAR100_SUPERCLASSES[fake_data.CIFAR100_COARSE[s]]]
    assert sorted(data.class_names) == sorted(expected) and data.num_classes == 5 * len(superclasses)
    for c, name in enumerate(data.class_names):
      label = fake_data.CIFAR100_FINE.index(name.split("/")[1])
      np.testing.assert_array_equal(data.images[c], images[fine == label])
  test = cifar.load_fc100(folder, "test", download=False)
  assert test.class_names[:5] == tuple(f"aquatic_mammals/{n}" for n in ("beaver", "dolphin", "otter", "seal",
                                                                         "whale"))


def test_extracted_folder_and_environment(archive, tmp_path, monkeypatch):
  folder, _, _ = archive
  with tarfile.open(folder / cifar.ARCHIVE) as tar:
    tar.extractall(tmp_path / "cifar100", filter="data")
  monkeypatch.setenv("METALAX_DATA_DIR", str(tmp_path))
  data = cifar.load_cifar_fs(split="validation", download=False)
  np.testing.assert_array_equal(data.images, cifar.load_cifar_fs(folder, "validation", download=False).images)


def test_download_on_first_use(archive, http_server, tmp_path, monkeypatch):
  folder, _, _ = archive
  body = (folder / cifar.ARCHIVE).read_bytes()
  http_server.routes["/cifar"] = (body, None)
  monkeypatch.setitem(download.RESOURCES, "cifar100", (download.Resource(
      cifar.ARCHIVE, (http_server.url("/cifar"),), fake_data.sha256(body), len(body)),))
  assert cifar.load_fc100(tmp_path / "c", "validation").num_classes == 20
  assert os.listdir(tmp_path / "c") == [cifar.ARCHIVE]


def test_errors(archive, tmp_path):
  folder, _, _ = archive
  with pytest.raises(FileNotFoundError) as error:
    cifar.load_cifar_fs(tmp_path, download=False)
  for part in ("CIFAR-100 (python version) not found", "cifar-100-python.tar.gz (or the cifar-100-python/ folder",
               "www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "85cd44d0", "METALAX_DATA_DIR"):
    assert part in str(error.value)
  with pytest.raises(ValueError, match="split must be one of"):
    cifar.load_cifar_fs(folder, "val")
  with pytest.raises(ValueError, match="dtype"):
    cifar.load_fc100(folder, dtype=np.int32)
  truncated = tmp_path / "t"
  truncated.mkdir()
  body = (folder / cifar.ARCHIVE).read_bytes()
  (truncated / cifar.ARCHIVE).write_bytes(body[:len(body) // 2])
  with pytest.raises(ValueError, match="not a readable tar.gz archive"):
    cifar.load_cifar_fs(truncated, download=False)
  other = tmp_path / "o"
  other.mkdir()
  (other / cifar.ARCHIVE).write_bytes(fake_data.tar_gz({"cifar-100-python/train": b"x"}))
  with pytest.raises(ValueError, match="not a readable dataset pickle"):
    cifar.load_cifar_fs(other, download=False)
  (other / cifar.ARCHIVE).write_bytes(fake_data.tar_gz({"README": b"x"}))
  with pytest.raises(ValueError, match="has no cifar-100-python/train, cifar-100-python/test"):
    cifar.load_cifar_fs(other, download=False)


def test_refuses_pickles_that_run_code(archive, tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.system, ("echo unsafe",))

  members, _, _ = fake_data.cifar100_members()
  members["cifar-100-python/meta"] = pickle.dumps({"x": Evil()})
  (tmp_path / cifar.ARCHIVE).write_bytes(fake_data.tar_gz(members))
  with pytest.raises(ValueError, match="refusing to load posix.system"):
    cifar.load_cifar_fs(tmp_path, download=False)


@fake_data.needs_real_data("cifar100")
def test_real_archive():
  folder = fake_data.real_data("cifar100")
  splits = {split: cifar.load_cifar_fs(folder, split, download=False) for split in ("train", "validation", "test")}
  assert [splits[s].images.shape for s in ("train", "validation", "test")] == [
      (64, 600, 32, 32, 3), (16, 600, 32, 32, 3), (20, 600, 32, 32, 3)]
  assert set(splits["test"].class_names) == CIFAR_FS_TEST
  fc100 = cifar.load_fc100(folder, "test", download=False)
  assert fc100.images.shape == (20, 600, 32, 32, 3)
  assert {name.split("/")[0] for name in fc100.class_names} == {"aquatic_mammals", "insects", "medium_mammals",
                                                                 "people"}
