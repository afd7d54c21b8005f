"""Bad inputs to minillm.prune fail early, naming the problem and the fix (the catalogue's chapter 6 part).

Merges that would not be exact are refused, not approximated: a BN fused into a conv with other channels, a 1×1
conv merged into a k×k conv that pads after the 1×1's bias, a padded 1×1 after a k×k, grouped branches that do not
line up, a reflect-padded conv.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from bad_inputs import BadInput, cases_param, check_case
from minillm.data.images import ImageData
from minillm.prune import (UPDP_TINY, ChannelLayerNorm, ImageTrainConfig, PrunableConvBlock, PrunableConvNeXtBlock,
                           PrunableViTBlock, ProgressiveAct, ResCNN, ResCNNConfig, SearchConfig, SubnetStudyConfig,
                           TinyViT, TokenBatchNorm, ViTConfig, add_branches, add_identity_conv,
                           add_identity_linear, all_masks, assert_fitness_predicts_finetuning,
                           assert_progressive_beats_direct,
                           assert_search_pick_beats_average, count_layers, dense_weight, describe_mask,
                           exhaustive_search, fuse_bn_linear, fuse_conv_bn, fuse_linear_bn, genetic_search,
                           identity_kernel, image_accuracy, is_depthwise, lambda_schedule, limit_examples,
                           merge_1x1_kxk, merge_error, merge_kxk_1x1, merge_linears, recalibrate_bn, run_subnet_study,
                           run_updp, sandwich_subnets, spearman, study_seed, subnet_fitness, summarise_subnet_study,
                           train_image_classifier, train_subnet, train_supernet)

SMALL = ResCNNConfig(channels=4, expand=8, depth=2)
X = torch.randn(4, 1, 8, 8)


def _data(labels_offset: int = 0) -> ImageData:
    y = torch.arange(16) % 10 + labels_offset
    x = torch.randn(16, 1, 8, 8)
    return ImageData("synthetic", x, y, x, y, x, y)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels).eval()


def _unmergeable_block():
    block = PrunableConvNeXtBlock(4, 8).eval()
    block.pruned, block.lam = True, 0.5
    return block.merge()


def _train_mode_merge():
    model = ResCNN(SMALL)
    model.set_subnet((True, False))
    model.set_lambda(1.0)
    return model.train().merged()


CASES = [
    # blocks
    BadInput("minillm.prune.ProgressiveAct", "an unknown activation", lambda: ProgressiveAct("swish"), ValueError,
             "unknown activation 'swish'; choose one of"),
    BadInput("minillm.prune.ProgressiveAct", "λ = 1.5", lambda: ProgressiveAct()(X, 1.5), ValueError,
             r"λ must lie in \[0, 1\].*lambda_schedule"),
    BadInput("minillm.prune.TokenBatchNorm", "(N, C) features instead of (B, T, C) tokens",
             lambda: TokenBatchNorm(4)(torch.randn(3, 4)), ValueError, r"expects \(B, T, C\).*BatchNorm1d"),
    BadInput("minillm.prune.ChannelLayerNorm", "tokens instead of (B, C, H, W) maps",
             lambda: ChannelLayerNorm(4)(torch.randn(2, 3, 4)), ValueError, r"\(B, C, H, W\).*nn.LayerNorm"),
    BadInput("minillm.prune.PrunableConvBlock", "an even kernel", lambda: PrunableConvBlock(4, 8, kernel=4),
             ValueError, "must be odd.*use 3, 5 or 7"),
    BadInput("minillm.prune.PrunableConvNeXtBlock", "an even kernel", lambda: PrunableConvNeXtBlock(4, 8, kernel=2),
             ValueError, "must be odd.*use 3, 5 or 7"),
    BadInput("minillm.prune.PrunableConvNeXtBlock", "merging a block still at λ = 0.5", _unmergeable_block,
             ValueError, r"only a pruned block at λ = 1.*set_lambda\(1.0\)"),
    BadInput("minillm.prune.PrunableViTBlock", "a width the heads do not divide", lambda: PrunableViTBlock(10, 3),
             ValueError, "divisible by heads 3; choose a head count"),
    # models and configs
    BadInput("minillm.prune.PrunableModel", "merging in training mode", _train_mode_merge, ValueError,
             r"call model.eval\(\) before merged"),
    BadInput("minillm.prune.PrunableModel", "a mask with the wrong number of blocks",
             lambda: ResCNN(SMALL).set_subnet((True,)), ValueError, "1 entries but the model has 2 blocks; give one"),
    BadInput("minillm.prune.ResCNN", "RGB images for a grey-scale model", lambda: ResCNN(SMALL)(torch.randn(2, 3, 8, 8)),
             ValueError, r"expected images \(B, 1, H, W\).*in_channels"),
    BadInput("minillm.prune.ResCNN", "float64 images for a float32 model", lambda: ResCNN(SMALL)(X.double()),
             ValueError, "torch.float64.*torch.float32.*x.to"),
    BadInput("minillm.prune.TinyViT", "28×28 images for an 8×8 ViT",
             lambda: TinyViT(ViTConfig(dim=8, depth=1))(torch.randn(2, 1, 28, 28)), ValueError,
             "expected images.*set image_size"),
    BadInput("minillm.prune.ResCNNConfig", "an even kernel", lambda: ResCNNConfig(kernel=4), ValueError,
             "kernel must be odd"),
    BadInput("minillm.prune.ResCNNConfig", "an unknown block type", lambda: ResCNNConfig(block="mbconv"), ValueError,
             "unknown block 'mbconv'; choose one of"),
    BadInput("minillm.prune.ViTConfig", "a patch that does not divide the image", lambda: ViTConfig(patch=3),
             ValueError, "multiple of the patch size 3; choose a patch"),
    BadInput("minillm.prune.count_layers", "one image without its batch axis",
             lambda: count_layers(ResCNN(SMALL), torch.randn(8)), ValueError, r"batch of example inputs.*x_test\[:1\]"),
    # training
    BadInput("minillm.prune.ImageTrainConfig", "a learning rate of 0", lambda: ImageTrainConfig(lr=0.0), ValueError,
             "lr must be a positive finite number"),
    BadInput("minillm.prune.image_accuracy", "more labels than images",
             lambda: image_accuracy(ResCNN(SMALL), X, torch.zeros(5, dtype=torch.long)), ValueError,
             "4 images but 5 labels; pass one label per image"),
    BadInput("minillm.prune.image_accuracy", "images holding NaN",
             lambda: image_accuracy(ResCNN(SMALL), X * float("nan"), torch.zeros(4, dtype=torch.long)), ValueError,
             "NaN or inf; clean"),
    BadInput("minillm.prune.image_accuracy", "images without a channel axis",
             lambda: image_accuracy(ResCNN(SMALL), torch.randn(4, 8, 8), torch.zeros(4, dtype=torch.long)),
             ValueError, r"\(N, C, H, W\).*x\[:, None\]"),
    BadInput("minillm.prune.limit_examples", "a limit of 0 training images", lambda: limit_examples(_data(), 0),
             ValueError, "None \\(all examples\\) or a positive count"),
    BadInput("minillm.prune.recalibrate_bn", "a model without BatchNorm",
             lambda: recalibrate_bn(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), X), ValueError,
             "no BatchNorm layer to recalibrate"),
    BadInput("minillm.prune.train_image_classifier", "labels beyond the model's classes",
             lambda: train_image_classifier(ResCNN(SMALL), _data(labels_offset=5), ImageTrainConfig(epochs=1)),
             ValueError, r"labels must lie in \[0, 10\).*num_classes"),
    BadInput("minillm.prune.train_image_classifier", "a plain nn.Module",
             lambda: train_image_classifier(nn.Linear(64, 10), _data(), ImageTrainConfig(epochs=1)), TypeError,
             "trains a PrunableModel"),
    # UPDP stages
    BadInput("minillm.prune.sandwich_subnets", "a model with no blocks", lambda: sandwich_subnets(0), ValueError,
             "num_blocks >= 1.*model.num_blocks"),
    BadInput("minillm.prune.train_supernet", "a plain nn.Module",
             lambda: train_supernet(nn.Linear(64, 10), _data(), ImageTrainConfig(epochs=1)), TypeError,
             "trains a PrunableModel"),
    BadInput("minillm.prune.subnet_fitness", "zero calibration batches",
             lambda: subnet_fitness(ResCNN(SMALL), _data(), calib_batches=0), ValueError,
             "calib_batches=0 must be a positive integer"),
    BadInput("minillm.prune.SearchConfig", "more parents than the population",
             lambda: SearchConfig(population=4, elite=6), ValueError, r"elite must be in \[1, population=4\]"),
    BadInput("minillm.prune.all_masks", "pruning 5 of 4 blocks", lambda: all_masks(4, 5), ValueError,
             "pruning 5 of 4 blocks; choose 1 ≤ k ≤ n"),
    BadInput("minillm.prune.exhaustive_search", "pruning no block", lambda: exhaustive_search(lambda m: 0.0, 4, 0),
             ValueError, "choose 1 ≤ k ≤ n"),
    BadInput("minillm.prune.genetic_search", "a fitness that returns NaN",
             lambda: genetic_search(lambda m: float("nan"), 4, 2), ValueError, "fitness returned nan.*finite score"),
    BadInput("minillm.prune.lambda_schedule", "a ramp of 0", lambda: lambda_schedule(0, 10, ramp=0.0), ValueError,
             r"ramp must be in \(0, 1\].*fraction"),
    BadInput("minillm.prune.train_subnet", "a mask that prunes nothing",
             lambda: train_subnet(ResCNN(SMALL), (False, False), _data(), ImageTrainConfig(epochs=1)), ValueError,
             "prunes no block.*at least one True"),
    BadInput("minillm.prune.train_subnet", "a ramp above 1",
             lambda: train_subnet(ResCNN(SMALL), (True, False), _data(), ImageTrainConfig(epochs=1), ramp=1.5),
             ValueError, r"ramp must be in \(0, 1\]"),
    BadInput("minillm.prune.UPDPConfig", "pruning more blocks than the CNN has",
             lambda: dataclasses.replace(UPDP_TINY, pruned_blocks=9), ValueError,
             r"pruned_blocks=9 must be in \[1, cnn.depth=6\]"),
    BadInput("minillm.prune.UPDPConfig", "an unknown data set", lambda: dataclasses.replace(UPDP_TINY, data="cifar"),
             ValueError, "unknown image data set 'cifar'; choose one of"),
    BadInput("minillm.prune.run_updp", "pruning 0 blocks",
             lambda: run_updp(ResCNN(SMALL), _data(), UPDP_TINY, pruned_blocks=0), ValueError,
             "cannot prune 0 of 2 blocks; choose 1"),
    BadInput("minillm.prune.merge_error", "integer inputs",
             lambda: merge_error(ResCNN(SMALL), ResCNN(SMALL), torch.zeros(2, 1, 8, 8, dtype=torch.long)), ValueError,
             r"non-empty float batch.*x_test\[:256\]"),
    BadInput("minillm.prune.describe_mask", "a mask written as a string", lambda: describe_mask("FPF"), TypeError,
             "tuple of booleans.*tuple\\(i in pruned"),
    # reparameterisation
    BadInput("minillm.prune.fuse_conv_bn", "a BN over other channels than the conv's output",
             lambda: fuse_conv_bn(nn.Conv2d(3, 4, 3), _bn(6)), ValueError,
             "normalises 6 channels but the conv's output has 4; fuse each BN with the layer"),
    BadInput("minillm.prune.fuse_conv_bn", "a LayerNorm in place of the BN",
             lambda: fuse_conv_bn(nn.Conv2d(3, 4, 3), nn.LayerNorm(4)), TypeError,
             "bn must be one of \\(BatchNorm2d\\).*only these linear layers can be merged"),
    BadInput("minillm.prune.fuse_conv_bn", "a reflect-padded conv",
             lambda: fuse_conv_bn(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), _bn(4)), ValueError,
             "padding_mode='reflect'.*padding_mode='zeros'"),
    BadInput("minillm.prune.fuse_linear_bn", "a GroupNorm in place of the BN",
             lambda: fuse_linear_bn(nn.Linear(3, 3), nn.GroupNorm(1, 3)), TypeError, "must be one of"),
    BadInput("minillm.prune.fuse_bn_linear", "a BN over other features than the layer's input",
             lambda: fuse_bn_linear(nn.BatchNorm1d(5).eval(), nn.Linear(4, 3)), ValueError,
             "normalises 5 channels but the linear layer's input has 4"),
    BadInput("minillm.prune.merge_linears", "layers that do not chain", lambda: merge_linears(nn.Linear(3, 4), nn.Linear(5, 3)),
             ValueError, "fc1 gives 4 features but fc2 expects 5; merge layers that follow"),
    BadInput("minillm.prune.add_identity_linear", "a layer that changes the width",
             lambda: add_identity_linear(nn.Linear(3, 4)), ValueError, "residual needs a square layer.*keeps the width"),
    BadInput("minillm.prune.merge_1x1_kxk", "a padded depthwise k×k after a biased 1×1 (not exact)",
             lambda: merge_1x1_kxk(nn.Conv2d(4, 6, 1), nn.Conv2d(6, 6, 3, padding=1, groups=6)), ValueError,
             "differ at the border; move the padding.*to the 1×1 conv"),
    BadInput("minillm.prune.merge_1x1_kxk", "a strided 1×1 first", lambda: merge_1x1_kxk(nn.Conv2d(4, 6, 1, stride=2),
             nn.Conv2d(6, 6, 3)), ValueError, "stride 1.*move the stride to the last conv"),
    BadInput("minillm.prune.merge_1x1_kxk", "convs that do not chain",
             lambda: merge_1x1_kxk(nn.Conv2d(4, 6, 1), nn.Conv2d(5, 6, 3)), ValueError,
             "conv1 gives 6 channels but conv2 expects 5; merge convs that follow"),
    BadInput("minillm.prune.merge_kxk_1x1", "a padded 1×1 after the k×k",
             lambda: merge_kxk_1x1(nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(6, 5, 1, padding=1)), ValueError,
             "1×1 without padding.*put the padding on the k×k conv"),
    BadInput("minillm.prune.merge_kxk_1x1", "a 3×3 in place of the 1×1",
             lambda: merge_kxk_1x1(nn.Conv2d(4, 6, 3), nn.Conv2d(6, 5, 3)), ValueError, "conv1 must be 1×1"),
    BadInput("minillm.prune.identity_kernel", "an even kernel size", lambda: identity_kernel(4, 2), ValueError,
             "odd size with a centre.*use 1, 3, 5"),
    BadInput("minillm.prune.identity_kernel", "groups that do not divide the channels",
             lambda: identity_kernel(6, 3, groups=4), ValueError, "groups=4 must be a positive divisor"),
    BadInput("minillm.prune.add_identity_conv", "a conv that changes the channels",
             lambda: add_identity_conv(nn.Conv2d(8, 4, 3, padding=1)), ValueError, "C_in = C_out.*fold the residual"),
    BadInput("minillm.prune.add_branches", "branches with different groups",
             lambda: add_branches(nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.Conv2d(6, 6, 1)), ValueError,
             "same channels, groups and stride"),
    BadInput("minillm.prune.add_branches", "no branch at all", lambda: add_branches(), ValueError,
             "at least one conv; pass the parallel branches"),
    BadInput("minillm.prune.dense_weight", "a linear layer", lambda: dense_weight(nn.Linear(3, 3)), TypeError,
             r"conv must be one of \(Conv2d\)"),
    BadInput("minillm.prune.is_depthwise", "a linear layer", lambda: is_depthwise(nn.Linear(3, 3)), TypeError,
             r"conv must be one of \(Conv2d\)"),
    # the study over seeds
    BadInput("minillm.prune.SubnetStudyConfig", "a single seed", lambda: SubnetStudyConfig(UPDP_TINY, seeds=1),
             ValueError, "interval over seeds needs seeds >= 2"),
    BadInput("minillm.prune.study_seed", "a model too shallow for the pruned count",
             lambda: study_seed(_data(), UPDP_TINY, 0, make_model=lambda: ResCNN(SMALL)), ValueError,
             r"fewer than 3 subnets to rank.*C\(depth, pruned_blocks\) >= 3"),
    BadInput("minillm.prune.run_subnet_study", "a UPDPConfig in place of the study config",
             lambda: run_subnet_study(_data(), UPDP_TINY), TypeError, r"takes a SubnetStudyConfig\(updp=..."),
    BadInput("minillm.prune.spearman", "lists of different lengths", lambda: spearman([1, 2, 3], [1, 2]), ValueError,
             "two equally long lists of at least 3"),
    BadInput("minillm.prune.summarise_subnet_study", "one seed", lambda: summarise_subnet_study([{}]), ValueError,
             "needs at least 2"),
    BadInput("minillm.prune.assert_fitness_predicts_finetuning", "a summary whose interval is not an interval record",
             lambda: assert_fitness_predicts_finetuning({"spearman_progressive": {"mean": 0.3}}), ValueError,
             "not an interval record.*summarise_subnet_study"),
    BadInput("minillm.prune.assert_progressive_beats_direct", "a summary without the paired interval",
             lambda: assert_progressive_beats_direct({"progressive_minus_direct": None}), ValueError,
             "not an interval record"),
    BadInput("minillm.prune.assert_search_pick_beats_average", "a summary whose interval is not an interval record",
             lambda: assert_search_pick_beats_average({"pick_minus_mean": [0.1, 0.2]}), ValueError,
             "not an interval record"),
]

EXEMPT = {
    "minillm.prune.UPDPResult": "a plain container that run_updp fills; every value in it comes from validated stages",
    "minillm.prune.SearchResult": "a plain container that the searches fill; they validate their own arguments",
}


@cases_param(CASES)
def test_bad_input_is_rejected_clearly(case):
    check_case(case)
