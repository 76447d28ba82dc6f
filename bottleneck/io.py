"""Save and load a trained mask with safetensors: plain tensors plus JSON metadata.

Loading never unpickles: the file holds tensors and a JSON string with the
arguments that rebuild the mask, nothing executable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from .errors import BottleneckError
from .wrap import MaskedModel

FORMAT = "bottleneck-mask/1"
_MASK, _MODEL = "mask.", "model."
#: Modules the masked model owns besides the mask layer, by file prefix.
_OWNED = {"baseline.": "baseline_state", "encoder.": "unit_encoder", "faithfulness.": "faithfulness"}


def save_mask(
    masked: MaskedModel, path: str | Path, *, include_model: bool = False, extra: dict[str, Any] | None = None
) -> Path:
    """Write the mask's weights (and optionally the wrapped model's) to ``path``.

    :param extra: JSON-serialisable facts stored beside the configuration (for example
        which testbed built the model, so ``bottleneck explain`` can rebuild it).
    """
    if masked.modality_name is None:
        raise BottleneckError("call the masked model on inputs once before saving (its modality is unknown)")
    tensors = {_MASK + k: v.detach().contiguous().cpu() for k, v in masked.mask.state_dict().items()}
    for prefix, attribute in _OWNED.items():
        module = getattr(masked, attribute)
        if module is not None:
            tensors.update({prefix + k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()})
    if include_model:
        tensors.update({_MODEL + k: v.detach().contiguous().cpu() for k, v in masked.model.state_dict().items()})
    config = masked.config()
    if extra:
        config["extra"] = extra
    metadata = {"format": FORMAT, "config": json.dumps(config)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    """The configuration stored in a saved mask file."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise BottleneckError(f"{path} is not a bottleneck mask file (format {metadata.get('format')!r})")
    return json.loads(metadata["config"])


def load_mask(masked: MaskedModel, path: str | Path, *, load_model: bool = True) -> MaskedModel:
    """Load weights saved by :func:`save_mask` into ``masked`` (and its model, if saved)."""
    config = read_config(path)
    if config["gate"] != masked.gate_name:
        raise BottleneckError(f"{path} holds a {config['gate']!r} mask; this model has a {masked.gate_name!r} one")
    tensors = load_file(str(path), device=str(masked.mask.constraint.multiplier.device))
    mask_state = {k[len(_MASK):]: v for k, v in tensors.items() if k.startswith(_MASK)}
    masked.mask.load_state_dict(mask_state)
    if masked.modality_name is None:  # adopt the saved modality, options and baseline
        masked.modality_name, masked.baseline = config["modality"], config["baseline"]
        masked.modality_options = dict(config.get("modality_options", {}))
    masked.adapter()
    for prefix, attribute in _OWNED.items():
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if state:
            module = getattr(masked, attribute)
            if module is None:
                raise BottleneckError(f"{path} holds {attribute} weights but this masked model has no {attribute}")
            module.load_state_dict(state)
    model_state = {k[len(_MODEL):]: v for k, v in tensors.items() if k.startswith(_MODEL)}
    if load_model and model_state:
        masked.model.load_state_dict(model_state)
    return masked


def load(path: str | Path, model: nn.Module) -> MaskedModel:
    """Rebuild a :class:`MaskedModel` around ``model`` from a saved mask file."""
    config = read_config(path)
    masked = MaskedModel(
        model, config["modality"], mode=config["mode"], gate=config["gate"], keep=config["keep"],
        where=config["where"], baseline=config["baseline"],
        epsilon=config.get("epsilon", 0.1), sparsity_weight=config.get("sparsity_weight", 5.0),
        modality_options=config.get("modality_options", {}), **config["layer_options"],
    )
    return load_mask(masked, path)
