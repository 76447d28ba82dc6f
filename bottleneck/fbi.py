"""FBI: feature-norm relevance (Levi & Gilboa, ECCV 2024, "Fast and Simple Explainability for Point Cloud Networks").

The relevance of a unit is the L2 norm of its feature vector at a layer just
before the model's global pooling (PointNet's ``point_mlp``): units with large
features are the ones a max (or mean) pool can pick up. It needs no training
and one forward pass, which makes it a strong, cheap baseline for the mask.

The features are read at any per-unit layer the modality supports for hidden
insertion (:meth:`~bottleneck.modality.Modality.hidden_to_units`) and mapped
back onto the input units (:meth:`~bottleneck.modality.Modality.relevance_to_input`),
so the same function serves point clouds, images (a CNN feature map) and text
(per-token hidden states).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .errors import BottleneckError, describe
from .modes import evaluating
from .wrap import MaskedModel, _find_layer

__all__ = ["feature_norm"]


def feature_norm(masked: MaskedModel, inputs: Any, target: Any = None, *, layer: str) -> Tensor:
    """``[N]`` relevance of the input units: the norm of each unit's features at ``layer``.

    :param masked: a :class:`~bottleneck.wrap.MaskedModel` (from :func:`~bottleneck.attach`);
        only its model and modality adapter are used, not its mask.
    :param inputs: the model's input, as the masked model takes it.
    :param target: ignored; FBI is class-agnostic (as in the paper), the argument is
        accepted so every attribution baseline has one signature.
    :param layer: dotted name of a per-unit layer before the global pooling
        (``"point_mlp"`` for PointNet and DGCNN, ``"layer3"`` for a CNN,
        ``"bert.encoder.layer.1"`` or ``"token_features"`` for text).
    :returns: ``[N]`` float relevance aligned with
        ``masked.adapter(inputs).to_units(inputs, with_graph=False)``.

    The model runs once, without gradients and in eval mode (its training flag is
    restored afterwards). Norms are of the layer's raw features (the adapter's
    ``units.meta["features"]`` when it keeps them, else ``units.x``).
    """
    del target  # class-agnostic
    if not isinstance(masked, MaskedModel):
        raise BottleneckError(
            f"feature_norm needs a masked model from bottleneck.attach(model, ...) (got {describe(masked)})"
        )
    module = _find_layer(masked.model, layer)
    adapter = masked.adapter(inputs)
    input_units = adapter.to_units(inputs, with_graph=False)
    captured: list[Any] = []

    def capture(_module: nn.Module, _args: Any, output: Any) -> None:
        captured.append(output)

    model = masked.model
    handle = module.register_forward_hook(capture)
    try:
        with evaluating(model), torch.no_grad():
            adapter.call_model(model, inputs)
    finally:
        handle.remove()
    if not captured:
        raise BottleneckError(f"layer {layer!r} did not run in the model's forward pass")
    if len(captured) > 1:
        raise BottleneckError(
            f"layer {layer!r} ran {len(captured)} times in one forward pass; name a layer that runs once"
        )
    try:
        hidden = adapter.hidden_to_units(captured[0], with_graph=False, inputs=input_units)
    except BottleneckError as error:
        raise BottleneckError(f"feature_norm(layer={layer!r}): {error}") from None
    features = hidden.meta.get("features", hidden.x)
    norms = features.float().norm(dim=-1)
    return adapter.relevance_to_input(norms, hidden, input_units)
