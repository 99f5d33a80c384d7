"""metalax.data.download against a local HTTP server: every failure is clear and leaves nothing behind."""

import os
import socket

import fake_data
import numpy as np
import pytest

import metalax
from metalax.data import download
from metalax.data import mnist
from metalax.data import omniglot

BODY = bytes(range(256)) * 40  # 10,240 bytes


SIZE = len(BODY)


def _resource(server, *paths, body=BODY, size=SIZE, sha256=None):
  return download.Resource("file.bin", tuple(server.url(path) for path in paths),
                           sha256 or fake_data.sha256(body), size)


def _unused_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def test_good_download(http_server, tmp_path):
  http_server.routes["/good"] = (BODY, None)
  path = download.download_file(_resource(http_server, "/good"), tmp_path / "new", progress=False)
  assert path == str(tmp_path / "new" / "file.bin")
  assert open(path, "rb").read() == BODY
  assert os.listdir(tmp_path / "new") == ["file.bin"]
  assert download.sha256sum(path) == fake_data.sha256(BODY)


def test_mirror_fallback(http_server, tmp_path):
  http_server.routes["/good"] = (BODY, None)
  path = download.download_file(_resource(http_server, "/missing", "/good"), tmp_path, progress=False)
  assert open(path, "rb").read() == BODY


@pytest.mark.parametrize("case, size, message", [
    ("truncated archive", len(BODY), "announces 5120 bytes, expected 10240"),
    ("truncated archive", None, "checksum mismatch"),
    ("wrong checksum", len(BODY), "checksum mismatch: SHA-256 "),
    ("server dies mid-transfer", None, "connection closed after 5120 of the 10240 bytes"),
    ("server dies mid-transfer", len(BODY), "connection closed after 5120 of the 10240 bytes"),
    ("not found", len(BODY), "HTTP Error 404"),
])
def test_failures_leave_nothing(http_server, tmp_path, case, size, message):
  sha256 = None
  if case == "truncated archive":
    http_server.routes["/file"] = (BODY[:len(BODY) // 2], None)
  elif case == "wrong checksum":
    http_server.routes["/file"] = (BODY, None)
    sha256 = "0" * 64
  elif case == "server dies mid-transfer":
    http_server.routes["/file"] = (BODY, "die")
  resource = _resource(http_server, "/file", size=size, sha256=sha256)
  (tmp_path / "keep.txt").write_text("unrelated")
  with pytest.raises(download.DownloadError, match=message) as error:
    download.download_file(resource, tmp_path, progress=False)
  assert "nothing was written there" in str(error.value) and http_server.url("/file") in str(error.value)
  assert sorted(os.listdir(tmp_path)) == ["keep.txt"]


def test_failure_keeps_an_existing_file(http_server, tmp_path):
  http_server.routes["/file"] = (BODY, "die")
  (tmp_path / "file.bin").write_bytes(b"old")
  with pytest.raises(download.DownloadError):
    download.download_file(_resource(http_server, "/file"), tmp_path, progress=False)
  assert (tmp_path / "file.bin").read_bytes() == b"old" and os.listdir(tmp_path) == ["file.bin"]


def test_unreachable_server(tmp_path):
  resource = download.Resource("file.bin", (f"http://127.0.0.1:{_unused_port()}/x",), "0" * 64)
  with pytest.raises(download.DownloadError, match="could not download file.bin"):
    download.download_file(resource, tmp_path, progress=False, timeout=5)
  assert os.listdir(tmp_path) == []


def test_interrupt_removes_the_partial_file(http_server, tmp_path, monkeypatch):
  http_server.routes["/good"] = (BODY, None)

  class Interrupting:
    def __init__(self, **kwargs):
      del kwargs

    def __enter__(self):
      return self

    def __exit__(self, *args):
      return False

    def update(self, count):
      raise KeyboardInterrupt

  monkeypatch.setattr(download.tqdm, "tqdm", Interrupting)
  with pytest.raises(KeyboardInterrupt):
    download.download_file(_resource(http_server, "/good"), tmp_path)
  assert os.listdir(tmp_path) == []


def test_fetch_offline_and_present(http_server, tmp_path):
  resources = (_resource(http_server, "/good"),)
  with pytest.raises(FileNotFoundError) as error:
    download.fetch("thing", tmp_path / "d", download=False, resources=resources, title="Thing")
  text = str(error.value)
  for part in ("Thing not found", "file.bin", str(tmp_path / "d"), "download=False",
               http_server.url("/good"), fake_data.sha256(BODY), "METALAX_DATA_DIR", "--config.data_dir"):
    assert part in text, (part, text)
  assert not (tmp_path / "d").exists()
  # Present files are used as they are: no request is made (the route does not exist).
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "file.bin").write_bytes(b"placed by hand")
  assert download.fetch("thing", tmp_path / "d", resources=resources) == str(tmp_path / "d")


def test_fetch_download_error_says_where_to_place(http_server, tmp_path):
  with pytest.raises(download.DownloadError, match="place it at .*file.bin"):
    download.fetch("thing", tmp_path, resources=(_resource(http_server, "/missing"),), progress=False)
  with pytest.raises(ValueError, match="no download is known for 'nothing'"):
    download.fetch("nothing", tmp_path)
  with pytest.raises(ValueError, match="no downloadable files"):
    download.fetch("mnist", tmp_path, filenames=["other.gz"])


def test_recorded_table():
  for name, resources in download.RESOURCES.items():
    for resource in resources:
      assert len(resource.sha256) == 64 and int(resource.sha256, 16) >= 0, (name, resource)
      assert resource.urls and all(url.startswith("https://") for url in resource.urls)
      assert resource.size > 0
  assert {r.filename for r in download.RESOURCES["mnist"]} == {
      "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
      "t10k-labels-idx1-ubyte.gz"}


def _serve(server, monkeypatch, name, files):
  """Points RESOURCES[name] at the server, which serves ``files`` {filename: bytes}."""
  resources = []
  for filename, data in files.items():
    server.routes[f"/{name}/{filename}"] = (data, None)
    resources.append(download.Resource(filename, (server.url(f"/{name}/{filename}"),),
                                       fake_data.sha256(data), len(data)))
  monkeypatch.setitem(download.RESOURCES, name, tuple(resources))


def test_mnist_downloads_on_first_use(http_server, tmp_path, monkeypatch):
  files = fake_data.mnist_files()
  _serve(http_server, monkeypatch, "mnist", {name: data for name, (data, _) in files.items()})
  monkeypatch.setenv("METALAX_DATA_DIR", str(tmp_path))
  images, labels = metalax.data.load_mnist(split="test")  # only the test files are fetched
  assert sorted(os.listdir(tmp_path / "mnist")) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
  np.testing.assert_array_equal(images[..., 0], files["t10k-images-idx3-ubyte.gz"][1])
  np.testing.assert_array_equal(labels, files["t10k-labels-idx1-ubyte.gz"][1])
  data = mnist.mnist_class_images(split="train", dtype=np.uint8)
  assert data.num_classes == 10 and len(os.listdir(tmp_path / "mnist")) == 4
  http_server.routes.clear()  # now cached: no request
  assert metalax.data.load_mnist(tmp_path / "mnist", "train", download=False)[0].shape == (12, 28, 28, 1)


def test_mnist_offline_error(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    mnist.load_mnist(tmp_path, "train", download=False)
  text = str(error.value)
  for part in ("MNIST not found", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", str(tmp_path),
               "ossci-datasets.s3.amazonaws.com", "440fcabf", "METALAX_DATA_DIR", "--config.data_dir",
               "--config.download"):
    assert part in text, (part, text)
  assert os.listdir(tmp_path) == []


def test_omniglot_downloads_on_first_use(http_server, tmp_path, monkeypatch):
  zips = {"images_background.zip": fake_data.omniglot_zip("background", ("Alpha", "Beta")),
          "images_evaluation.zip": fake_data.omniglot_zip("evaluation", ("Gamma",), first_id=3)}
  _serve(http_server, monkeypatch, "omniglot", zips)
  data = omniglot.load_omniglot(tmp_path / "omni", image_size=8, use_cache=False)
  assert data.images.shape == (3, 20, 8, 8, 1)
  assert sorted(os.listdir(tmp_path / "omni")) == sorted(zips)
  with pytest.raises(FileNotFoundError, match="images_background.zip.*SHA-256"):
    omniglot.load_omniglot(tmp_path / "other", download=False)
  monkeypatch.setitem(download.RESOURCES, "omniglot",
                      tuple(r._replace(sha256="f" * 64) for r in download.RESOURCES["omniglot"]))
  with pytest.raises(download.DownloadError, match="checksum mismatch"):
    omniglot.load_omniglot(tmp_path / "bad")
  assert os.listdir(tmp_path / "bad") == []


@fake_data.needs_real_data("mnist")
def test_recorded_hashes_match_the_real_files():
  folder = fake_data.real_data("mnist")
  for resource in download.RESOURCES["mnist"]:
    assert download.sha256sum(folder / resource.filename) == resource.sha256
    assert os.path.getsize(folder / resource.filename) == resource.size
