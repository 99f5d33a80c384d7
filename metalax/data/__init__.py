"""Task families and datasets: images grouped by class, Omniglot, MNIST, the few-shot benchmarks
(mini-ImageNet, tiered-ImageNet, CIFAR-FS, FC100, CUB), a user's own folders and ``.npz`` files,
tensorflow-datasets, sinusoid. Where files live: :func:`resolve_data_dir`."""

from metalax.data.cifar import load_cifar_fs
from metalax.data.cifar import load_fc100
from metalax.data.cub import load_cub
from metalax.data.dense import DenseData
from metalax.data.dense import load_cityscapes
from metalax.data.dense import load_nyuv2
from metalax.data.download import DownloadError
from metalax.data.folder import load_image_folder
from metalax.data.folder import load_npz
from metalax.data.gp import GPTasks
from metalax.data.gp import gp_episodes
from metalax.data.gp import gp_predictive
from metalax.data.gp import kernel_matrix
from metalax.data.gp import sample_gp
from metalax.data.gp import sample_gp_tasks
from metalax.data.images import ClassImages
from metalax.data.images import RaggedClassImages
from metalax.data.images import check_class_images
from metalax.data.images import class_images
from metalax.data.images import concatenate
from metalax.data.images import from_labelled
from metalax.data.images import ragged_class_images
from metalax.data.images import rotate_classes
from metalax.data.images import select_classes
from metalax.data.images import split_classes
from metalax.data.images import to_dense
from metalax.data.images import to_float32
from metalax.data.images import to_ragged
from metalax.data.mini_imagenet import load_mini_imagenet
from metalax.data.mnist import load_mnist
from metalax.data.mnist import mnist_class_images
from metalax.data.mnist import read_idx
from metalax.data.omniglot import load_omniglot
from metalax.data.omniglot import omniglot_splits
from metalax.data.paths import resolve_data_dir
from metalax.data.sinusoid import SinusoidTasks
from metalax.data.sinusoid import sample_sinusoid
from metalax.data.sinusoid import sample_sinusoid_tasks
from metalax.data.sinusoid import sinusoid_episodes
from metalax.data.tfds import load_tfds
from metalax.data.tiered_imagenet import load_tiered_imagenet

__all__ = (
    "ClassImages",
    "DenseData",
    "DownloadError",
    "GPTasks",
    "RaggedClassImages",
    "SinusoidTasks",
    "check_class_images",
    "class_images",
    "concatenate",
    "from_labelled",
    "gp_episodes",
    "gp_predictive",
    "kernel_matrix",
    "load_cifar_fs",
    "load_cityscapes",
    "load_cub",
    "load_fc100",
    "load_image_folder",
    "load_mini_imagenet",
    "load_mnist",
    "load_npz",
    "load_nyuv2",
    "load_omniglot",
    "load_tfds",
    "load_tiered_imagenet",
    "mnist_class_images",
    "omniglot_splits",
    "ragged_class_images",
    "read_idx",
    "resolve_data_dir",
    "rotate_classes",
    "sample_gp",
    "sample_gp_tasks",
    "sample_sinusoid",
    "sample_sinusoid_tasks",
    "select_classes",
    "sinusoid_episodes",
    "split_classes",
    "to_dense",
    "to_float32",
    "to_ragged",
)
