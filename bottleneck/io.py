"""Save and load a trained mask with safetensors: plain tensors plus JSON metadata.

Loading never unpickles: the file holds tensors and a JSON string with the
arguments that rebuild the mask, nothing executable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

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
    lazy = [name for name, parameter in masked.named_parameters() if is_lazy(parameter)]
    if lazy:
        raise BottleneckError(
            f"call the masked model on inputs once before saving: {len(lazy)} of its weights take their shape "
            f"from the first inputs and have none yet ({', '.join(lazy[:3])})"
        )
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
    if not Path(path).is_file():
        raise BottleneckError(f"no mask file at {path}" + (" (a folder)" if Path(path).is_dir() else ""))
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own SafetensorError, not an OSError
        raise BottleneckError(f"{path} is not a bottleneck mask file (not safetensors: {error})") from error
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
    _load_state(masked.mask, mask_state, "the mask", path)
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
            _load_state(module, state, f"the masked model's {attribute}", path)
    model_state = {k[len(_MODEL):]: v for k, v in tensors.items() if k.startswith(_MODEL)}
    if load_model and model_state:
        _load_state(masked.model, model_state, f"the {type(masked.model).__name__} given", path,
                    hint="load it with the model it was saved with, or load_mask(..., load_model=False) to keep "
                         "the model's own weights")
    return masked


def _load_state(module: nn.Module, state: dict[str, Tensor], what: str, path: str | Path, *, hint: str = "") -> None:
    """``module.load_state_dict(state)``; a file that does not fit says what differs.

    torch's own error lists every missing key (hundreds for a transformer) and is raised
    from deep in ``nn.Module``; this one counts them, names the first few and says what to do.
    """
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        own = module.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        resized = [f"{key} {tuple(state[key].shape)} in the file, {tuple(own[key].shape)} here"
                   for key in sorted(set(own) & set(state))
                   if not is_lazy(own[key]) and own[key].shape != state[key].shape]
        parts = [f"{len(found)} {label} (first: {', '.join(found[:3])})" for found, label in (
            (missing, "of its entries are not in the file"), (unexpected, "entries of the file name nothing in it"),
            (resized, "entries have another shape")) if found]
        raise BottleneckError(f"{path} does not fit {what}: {'; '.join(parts) or error}"
                              + (f"; {hint}" if hint else "")) from error


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
