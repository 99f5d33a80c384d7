"""Representation learning: every field, and one preset per objective.

``--config=experiments/configs/representation.py:NAME`` with NAME one of:

* ``simclr``: NT-Xent over two augmented views of unlabelled images (Chen et al. 2020);
* ``supcon``: supervised contrastive loss on labelled batches (Khosla et al. 2020);
* ``triplet_all``, ``triplet_batch_hard``, ``triplet_semi_hard``: triplet loss with each mining strategy;
* ``autoencoder``, ``denoising``, ``sparse``, ``linear_decoder``: reconstruction objectives;
* ``random``: no training (the randomly initialised encoder).

All presets pretrain a Conv-4 encoder on the Omniglot background archive (964 characters, Lake's split;
contrastive and autoencoder objectives ignore the labels) and evaluate the frozen encoder on the 659
characters of the evaluation archive: N-way K-shot episodes classified by prototypes and by
1-nearest-neighbour on L2-normalised embeddings, and a linear probe (logistic regression on 10 images per
character, tested on the other 10).
"""

import ml_collections

from metalax import training

PRESETS = {
    "simclr": dict(loss="nt_xent"),
    "supcon": dict(loss="supcon"),
    "triplet_all": dict(loss="triplet", mining="all"),
    "triplet_batch_hard": dict(loss="triplet", mining="batch_hard"),
    "triplet_semi_hard": dict(loss="triplet", mining="semi_hard"),
    "autoencoder": dict(loss="autoencoder"),
    "denoising": dict(loss="autoencoder", noise_std=0.3),
    "sparse": dict(loss="autoencoder", code_dim=64, code_activation="sigmoid", sparsity_weight=0.1,
                   sparsity_target=0.05),
    "linear_decoder": dict(loss="autoencoder", decoder_features=()),
    "random": dict(loss="random", num_iterations=0),
}

HELP = {
    "preset": "the preset these values started from (informational)",
    "loss": "nt_xent (SimCLR) | info_nce | supcon | triplet | contrastive (pairs) | autoencoder | random (no "
            "training) | package.module:attribute (loss(embeddings [n, d], labels [n]) -> [n], labelled batches)",
    "dataset": "omniglot (background -> evaluation archive) | mnist (train -> test) | any few-shot dataset "
               "(tfds:NAME, folder:PATH, npz:PATH, package.module:attribute: train -> test classes)",
    "class_split": "tfds:/folder:/npz: datasets: (train, validation, test) fractions of the classes",
    "image_size": "folder: datasets: resize images to this square size (0: keep)",
    "cache_dir": "Omniglot's decoded-image cache (empty: ~/.cache/metalax)",
    "model": "the encoder: conv4 | resnet12 | mlp | package.module:attribute (called with num_outputs=None)",
    "conv4_variant": "conv4: strided | maxpool",
    "hidden": "conv4: filters per layer",
    "norm": "conv4/resnet12: batch (batch statistics) | layer | group | none",
    "conv_impl": "conv4 convolutions: patches (batched GEMMs) | xla (lax.conv)",
    "resnet_channels": "resnet12: channels of the four residual blocks",
    "dropblock_rate": "resnet12: DropBlock drop rate in the last two blocks (0: off)",
    "mlp_features": "mlp: hidden layer widths (the last is the embedding)",
    "projector_hidden": "contrastive losses: the projection head's hidden width",
    "projection_dim": "contrastive losses: the projection's width (evaluation uses the encoder output)",
    "temperature": "nt_xent and info_nce temperature",
    "supcon_temperature": "supcon temperature",
    "margin": "triplet margin (on L2-normalised projections); contrastive: the negative margin",
    "mining": "triplet mining: all | batch_hard | semi_hard",
    "classes_per_batch": "labelled batches (supcon, triplet, contrastive): classes per batch",
    "examples_per_class": "labelled batches: images per class",
    "augment": "metalax.augment operations, each a name or a call, e.g. 'random_rotation(15.0)'; "
               "'mixup(0.2)' / 'cutmix(1.0)' mix the batch (each image keeps its dominant label)",
    "decoder_features": "autoencoders: decoder hidden widths (() for a linear decoder)",
    "code_dim": "autoencoders: > 0 adds a linear code layer on the encoder output",
    "code_activation": "autoencoders: identity | sigmoid | relu | tanh",
    "noise_std": "denoising autoencoder: Gaussian input noise",
    "sparsity_weight": "sparse autoencoder: KL sparsity weight",
    "sparsity_target": "sparse autoencoder: target mean activation",
    "l1_weight": "autoencoders: L1 penalty on the codes",
    "batch_size": "images per step (nt_xent/info_nce: two views each; autoencoders)",
    "lr": "Adam learning rate",
    "episodes": "evaluation episodes, a tuple of (num_ways, num_shots)",
    "num_queries": "evaluation episodes: queries per class",
    "num_test_episodes": "evaluation episodes per (ways, shots)",
    "probe_steps": "linear probe: full-batch AdamW steps",
    "probe_lr": "linear probe: learning rate",
    "probe_weight_decay": "linear probe: weight decay",
    "review_k": "hard-example review: the highest-loss probe training examples written as PNG + CSV",
    "corrections": "a reviewed CSV whose corrected labels replace the probe's training labels",
    "num_eval_classes": "evaluate on the first this many evaluation classes (0: all)",
}


def get_config(preset: str = "simclr") -> ml_collections.ConfigDict:
  """The representation config of ``preset``."""
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}.")
  config = training.base_config()
  config.preset = preset
  config.loss = "nt_xent"
  config.dataset = "omniglot"
  config.cache_dir = ""
  config.class_split = (0.64, 0.16, 0.2)
  config.image_size = 0
  # Encoder (a model without head: loadable as the backbone of experiments.fewshot with the same fields).
  config.model = "conv4"
  config.conv4_variant = "strided"
  config.hidden = 32
  config.norm = "batch"
  config.conv_impl = "patches"
  config.resnet_channels = (64, 160, 320, 640)
  config.dropblock_rate = 0.0
  config.mlp_features = (256, 128, 64)
  # Contrastive objectives.
  config.projector_hidden = 128
  config.projection_dim = 64
  config.temperature = 0.5
  config.supcon_temperature = 0.1
  config.margin = 0.2
  config.mining = "batch_hard"
  config.classes_per_batch = 32
  config.examples_per_class = 4
  config.augment = ("random_resized_crop(scale=(0.5, 1.0), ratio=(0.8, 1.25))", "random_rotation(15.0)",
                    "random_apply(cutout(0.35), 0.5)", "gaussian_noise(0.05)")
  # Autoencoders.
  config.decoder_features = (256, 512)
  config.code_dim = 0
  config.code_activation = "identity"
  config.noise_std = 0.0
  config.sparsity_weight = 0.0
  config.sparsity_target = 0.05
  config.l1_weight = 0.0
  # Optimisation.
  config.batch_size = 128
  config.lr = 1e-3
  config.num_iterations = 1500
  config.steps_per_call = 50
  config.checkpoint_every = 500
  # Evaluation.
  config.episodes = ((5, 1), (5, 5), (20, 1))
  config.num_queries = 5
  config.num_test_episodes = 600
  config.probe_steps = 300
  config.probe_lr = 1e-2
  config.probe_weight_decay = 1e-4
  config.review_k = 40
  config.corrections = ""
  config.num_eval_classes = 0
  config.update(PRESETS[preset])
  return config
