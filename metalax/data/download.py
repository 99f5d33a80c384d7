"""Downloads from the datasets' canonical sources, checked against SHA-256, written atomically.

:data:`RESOURCES` maps a dataset's folder name (see
:func:`metalax.data.resolve_data_dir`) to the files it needs: each a
:class:`Resource` with its file name, the URLs to try in order, its SHA-256 and
its size. A download streams into a temporary file in the destination folder
(``.<name>.<random>.part``) while hashing it, with a tqdm progress bar; only a
file whose size and SHA-256 match becomes ``<folder>/<name>`` (one
``os.replace``). A broken connection, a short or long body, a wrong checksum or
an interrupt removes the temporary file, so a partial download never becomes
the cached file and leaves nothing behind. A file already in the folder is used
as it is (the loaders check its contents), so files placed by hand need not be
the byte-identical originals.

Tests replace entries of :data:`RESOURCES` (or pass ``resources=``) to point
at a local server; nothing here reaches the network unless a loader is called
with ``download=True`` for files that are missing.

Provenance of the recorded hashes (see ``docs/data.md``):

* MNIST: the SHA-256 of the four original files; identical to the values
  tensorflow-datasets pins, and checked against a byte-identical local copy.
* Omniglot: the SHA-256 that tensorflow-datasets pins for the two archives of
  github.com/brendenlake/omniglot (``python/``); torchvision pins their MD5
  (68d2efa1..., 6b91aef0...).
* CIFAR-100 (python version): the SHA-256 Keras and torchvision's prototype
  datasets pin, with torchvision's MD5 eb9058c3a382ffc7106e4002c42a8d85.
* CUB-200-2011: the SHA-256 torchvision's prototype datasets and
  tensorflow-datasets pin, with the widely used MD5
  97eceeb196236b17998738112f37df78.
"""

import hashlib
import http.client
import os
import tempfile
from typing import NamedTuple, Sequence
import urllib.request

from absl import logging
from tqdm import auto as tqdm

from metalax.data.paths import not_found_message
from metalax.data.paths import resolve_data_dir


class Resource(NamedTuple):
  """One file of a dataset and where to get it.

  Attributes:
    filename: the name it has in the dataset's folder.
    urls: URLs to try in order (mirrors of the same bytes).
    sha256: the expected SHA-256, 64 lowercase hex digits.
    size: the expected size in bytes, or None if unknown.
  """

  filename: str
  urls: tuple[str, ...]
  sha256: str
  size: int | None = None


class DownloadError(OSError):
  """No URL of a :class:`Resource` gave a complete file with the right checksum."""


_OMNIGLOT = ("https://raw.githubusercontent.com/brendenlake/omniglot/master/python/",
             "https://github.com/brendenlake/omniglot/raw/master/python/")
_MNIST = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
          "https://storage.googleapis.com/cvdf-datasets/mnist/")

RESOURCES: dict[str, tuple[Resource, ...]] = {
    "omniglot": (
        Resource("images_background.zip", tuple(u + "images_background.zip" for u in _OMNIGLOT),
                 "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640", 9464212),
        Resource("images_evaluation.zip", tuple(u + "images_evaluation.zip" for u in _OMNIGLOT),
                 "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee", 6462886),
    ),
    "mnist": (
        Resource("train-images-idx3-ubyte.gz", tuple(u + "train-images-idx3-ubyte.gz" for u in _MNIST),
                 "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
        Resource("train-labels-idx1-ubyte.gz", tuple(u + "train-labels-idx1-ubyte.gz" for u in _MNIST),
                 "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
        Resource("t10k-images-idx3-ubyte.gz", tuple(u + "t10k-images-idx3-ubyte.gz" for u in _MNIST),
                 "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
        Resource("t10k-labels-idx1-ubyte.gz", tuple(u + "t10k-labels-idx1-ubyte.gz" for u in _MNIST),
                 "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
    ),
    "cifar100": (
        Resource("cifar-100-python.tar.gz",
                 ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                  "https://cave.cs.toronto.edu/kriz/cifar-100-python.tar.gz"),
                 "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7", 169001437),
    ),
    "cub": (
        Resource("CUB_200_2011.tgz",
                 ("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",),
                 "0c685df5597a8b24909f6a7c9db6d11e008733779a671760afef78feb49bf081", 1150585339),
    ),
}
"""Dataset folder name -> the files that can be downloaded for it."""

_CHUNK = 1 << 20


def sha256sum(path: str | os.PathLike) -> str:
  """The SHA-256 of a file, as 64 lowercase hex digits."""
  digest = hashlib.sha256()
  with open(path, "rb") as file:
    for block in iter(lambda: file.read(_CHUNK), b""):
      digest.update(block)
  return digest.hexdigest()


def _fetch_url(url: str, resource: Resource, directory: str, progress: bool,
               timeout: float) -> None:
  """Downloads ``url`` into ``directory/resource.filename`` or raises, leaving nothing behind."""
  target = os.path.join(directory, resource.filename)
  temporary = None
  try:
    request = urllib.request.Request(url, headers={"User-Agent": "metalax"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
      header = response.headers.get("Content-Length")
      announced = int(header) if header and header.isdigit() else None
      if resource.size is not None and announced is not None and announced != resource.size:
        raise ValueError(f"the server announces {announced} bytes, expected {resource.size}")
      descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{resource.filename}.",
                                               suffix=".part")
      digest, received = hashlib.sha256(), 0
      with os.fdopen(descriptor, "wb") as file, tqdm.tqdm(
          total=announced or resource.size, unit="B", unit_scale=True, unit_divisor=1024,
          desc=resource.filename, disable=not progress, leave=False) as bar:
        while chunk := response.read(_CHUNK):
          file.write(chunk)
          digest.update(chunk)
          received += len(chunk)
          bar.update(len(chunk))
        file.flush()
        os.fsync(file.fileno())
    if announced is not None and received != announced:
      raise OSError(f"the connection closed after {received} of the {announced} bytes announced")
    if resource.size is not None and received != resource.size:
      raise ValueError(f"received {received} bytes, expected {resource.size} (truncated or not "
                       "the published file)")
    if digest.hexdigest() != resource.sha256:
      raise ValueError(f"checksum mismatch: SHA-256 {digest.hexdigest()}, expected "
                       f"{resource.sha256}")
    os.replace(temporary, target)
    temporary = None
  finally:
    if temporary is not None and os.path.exists(temporary):
      os.remove(temporary)


def download_file(resource: Resource, directory: str | os.PathLike, *, progress: bool = True,
                  timeout: float = 60.0) -> str:
  """Downloads one file into ``directory``, trying each URL until one verifies.

  Args:
    resource: the file, its URLs, SHA-256 and size.
    directory: the destination folder (created if missing).
    progress: show a tqdm progress bar.
    timeout: seconds to wait for the server at each step.

  Returns:
    The path of the verified file, ``directory/resource.filename``.

  Raises:
    DownloadError: if every URL failed (unreachable, HTTP error, connection
      closed early, wrong size or wrong SHA-256). The message lists each URL
      and why; nothing is left in ``directory``.
  """
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  failures = []
  for url in resource.urls:
    logging.info("Downloading %s to %s", url, directory)
    try:
      _fetch_url(url, resource, directory, progress, timeout)
      logging.info("Verified %s (SHA-256 %s)", resource.filename, resource.sha256)
      return os.path.join(directory, resource.filename)
    except (OSError, ValueError, http.client.HTTPException) as error:
      logging.warning("Download of %s failed: %s", url, error)
      failures.append(f"{url}: {error}")
  raise DownloadError(
      f"could not download {resource.filename} into {directory} (nothing was written there): "
      + "; ".join(failures) + ".")


def fetch(name: str, data_dir: str | os.PathLike | None = None, *,
          filenames: Sequence[str] | None = None, download: bool = True, title: str | None = None,
          resources: Sequence[Resource] | None = None, progress: bool = True,
          expected: Sequence[str] | None = None) -> str:
  """Makes sure a dataset's files are in its folder, downloading the missing ones.

  Args:
    name: the dataset's folder name, a key of :data:`RESOURCES` unless
      ``resources`` is given.
    data_dir: the folder, or None for :func:`metalax.data.resolve_data_dir`'s
      choice.
    filenames: which of the dataset's files are needed; default all.
    download: False to only look (for offline machines): a missing file is
      then a ``FileNotFoundError``.
    title: the dataset's name in messages; default ``name``.
    resources: the files and their sources; default ``RESOURCES[name]``.
    progress: show a progress bar while downloading.
    expected: how the error names what was expected (e.g. an archive "or its
      extracted folder"); default the missing file names.

  Returns:
    The dataset's folder, holding every needed file.

  Raises:
    FileNotFoundError: if a file is missing and ``download`` is False; the
      message names the files, the folder, how it was chosen and the download
      that would have been made.
    DownloadError: if a download failed (the message says where to place the
      files by hand).
    ValueError: for an unknown ``name`` or file name.
  """
  if resources is None:
    if name not in RESOURCES:
      raise ValueError(f"no download is known for {name!r}; known: {sorted(RESOURCES)}.")
    resources = RESOURCES[name]
  resources = tuple(resources)
  known = {resource.filename for resource in resources}
  if filenames is not None:
    unknown = sorted(set(filenames) - known)
    if unknown:
      raise ValueError(f"{name} has no downloadable files {unknown}; known: {sorted(known)}.")
    resources = tuple(resource for resource in resources if resource.filename in filenames)
  folder = resolve_data_dir(name, data_dir)
  missing = [resource for resource in resources
             if not os.path.isfile(os.path.join(folder, resource.filename))]
  if not missing:
    return folder
  title = title or name
  sources = "; ".join(f"{resource.filename} from {resource.urls[0]} (SHA-256 {resource.sha256})"
                      for resource in missing)
  if not download:
    raise FileNotFoundError(not_found_message(
        title, name, data_dir, expected or [resource.filename for resource in missing],
        f"download=False (--config.download=false) was given; with download=True the loader "
        f"fetches {sources}."))
  for resource in missing:
    try:
      download_file(resource, folder, progress=progress)
    except DownloadError as error:
      raise DownloadError(
          f"{error} Download it yourself from {resource.urls[0]} (SHA-256 {resource.sha256}) and "
          f"place it at {os.path.join(folder, resource.filename)}, or point data_dir / "
          f"--config.data_dir / $METALAX_DATA_DIR at a folder that has it.") from error
  return folder
