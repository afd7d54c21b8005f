"""Chapter 6 — UPDP: unified progressive depth pruning with reparameterisation.

Stages: :func:`~minillm.prune.supernet.train_supernet` (sandwich rule) →
:func:`~minillm.prune.search.genetic_search` → :func:`~minillm.prune.progressive.train_subnet`
(λ: 0 → 1) → :meth:`~minillm.prune.models.PrunableModel.merged` (reparameterisation, :mod:`~minillm.prune.reparam`).

Modules: :mod:`~minillm.prune.reparam`, :mod:`~minillm.prune.blocks`, :mod:`~minillm.prune.models`,
:mod:`~minillm.prune.training`, :mod:`~minillm.prune.supernet`, :mod:`~minillm.prune.search`,
:mod:`~minillm.prune.progressive`, :mod:`~minillm.prune.study` (the claims over seeds).
The images come from :mod:`minillm.data.images`.
"""

from minillm.prune import reparam
from minillm.prune.blocks import (ChannelLayerNorm, PrunableConvBlock, PrunableConvNeXtBlock, PrunableViTBlock,
                                  ProgressiveAct, TokenBatchNorm)
from minillm.prune.models import (CNN_FULL, CNN_TINY, VIT_FULL, VIT_TINY, Mask, PrunableModel, ResCNN, ResCNNConfig,
                                  TinyViT, ViTConfig, count_layers)
from minillm.prune.progressive import (UPDP_FULL, UPDP_TINY, UPDPConfig, UPDPResult, describe_mask, lambda_schedule,
                                       merge_error, run_updp, train_subnet)
from minillm.prune.reparam import (add_branches, add_identity_conv, add_identity_linear, dense_weight, fuse_bn_linear,
                                   fuse_conv_bn, fuse_linear_bn, identity_kernel, is_depthwise, merge_1x1_kxk,
                                   merge_kxk_1x1, merge_linears)
from minillm.prune.search import SearchConfig, SearchResult, all_masks, exhaustive_search, genetic_search
from minillm.prune.study import (SubnetStudyConfig, assert_fitness_predicts_finetuning,
                                 assert_progressive_beats_direct, assert_search_pick_beats_average, run_subnet_study, spearman, study_seed,
                                 summarise_subnet_study)
from minillm.prune.supernet import sandwich_subnets, subnet_fitness, train_supernet
from minillm.prune.training import (ImageTrainConfig, image_accuracy, limit_examples, recalibrate_bn,
                                    train_image_classifier)

__all__ = [
    "reparam", "ChannelLayerNorm", "PrunableConvBlock", "PrunableConvNeXtBlock", "PrunableViTBlock",
    "ProgressiveAct", "TokenBatchNorm", "CNN_FULL", "CNN_TINY", "VIT_FULL", "VIT_TINY", "Mask", "PrunableModel",
    "ResCNN", "ResCNNConfig", "TinyViT", "ViTConfig", "count_layers", "UPDP_FULL", "UPDP_TINY", "UPDPConfig",
    "UPDPResult", "describe_mask", "lambda_schedule", "merge_error", "run_updp", "train_subnet",
    "add_branches", "add_identity_conv", "add_identity_linear", "dense_weight", "fuse_bn_linear", "fuse_conv_bn",
    "fuse_linear_bn", "identity_kernel", "is_depthwise", "merge_1x1_kxk", "merge_kxk_1x1", "merge_linears",
    "SearchConfig", "SearchResult", "all_masks", "exhaustive_search", "genetic_search",
    "SubnetStudyConfig", "assert_fitness_predicts_finetuning", "assert_progressive_beats_direct",
    "assert_search_pick_beats_average",
    "run_subnet_study", "spearman", "study_seed", "summarise_subnet_study",
    "sandwich_subnets", "subnet_fitness", "train_supernet", "ImageTrainConfig", "image_accuracy", "limit_examples",
    "recalibrate_bn", "train_image_classifier",
]
