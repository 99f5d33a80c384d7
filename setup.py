"""metalax: meta-learning and multi-task learning as pure JAX functions."""

import setuptools

setuptools.setup(
    name="metalax",
    version="0.1.0",
    description="Meta-learning and multi-task learning as pure JAX functions.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=("metalax", "metalax.*")),
    package_data={"metalax.data": ["splits/*/*.txt"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6",
        "jaxlib>=0.6",
        "flax>=0.11",
        "optax>=0.2.5",
        "chex>=0.1.89",
        "orbax-checkpoint>=0.11",
        "ml-collections>=1.0",
        "tensorflow-datasets>=4.9",
        "absl-py>=2.0",
        "tensorboardX>=2.6",
        "tqdm>=4.60",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5"],
        # The PyTorch peer for benchmarks/ (see BUILD_NOTES.md for the install steps).
        "peer": ["torch==2.13.0", "learn2learn==0.2.0"],
    },
)
