"""metalax.data.paths: the data directory convention and the missing-data message."""

import os

import pytest

from metalax.data import paths


def test_precedence(monkeypatch, tmp_path):
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
  default = os.path.join(str(tmp_path / "home"), "metalax_data", "omniglot")
  assert paths.resolve_data_dir("omniglot") == default
  assert paths.resolve_data_dir("omniglot", "") == default
  assert paths.default_data_root() == os.path.join(str(tmp_path / "home"), "metalax_data")
  monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path / "root"))
  assert paths.resolve_data_dir("omniglot") == str(tmp_path / "root" / "omniglot")
  assert paths.default_data_root() == str(tmp_path / "root")
  # An explicit folder wins and is the dataset's own folder (no <name> appended).
  assert paths.resolve_data_dir("omniglot", tmp_path / "mine") == str(tmp_path / "mine")
  assert paths.resolve_data_dir("mnist", "~/m") == os.path.join(str(tmp_path / "home"), "m")


def test_nothing_beside_the_repository(monkeypatch, tmp_path):
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  for name in ("omniglot", "mnist", "cifar100", "cub", "mini_imagenet", "tiered_imagenet"):
    assert not paths.resolve_data_dir(name).startswith(os.path.dirname(repo) + os.sep + "shared")
    assert paths.resolve_data_dir(name).startswith(str(tmp_path))


@pytest.mark.parametrize("name", ["", "a/b", "..", None])
def test_bad_names(name):
  with pytest.raises(ValueError, match="dataset folder name"):
    paths.resolve_data_dir(name)


def test_message_names_everything(monkeypatch, tmp_path):
  monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  message = paths.not_found_message("MNIST", "mnist", None, ["a.gz", "b.gz"], "Would fetch X.")
  for text in ("MNIST not found", "a.gz, b.gz", str(tmp_path / "metalax_data" / "mnist"),
               "per-user default", "--config.data_dir", "METALAX_DATA_DIR", "subfolder mnist/",
               "Would fetch X."):
    assert text in message, (text, message)
  monkeypatch.setenv(paths.DATA_DIR_ENV, "/somewhere")
  assert "$METALAX_DATA_DIR=/somewhere" in paths.not_found_message("M", "mnist", None, ["a"], "")
  assert "the data_dir argument" in paths.not_found_message("M", "mnist", "/x", ["a"], "")


def test_cache_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert paths.default_cache_dir() == str(tmp_path / "metalax")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "h"))
  assert paths.default_cache_dir() == str(tmp_path / "h" / ".cache" / "metalax")
