"""Tests for metalax.data.omniglot: small fake archives, then the real data once."""

import io
import os
import time
import zipfile

import fake_data
import jax
import numpy as np
from PIL import Image
import pytest

from metalax.data import omniglot
from metalax.episodes import sample_episode

REAL_DATA = fake_data.real_data("omniglot")


def _png(ink_row: int, size: int = 105, corrupt: bool = False) -> bytes:
  """A 1-bit white image with a black band of 15 rows starting at ``ink_row``."""
  image = Image.new("1", (size, size), 1)
  pixels = np.ones((size, size), bool)
  pixels[ink_row:ink_row + 15] = False
  image = Image.fromarray(pixels)
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  data = buffer.getvalue()
  return data[:40] if corrupt else data


def _write_zip(path, members, compression=zipfile.ZIP_DEFLATED):
  with zipfile.ZipFile(path, "w", compression) as archive:
    for name, data in members.items():
      archive.writestr(zipfile.ZipInfo(name), data)
  return path


def _members(archive, alphabets, num_characters=2, num_drawings=20, first_id=1, ink_shift=0):
  """Members of a fake archive; drawing d of character c has ink at row 5 * c + d + shift."""
  members, character_id = {}, first_id
  for alphabet in alphabets:
    for c in range(1, num_characters + 1):
      for d in range(1, num_drawings + 1):
        name = f"images_{archive}/{alphabet}/character{c:02d}/{character_id:04d}_{d:02d}.png"
        members[name] = _png(5 * c + d + ink_shift)
      character_id += 1
  return members


@pytest.fixture
def fake_dir(tmp_path):
  data_dir = tmp_path / "omniglot"
  data_dir.mkdir()
  # "Beta" before "alpha" in code-point order; "Zeta" < "alpha" too.
  _write_zip(data_dir / "images_background.zip", _members("background", ["alpha", "Beta"]))
  _write_zip(data_dir / "images_evaluation.zip", _members("evaluation", ["Zeta"], first_id=5))
  return data_dir


class TestFakeArchives:

  def test_shapes_order_and_names(self, fake_dir, tmp_path):
    data = omniglot.load_omniglot(fake_dir, cache_dir=tmp_path / "cache")
    assert data.images.shape == (6, 20, 28, 28, 1)
    assert data.images.dtype == np.float32
    assert data.class_names == (
        "images_background/Beta/character01", "images_background/Beta/character02",
        "images_background/alpha/character01", "images_background/alpha/character02",
        "images_evaluation/Zeta/character01", "images_evaluation/Zeta/character02")

  def test_ink_is_one_and_matches_a_pil_reference(self, fake_dir, tmp_path):
    data = omniglot.load_omniglot(fake_dir, cache_dir=tmp_path / "cache")
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    # Character 1, drawing 3: black band from row 5 + 3 = 8 on white.
    reference = Image.open(io.BytesIO(_png(8))).convert("L").resize((28, 28), Image.LANCZOS)
    expected = 1.0 - np.asarray(reference, np.float32) / 255
    np.testing.assert_allclose(data.images[0, 2, :, :, 0], expected, atol=1e-6)
    assert data.images[0, 2].mean() < 0.5  # mostly background (0)

  def test_uint8_original_size_and_nearest(self, fake_dir, tmp_path):
    data = omniglot.load_omniglot(fake_dir, cache_dir=tmp_path / "cache", image_size=None,
                                  dtype=np.uint8, archives=("background",))
    assert data.images.shape == (4, 20, 105, 105, 1) and data.images.dtype == np.uint8
    assert set(np.unique(data.images)) == {0, 255}
    assert data.images[0, 2, 8:23].min() == 255 and data.images[0, 2, 23:].max() == 0
    nearest = omniglot.load_omniglot(fake_dir, cache_dir=tmp_path / "cache", resample="nearest")
    assert set(np.unique(nearest.images)) == {0.0, 1.0}

  def test_cache_is_used(self, fake_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = omniglot.load_omniglot(fake_dir, cache_dir=cache)
    assert len(list(cache.glob("omniglot_*.npz"))) == 1

    def fail(*args):
      raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(omniglot, "_decode_archive", fail)
    second = omniglot.load_omniglot(fake_dir, cache_dir=cache)
    np.testing.assert_array_equal(first.images, second.images)
    assert first.class_names == second.class_names
    uint8 = omniglot.load_omniglot(fake_dir, cache_dir=cache, dtype=np.uint8)
    np.testing.assert_allclose(uint8.images / 255, first.images, atol=1e-6)

  def test_cache_key_follows_archive_and_size(self, fake_dir, tmp_path):
    cache = tmp_path / "cache"
    before = omniglot.load_omniglot(fake_dir, cache_dir=cache)
    other_size = omniglot.load_omniglot(fake_dir, cache_dir=cache, image_size=14)
    assert other_size.images.shape[2:4] == (14, 14)
    # Same names, same sizes of members, different pixels: must not be served stale.
    _write_zip(fake_dir / "images_evaluation.zip",
               _members("evaluation", ["Zeta"], first_id=5, ink_shift=30))
    after = omniglot.load_omniglot(fake_dir, cache_dir=cache)
    np.testing.assert_array_equal(after.images[:4], before.images[:4])
    assert not np.array_equal(after.images[4:], before.images[4:])
    assert len(list(cache.glob("omniglot_*.npz"))) == 3

  def test_corrupt_cache_is_rebuilt(self, fake_dir, tmp_path):
    cache = tmp_path / "cache"
    first = omniglot.load_omniglot(fake_dir, cache_dir=cache)
    (cache_file,) = cache.glob("omniglot_*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    second = omniglot.load_omniglot(fake_dir, cache_dir=cache)
    np.testing.assert_array_equal(first.images, second.images)

  def test_no_cache(self, fake_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    omniglot.load_omniglot(fake_dir, use_cache=False)
    assert not (tmp_path / "xdg").exists()
    omniglot.load_omniglot(fake_dir)
    assert len(list((tmp_path / "xdg" / "metalax").glob("omniglot_*.npz"))) == 1

  def test_splits_need_the_full_set(self, fake_dir, tmp_path):
    data = omniglot.load_omniglot(fake_dir, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="needs the 1623 unrotated characters"):
      omniglot.omniglot_splits(data, "lake")


class TestErrors:

  def test_missing_archive(self, fake_dir, tmp_path):
    os.remove(fake_dir / "images_evaluation.zip")
    with pytest.raises(FileNotFoundError, match="expected images_evaluation.zip in") as error:
      omniglot.load_omniglot(fake_dir, cache_dir=tmp_path / "cache", download=False)
    assert str(fake_dir) in str(error.value)
    assert "brendenlake/omniglot/master/python/images_evaluation.zip" in str(error.value)

  def test_folder_from_the_environment(self, fake_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("METALAX_DATA_DIR", str(fake_dir.parent))
    data = omniglot.load_omniglot(cache_dir=tmp_path / "cache", download=False)
    assert data.num_classes == 6

  def test_truncated_zip(self, fake_dir, tmp_path):
    path = fake_dir / "images_background.zip"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="not a readable zip archive \\(truncated or corrupt"):
      omniglot.load_omniglot(fake_dir, cache_dir=tmp_path / "cache")

  def test_not_a_zip(self, fake_dir, tmp_path):
    (fake_dir / "images_background.zip").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(ValueError, match="not a readable zip"):
      omniglot.load_omniglot(fake_dir, cache_dir=tmp_path / "cache")

  def test_corrupt_member_data(self, fake_dir, tmp_path):
    path = fake_dir / "images_background.zip"
    members = _members("background", ["alpha"])
    _write_zip(path, members, compression=zipfile.ZIP_STORED)
    raw = bytearray(path.read_bytes())
    target = raw.find(b"IDAT")  # inside the first member's stored PNG bytes
    raw[target + 10:target + 20] = bytes(10)
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="cannot read member .*0001_01.png"):
      omniglot.load_omniglot(fake_dir, cache_dir=tmp_path / "cache")

  def test_member_that_is_not_a_png(self, fake_dir, tmp_path):
    members = _members("background", ["alpha"])
    members["images_background/alpha/character01/0001_05.png"] = _png(0, corrupt=True)
    _write_zip(fake_dir / "images_background.zip", members)
    with pytest.raises(ValueError, match="cannot read member .*0001_05.png"):
      omniglot.load_omniglot(fake_dir, cache_dir=tmp_path / "cache")

  def test_zip_that_is_not_omniglot(self, fake_dir, tmp_path):
    _write_zip(fake_dir / "images_background.zip", {"README.txt": b"hello"})
    with pytest.raises(ValueError, match="not an Omniglot background archive.*README.txt"):
      omniglot.load_omniglot(fake_dir, cache_dir=tmp_path / "cache")

  def test_archives_swapped(self, fake_dir, tmp_path):
    os.replace(fake_dir / "images_evaluation.zip", fake_dir / "images_background.zip")
    with pytest.raises(ValueError, match="not an Omniglot background archive"):
      omniglot.load_omniglot(fake_dir, cache_dir=tmp_path / "cache", archives=("background",))

  def test_empty_zip(self, fake_dir, tmp_path):
    _write_zip(fake_dir / "images_background.zip", {"images_background/": b""})
    with pytest.raises(ValueError, match="holds no members"):
      omniglot.load_omniglot(fake_dir, cache_dir=tmp_path / "cache")

  @pytest.mark.parametrize("name", [
      "../evil.png", "images_background/../../evil.png", "/etc/evil.png",
      "images_background/alpha/character01/../../../../evil.png", "C:/evil.png",
      "..\\evil.png",
  ])
  def test_escaping_member_paths_are_refused(self, fake_dir, tmp_path, name):
    members = _members("background", ["alpha"])
    members[name] = _png(0)
    _write_zip(fake_dir / "images_background.zip", members)
    before = set(tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="absolute path or a '..' component"):
      omniglot.load_omniglot(fake_dir, cache_dir=tmp_path / "cache")
    assert set(tmp_path.rglob("*")) == before  # nothing extracted or written

  def test_wrong_number_of_drawings(self, fake_dir, tmp_path):
    members = _members("background", ["alpha"])
    del members["images_background/alpha/character02/0002_20.png"]
    _write_zip(fake_dir / "images_background.zip", members)
    with pytest.raises(ValueError, match="character02' has 19 drawings, expected 20"):
      omniglot.load_omniglot(fake_dir, cache_dir=tmp_path / "cache")

  def test_os_metadata_is_ignored(self, fake_dir, tmp_path):
    members = _members("background", ["alpha", "Beta"])
    members["__MACOSX/images_background/._alpha"] = b"junk"
    members["images_background/alpha/.DS_Store"] = b"junk"
    members["images_background/alpha/"] = b""
    _write_zip(fake_dir / "images_background.zip", members)
    assert omniglot.load_omniglot(fake_dir, cache_dir=tmp_path / "cache").num_classes == 6

  @pytest.mark.parametrize("kwargs, message", [
      (dict(image_size=0), "image_size"), (dict(resample="bicubic"), "resample"),
      (dict(dtype=np.int32), "dtype"), (dict(archives=("train",)), "archives"),
  ])
  def test_bad_arguments(self, fake_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
      omniglot.load_omniglot(fake_dir, use_cache=False, **kwargs)


# ---------------------------------------------------------------------------
# The real archives: decoded once per test session (about 6 s), cached in tmp.

# Test characters of Vinyals et al. (2016), from the split files of Snell et
# al. (2017) as shipped by Torchmeta (omniglot/test.json): 4 + 419 = 423.
VINYALS_TEST_ALPHABETS = (
    "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian",
    "Old_Church_Slavonic_(Cyrillic)", "Oriya", "Sylheti", "Syriac_(Serto)", "Tengwar",
    "Tibetan", "ULOG")
VINYALS_TEST_GURMUKHI = ("character42", "character43", "character44", "character45")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
  cache = tmp_path_factory.mktemp("omniglot_cache")
  start = time.perf_counter()
  characters = omniglot.load_omniglot(REAL_DATA, cache_dir=cache, dtype=np.uint8, download=False)
  decode_seconds = time.perf_counter() - start
  return characters, cache, decode_seconds


@fake_data.needs_real_data("omniglot")
class TestRealData:

  def test_full_load(self, real):
    characters, _, _ = real
    assert characters.images.shape == (1623, 20, 28, 28, 1)
    names = characters.class_names
    assert list(names) == sorted(names)
    assert sum(name.startswith("images_background/") for name in names) == 964
    assert sum(name.startswith("images_evaluation/") for name in names) == 659
    assert len({name.split("/")[1] for name in names}) == 50
    # Ink is 255 (1.0 as float) on a background of 0: about 8% ink.
    assert 0.03 < characters.images.mean() / 255 < 0.2
    assert (characters.images[:, :, 0, 0] == 0).mean() > 0.99  # corners are background

  def test_matches_direct_decoding(self, real):
    characters, _, _ = real
    with zipfile.ZipFile(REAL_DATA / "images_evaluation.zip") as archive:
      member = "images_evaluation/ULOG/character26/1623_20.png"
      image = Image.open(io.BytesIO(archive.read(member))).convert("L")
    expected = 255 - np.asarray(image.resize((28, 28), Image.LANCZOS))
    assert characters.class_names[-1] == "images_evaluation/ULOG/character26"
    np.testing.assert_array_equal(characters.images[-1, -1, :, :, 0], expected)

  def test_cached_load(self, real):
    characters, cache, decode_seconds = real
    start = time.perf_counter()
    again = omniglot.load_omniglot(REAL_DATA, cache_dir=cache, dtype=np.uint8, download=False)
    cached_seconds = time.perf_counter() - start
    np.testing.assert_array_equal(again.images, characters.images)
    print(f"\nOmniglot: decode {decode_seconds:.1f} s, cached load {cached_seconds:.2f} s")

  def test_vinyals_split(self, real):
    characters, _, _ = real
    splits = omniglot.omniglot_splits(characters, "vinyals")
    assert sorted(splits) == ["test", "train"]
    assert splits["train"].images.shape == (4800, 20, 28, 28, 1)
    assert splits["test"].images.shape == (1692, 20, 28, 28, 1)
    test_characters = {name.rsplit("/", 1)[0] for name in splits["test"].class_names}
    expected = {f"images_evaluation/Gurmukhi/{c}" for c in VINYALS_TEST_GURMUKHI} | {
        name for name in characters.class_names if name.split("/")[1] in VINYALS_TEST_ALPHABETS}
    assert test_characters == expected and len(expected) == 423
    train = splits["train"]
    assert train.class_names[:2] == ("images_background/Alphabet_of_the_Magi/character01/rot000",
                                     "images_background/Alphabet_of_the_Magi/character01/rot090")
    np.testing.assert_array_equal(train.images[1], np.rot90(characters.images[0], 1, axes=(1, 2)))
    # End to end: a 5-way 1-shot episode from the training classes.
    episode = sample_episode(jax.random.key(0), train.images, 5, 1, 3)
    assert episode.support.inputs.shape == (5, 28, 28, 1)
    assert episode.query.inputs.dtype == np.uint8
    with_validation = omniglot.omniglot_splits(characters, "vinyals", angles=(0,),
                                               num_validation=100)
    assert [with_validation[k].num_classes for k in ("train", "validation", "test")] == [
        1100, 100, 423]

  def test_snell_split(self, real):
    characters, _, _ = real
    splits = omniglot.omniglot_splits(characters, "snell", angles=(0,))
    assert [splits[k].num_classes for k in ("train", "validation", "test")] == [1028, 172, 423]
    alphabets = {name.split("/")[1] for name in splits["validation"].class_names}
    assert alphabets == set(omniglot.SNELL_VALIDATION_ALPHABETS)

  def test_lake_split(self, real):
    characters, _, _ = real
    splits = omniglot.omniglot_splits(characters, "lake", angles=(0, 180))
    assert splits["train"].num_classes == 2 * 964 and splits["test"].num_classes == 2 * 659
    assert all(name.startswith("images_evaluation/") for name in splits["test"].class_names)

  def test_split_errors(self, real):
    characters, _, _ = real
    with pytest.raises(ValueError, match="split must be one of"):
      omniglot.omniglot_splits(characters, "random")
    with pytest.raises(ValueError, match="num_validation must be 0"):
      omniglot.omniglot_splits(characters, "snell", num_validation=10)
    with pytest.raises(ValueError, match="num_validation must be in \\[0, 1200\\)"):
      omniglot.omniglot_splits(characters, "vinyals", num_validation=1200)
