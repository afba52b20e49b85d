"""Backbones: timm-registered models (importing this package registers ours), loading weights saved
by another implementation (each model module's `checkpoint_filter_fn` maps its key names), and the
feature taps distillation methods read."""

from __future__ import annotations

import sys

import timm
import torch
from timm.models._features import feature_take_indices
from torch import nn

from harness.errors import UserError
from harness.models.init import initialise
from harness.models.timm_pre_relu import with_pre_relu_taps
from harness.models import (alexnet, cifar_resnet, cifar_resnet50, inception_bn, maxout, mlp,  # noqa: F401
                            mobilenetv2, preact_resnet, shufflenet, vgg, vgg_bn, wrn)  # (registers the models with timm)
from harness.spec.schema import DatasetSpec, ModelSpec


def build_model(model: ModelSpec, dataset: DatasetSpec) -> nn.Module:
    kwargs = dict(model.kwargs, num_classes=dataset.num_classes, in_chans=dataset.in_chans)
    if model.takes_img_size:
        kwargs["img_size"] = dataset.img_size
    try:
        net = timm.create_model(model.timm, pretrained=False, **kwargs)
    except RuntimeError as e:  # timm's "Unknown model"
        raise UserError(f"timm cannot build model {model.timm!r}: {e}") from None
    net = with_pre_relu_taps(net)  # timm's ResNets and MobileNetV1: the subclass with pre-ReLU taps
    if model.init is not None:
        initialise(net, model.init)
    return net


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], label: str) -> None:
    """`state` into `net`, strictly, after mapping a foreign implementation's key names to ours; a
    batch norm without num_batches_tracked (saved by PyTorch before 0.4.1) keeps ours."""
    ours = net.state_dict()
    if set(state) != set(ours):
        filter_fn = getattr(sys.modules[type(net).__module__], "checkpoint_filter_fn", None)
        state = filter_fn(state, net) if filter_fn is not None else state
    state = {key: ours[key] for key in ours if key.endswith("num_batches_tracked")} | state
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    if missing or unexpected:
        raise UserError(f"{label}: the file's keys are not this model's: {len(missing)} missing (e.g. "
                        f"{', '.join(missing[:3]) or '-'}), {len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3]) or '-'})")
    for key, tensor in ours.items():
        if state[key].shape != tensor.shape:
            raise UserError(f"{label}: {key} is {tuple(state[key].shape)} in the file, {tuple(tensor.shape)} in the "
                            "model (another width or number of classes?)")
    net.load_state_dict(state)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def extract_features(model: nn.Module, x: torch.Tensor, want: frozenset[str], stages: list[int]) -> dict:
    """One forward pass returning the named features a method asked for.

    Names: 'logits', 'pre_logits' (the penultimate vector), 'stages' (the list of
    forward_intermediates outputs at the pair's stage indices), 'blocks' (per stage, its input
    and every block's output: models with `forward_blocks`), 'stages_pre_relu' (the same taps
    before their last ReLU) and 'stages_pre_relu_bn' (per tap, the weight and bias of the BN feeding
    that ReLU, N x 2 x C: repeated per sample so that it batches and caches like a feature): models
    with `forward_intermediates_pre_relu` (and, for the second, `pre_relu_batchnorms`). Only logits means a plain
    forward; anything else goes through timm's forward_intermediates (or the pre-ReLU variant) +
    forward_head.
    """
    if want <= {"logits"}:
        return {"logits": model(x)}
    if "blocks" in want:
        final, blocks = model.forward_blocks(x)
        features = {"blocks": blocks, "stages": [([b[0] for b in blocks[:1]] + [b[-1] for b in blocks])[i]
                                                 for i in stages]}
    elif "stages_pre_relu" in want:
        final, intermediates, pre_relu = model.forward_intermediates_pre_relu(x, indices=stages)
        features = {"stages": intermediates, "stages_pre_relu": pre_relu}
    else:
        final, intermediates = model.forward_intermediates(x, indices=stages)
        features = {"stages": intermediates}
    if "stages_pre_relu" in want and "stages_pre_relu" not in features:  # with blocks: a second pass
        features["stages_pre_relu"] = model.forward_intermediates_pre_relu(x, indices=stages)[2]
    if "stages_pre_relu_bn" in want:
        features["stages_pre_relu_bn"] = pre_relu_bn(model, stages, len(x))
    pre_logits = model.forward_head(final, pre_logits=True).flatten(1)
    if "pre_logits" in want:
        features["pre_logits"] = pre_logits
    classifier = model.get_classifier()
    if isinstance(classifier, nn.Conv2d):  # timm heads with a 1x1-conv classifier (ResNetV2)
        features["logits"] = classifier(pre_logits[:, :, None, None]).flatten(1)
    else:
        features["logits"] = classifier(pre_logits)
    return features


def pre_relu_bn(model: nn.Module, stages: list[int], n: int) -> list[torch.Tensor]:
    """Per tapped intermediate (in forward order), its pre-ReLU BN's (weight, bias) as N x 2 x C."""
    batchnorms = model.pre_relu_batchnorms()
    taps = sorted(set(feature_take_indices(len(batchnorms), stages)[0]))
    return [torch.stack([batchnorms[i].weight, batchnorms[i].bias]).detach().expand(n, -1, -1) for i in taps]
