"""Task families and datasets: images grouped by class, Omniglot, MNIST, tensorflow-datasets, sinusoid."""

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
from metalax.data.mnist import load_mnist
from metalax.data.mnist import mnist_class_images
from metalax.data.mnist import read_idx
from metalax.data.omniglot import load_omniglot
from metalax.data.omniglot import omniglot_splits
from metalax.data.sinusoid import SinusoidTasks
from metalax.data.sinusoid import sample_sinusoid
from metalax.data.sinusoid import sample_sinusoid_tasks
from metalax.data.sinusoid import sinusoid_episodes
from metalax.data.tfds import load_tfds

__all__ = (
    "ClassImages",
    "RaggedClassImages",
    "SinusoidTasks",
    "check_class_images",
    "class_images",
    "concatenate",
    "from_labelled",
    "load_mnist",
    "load_omniglot",
    "load_tfds",
    "mnist_class_images",
    "omniglot_splits",
    "ragged_class_images",
    "read_idx",
    "rotate_classes",
    "sample_sinusoid",
    "sample_sinusoid_tasks",
    "select_classes",
    "sinusoid_episodes",
    "split_classes",
    "to_dense",
    "to_float32",
    "to_ragged",
)
