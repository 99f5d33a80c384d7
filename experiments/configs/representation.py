"""Representation-learning configs: one preset per method, and the surgical fine-tuning experiment.

``--config=experiments/configs/representation.py:NAME`` with NAME one of:

* ``simclr``: NT-Xent over two augmented views of unlabelled images (Chen et al. 2020);
* ``supcon``: supervised contrastive loss on labelled batches (Khosla et al. 2020);
* ``triplet_all``, ``triplet_batch_hard``, ``triplet_semi_hard``: triplet loss with each mining strategy;
* ``autoencoder``, ``denoising``, ``sparse``, ``linear_decoder``: reconstruction objectives;
* ``random``: no training (the randomly initialised encoder);
* ``surgical``: MNIST pretraining then few-shot adaptation to shifted MNIST,
  one block at a time (``python -m experiments.surgical``).

All representation presets pretrain a Conv-4 encoder on the Omniglot
background archive (964 characters, Lake's split; contrastive and
autoencoder methods ignore the labels) and evaluate the frozen encoder on the
659 characters of the evaluation archive: N-way K-shot episodes classified
by prototypes and by 1-nearest-neighbour on L2-normalised embeddings, and a
linear probe (logistic regression on 10 images per character, tested on the
other 10).
"""

import ml_collections

PRESETS = {
    "simclr": dict(method="simclr"),
    "supcon": dict(method="supcon"),
    "triplet_all": dict(method="triplet", mining="all"),
    "triplet_batch_hard": dict(method="triplet", mining="batch_hard"),
    "triplet_semi_hard": dict(method="triplet", mining="semi_hard"),
    "autoencoder": dict(method="autoencoder"),
    "denoising": dict(method="autoencoder", noise_std=0.3),
    "sparse": dict(method="autoencoder", code_dim=64, code_activation="sigmoid", sparsity_weight=0.1,
                   sparsity_target=0.05),
    "linear_decoder": dict(method="autoencoder", decoder_features=()),
    "random": dict(method="random", num_iterations=0),
    "surgical": dict(method="surgical", dataset="mnist", lr=1e-3, batch_size=128, num_iterations=1500),
}


def get_config(preset: str = "simclr") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}.")
  config = ml_collections.ConfigDict()
  config.preset = preset
  config.method = "simclr"             # simclr supcon triplet autoencoder random (surgical: experiments.surgical)
  # Data.
  config.dataset = "omniglot"          # omniglot (background -> evaluation archive) | mnist (train -> test)
  config.data_dir = ""                 # default: ../shared/data/<dataset> beside this repository
  config.cache_dir = ""                # Omniglot decoded-image cache; default ~/.cache/metalax
  # Encoder (a Conv-4 without head: loadable as the backbone of experiments.fewshot with the same fields).
  config.backbone = "strided"          # strided | maxpool
  config.hidden = 32
  config.norm = "batch"                # batch | layer | group | none
  # Contrastive methods: projection head MLP on top of the encoder (evaluation uses the encoder output).
  config.projector_hidden = 128
  config.projection_dim = 64
  config.temperature = 0.5             # nt_xent; supcon uses supcon_temperature
  config.supcon_temperature = 0.1
  config.margin = 0.2                  # triplet margin, on L2-normalised projections
  config.mining = "batch_hard"         # all | batch_hard | semi_hard
  config.classes_per_batch = 32        # labelled batches (supcon, triplet): classes x examples_per_class
  config.examples_per_class = 4
  # Augmentations (simclr: two views; supcon/triplet: one view).
  config.crop_scale = 0.5              # random resized crop, area fraction in [crop_scale, 1]
  config.rotation = 15.0               # degrees
  config.cutout = 0.35                 # side fraction, applied with probability 0.5
  config.noise = 0.05
  # Autoencoders.
  config.decoder_features = (256, 512)
  config.code_dim = 0                  # > 0: a linear code layer on the encoder output (sparse: sigmoid codes)
  config.code_activation = "identity"  # identity | sigmoid (for the KL sparsity penalty) | relu | tanh
  config.noise_std = 0.0               # denoising: Gaussian input noise
  config.sparsity_weight = 0.0
  config.sparsity_target = 0.05
  config.l1_weight = 0.0
  # Optimisation.
  config.batch_size = 128              # images per step (simclr: 2 views each; autoencoders)
  config.lr = 1e-3
  config.num_iterations = 1500
  config.steps_per_call = 50
  config.checkpoint_every = 500
  # Evaluation.
  config.episodes = ((5, 1), (5, 5), (20, 1))  # (num_ways, num_shots)
  config.num_queries = 5
  config.num_test_episodes = 600
  config.probe_steps = 300
  config.probe_lr = 1e-2
  config.probe_weight_decay = 1e-4
  config.review_k = 40                 # hard-example review: highest-loss examples written as PNG + CSV
  config.corrections = ""              # a reviewed CSV: its corrected labels replace the training labels
  config.num_eval_classes = 0          # evaluate on the first this many evaluation classes (0: all; for tests)
  config.seed = 0
  # Surgical fine-tuning (experiments.surgical).
  config.shifts = ("inverted", "noisy", "permuted")
  config.noise_level = 0.6
  config.selections = ("none", "all", "block1", "block2", "block3", "block4", "head")
  config.target_shots = 10             # labelled target examples per class
  config.finetune_steps = 100
  config.finetune_lrs = (1e-3, 1e-2, 1e-1)  # chosen per selection on held-out shifted training images
  config.validation_shots = 50         # held-out shifted training images per class for choosing the rate
  config.num_seeds = 3
  config.num_train_examples = 0        # use the first this many MNIST training / test images (0: all; for tests)
  config.num_test_examples = 0
  config.update(PRESETS[preset])
  return config
