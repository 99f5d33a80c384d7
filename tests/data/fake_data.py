"""Small files in each dataset's real format, for the loaders' tests (imported as ``fake_data``).

Every builder writes the published layout (archive member names, pickle keys,
IDX headers, CSV columns) with a few tiny images, so the real loaders run on
them without any downloaded data.
"""

import gzip
import hashlib
import io
import os
import pathlib
import pickle
import tarfile
import zipfile

import numpy as np
from PIL import Image
import pytest

DATA_ROOT = os.environ.get("METALAX_DATA_DIR")


def real_data(name: str) -> pathlib.Path | None:
  """``$METALAX_DATA_DIR/<name>`` when the variable is set and that folder exists."""
  if not DATA_ROOT:
    return None
  folder = pathlib.Path(DATA_ROOT).expanduser() / name
  return folder if folder.is_dir() else None


def needs_real_data(name: str):
  """Skips a real-archive test unless ``$METALAX_DATA_DIR/<name>`` exists."""
  return pytest.mark.skipif(
      real_data(name) is None,
      reason=f"real-archive test: set METALAX_DATA_DIR to a folder with the subfolder {name}/ "
             f"(got {DATA_ROOT!r})")


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def png_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def jpeg_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="JPEG", quality=95)
  return buffer.getvalue()


def tar_gz(members: dict[str, bytes]) -> bytes:
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))
  return buffer.getvalue()


# --- Omniglot ---------------------------------------------------------------------------------------------

def omniglot_zip(archive: str, alphabets=("Alpha",), num_characters: int = 1,
                 first_id: int = 1) -> bytes:
  """An ``images_<archive>.zip`` with 20 105x105 1-bit drawings per character."""
  buffer = io.BytesIO()
  character_id = first_id
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zipped:
    for alphabet in alphabets:
      for c in range(1, num_characters + 1):
        for d in range(1, 21):
          pixels = np.ones((105, 105), bool)
          pixels[d:d + 10] = False
          image = io.BytesIO()
          Image.fromarray(pixels).save(image, format="PNG")
          zipped.writestr(f"images_{archive}/{alphabet}/character{c:02d}/{character_id:04d}_{d:02d}.png",
                          image.getvalue())
        character_id += 1
  return buffer.getvalue()


# --- MNIST ------------------------------------------------------------------------------------------------

def idx_gz(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
  return gzip.compress(header + array.astype(np.uint8).tobytes())


def mnist_files(num: int = 12, seed: int = 0) -> dict[str, tuple[bytes, np.ndarray]]:
  """The four IDX .gz files: ``{name: (bytes, array)}``."""
  rng = np.random.default_rng(seed)
  files = {}
  for prefix in ("train", "t10k"):
    images = rng.integers(0, 256, (num, 28, 28), dtype=np.uint8)
    labels = np.arange(num, dtype=np.uint8) % 10
    files[f"{prefix}-images-idx3-ubyte.gz"] = (idx_gz(images), images)
    files[f"{prefix}-labels-idx1-ubyte.gz"] = (idx_gz(labels), labels)
  return files


# --- CIFAR-100 --------------------------------------------------------------------------------------------

CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
"""CIFAR-100's 20 superclasses and their classes (Krizhevsky, 2009), in label order."""

CIFAR100_FINE = tuple(sorted(name for names in CIFAR100_SUPERCLASSES.values() for name in names))
CIFAR100_COARSE = tuple(CIFAR100_SUPERCLASSES)


def cifar100_members(num_train: int = 2, num_test: int = 1, seed: int = 0):
  """The three pickles of ``cifar-100-python/`` (Python 2 style: bytes keys) and the images.

  Image ``k`` of class ``c`` in ``train`` has every pixel of its red channel equal
  to ``c`` and green equal to ``k``; in ``test`` green is ``100 + k``. Returns
  ``(members, images [N, 32, 32, 3], fine [N])`` with train then test.
  """
  rng = np.random.default_rng(seed)
  coarse_of = {fine: CIFAR100_COARSE.index(coarse)
               for coarse, names in CIFAR100_SUPERCLASSES.items() for fine in names}
  members, all_images, all_fine = {}, [], []
  for part, per_class, offset in (("train", num_train, 0), ("test", num_test, 100)):
    fine = np.repeat(np.arange(100), per_class)
    rank = np.tile(np.arange(per_class), 100)
    order = rng.permutation(fine.size)  # archive order is shuffled
    fine, rank = fine[order], rank[order]
    images = np.zeros((fine.size, 32, 32, 3), np.uint8)
    images[..., 0] = fine[:, None, None]
    images[..., 1] = (offset + rank)[:, None, None]
    images[..., 2] = rng.integers(0, 256, (fine.size, 32, 32))
    batch = {b"data": images.transpose(0, 3, 1, 2).reshape(fine.size, 3072),
             b"fine_labels": fine.tolist(),
             b"coarse_labels": [coarse_of[CIFAR100_FINE[f]] for f in fine],
             b"filenames": [b"x.png"] * fine.size, b"batch_label": part.encode()}
    members[f"cifar-100-python/{part}"] = pickle.dumps(batch, protocol=2)
    all_images.append(images)
    all_fine.append(fine)
  meta = {b"fine_label_names": [name.encode() for name in CIFAR100_FINE],
          b"coarse_label_names": [name.encode() for name in CIFAR100_COARSE]}
  # Python 2's pickles hold str, read back as str with encoding="latin1".
  meta = {key: [name.decode() for name in value] for key, value in meta.items()}
  members["cifar-100-python/meta"] = pickle.dumps(meta, protocol=2)
  return members, np.concatenate(all_images), np.concatenate(all_fine)


# --- CUB-200-2011 -----------------------------------------------------------------------------------------

CUB_CLASSES = tuple(f"{i:03d}.Bird_{i}" for i in range(1, 9))


def cub_members(seed: int = 0) -> tuple[dict[str, bytes], dict[str, list[np.ndarray]]]:
  """The tgz layout with 8 classes of 2-3 JPEGs (sizes differ, one grayscale).

  Returns ``(members, {class: [decoded RGB arrays in file-name order]})``.
  """
  rng = np.random.default_rng(seed)
  members = {"attributes.txt": b"1 has_bill_shape::curved\n",
             "CUB_200_2011/README": b"CUB-200-2011\n"}
  images = {}
  lines = []
  for index, name in enumerate(CUB_CLASSES):
    images[name] = []
    for k in range(2 + index % 2):
      height, width = 12 + 2 * k, 16
      if index == 3 and k == 0:
        array = np.full((height, width), 40 * k + 60, np.uint8)  # grayscale
      else:
        array = np.zeros((height, width, 3), np.uint8)
        array[..., 0] = 30 * index
        array[..., 1] = 100 + 50 * k
        array[..., 2] = rng.integers(0, 256)
      data = jpeg_bytes(array)
      file_name = f"Bird_{index + 1}_{k:04d}.jpg"
      members[f"CUB_200_2011/images/{name}/{file_name}"] = data
      decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
      images[name].append(decoded)
      lines.append(f"{len(lines) + 1} {name}/{file_name}")
  members["CUB_200_2011/images.txt"] = ("\n".join(lines) + "\n").encode()
  members["CUB_200_2011/classes.txt"] = "".join(
      f"{i + 1} {name}\n" for i, name in enumerate(CUB_CLASSES)).encode()
  return members, images
