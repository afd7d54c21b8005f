"""UPDP: unified progressive depth pruning with reparameterisation (chapter 6).

Stages: :func:`~minillm.prune.supernet.train_supernet` (sandwich rule) →
:func:`~minillm.prune.search.genetic_search` → :func:`~minillm.prune.progressive.train_subnet`
(λ: 0 → 1) → :meth:`~minillm.prune.models.PrunableModel.merged` (reparameterisation, :mod:`~minillm.prune.reparam`).
"""

from minillm.prune import reparam
from minillm.prune.blocks import PrunableConvBlock, PrunableViTBlock, ProgressiveAct, TokenBatchNorm
from minillm.prune.data import ImageData, load_digits_data, load_fashion_mnist, load_image_data
from minillm.prune.models import CNN_FULL, CNN_TINY, VIT_FULL, VIT_TINY, ResCNN, TinyViT, count_layers
from minillm.prune.progressive import (UPDP_FULL, UPDP_TINY, UPDPConfig, UPDPResult, lambda_schedule, run_updp,
                                      train_subnet, updp_config)
from minillm.prune.search import SearchConfig, exhaustive_search, genetic_search
from minillm.prune.supernet import (TrainConfig, accuracy, recalibrate_bn, subnet_fitness, train,
                                    train_supernet)

__all__ = [
    "reparam", "PrunableConvBlock", "PrunableViTBlock", "ProgressiveAct", "TokenBatchNorm", "ImageData",
    "load_digits_data", "load_fashion_mnist", "load_image_data", "CNN_FULL", "CNN_TINY", "VIT_FULL", "VIT_TINY",
    "ResCNN", "TinyViT", "count_layers", "UPDP_FULL", "UPDP_TINY", "UPDPConfig", "lambda_schedule",
    "train_subnet", "updp_config", "run_updp", "UPDPResult", "SearchConfig", "exhaustive_search", "genetic_search", "TrainConfig",
    "accuracy", "recalibrate_bn", "subnet_fitness", "train", "train_supernet",
]
