"""Text as units: the tokens of ``input_ids`` (padding excluded), gated at the embedding output.

Inputs are ``input_ids`` ``[B, L]`` (a tensor, a dict or a ``transformers``
``BatchEncoding`` with ``attention_mask``), or ``inputs_embeds`` ``[B, L, D]``
in a dict for models that take embeddings. Units are the real tokens;
special tokens (``special_ids=``, e.g. ``tokenizer.all_special_ids``) are kept
open and are not units unless ``mask_special=True``. The unit graph joins
adjacent tokens.

The mask is inserted at the output of the model's input embedding — found by
``get_input_embeddings()`` on Hugging Face models, else the first
``nn.Embedding``, or the module named by ``embedding=`` — by a forward hook,
so no hand-written getter is needed (DiffMask needed one per model). Each
token's embedding is blended with the baseline by its gate:

* ``learned`` (default) — a learned placeholder vector initialised to the
  embedding of ``placeholder_id`` ([MASK], else [PAD]) — DiffMask's choice;
* ``zero`` — the zero vector;
* ``remove`` — for models that take an ``attention_mask``: closed tokens are
  hidden from attention in training and removed in sparse inference, so
  training sees what inference sees. By default a closed token gets no
  gradient (it is hidden) and an open one the gradient of scaling its
  embedding. With ``attention_gates=True`` (Hugging Face models, hard 0/1
  gates such as ``topk``) training
  instead multiplies each token's attention weight by its gate, as the ViT's
  patches are gated (:func:`bottleneck.key_bias_attention.gate_attention_bias`):
  embeddings stay whole and closed tokens get a gradient too, what opening
  them would do (bounded per token).

The sparse path removes dropped tokens and re-packs each sequence shorter,
left-aligned, with its attention mask and the kept tokens' original
``position_ids`` (when the model takes them), so the encoder runs on shorter
sequences.

Hidden insertion (``attach(model, "text", where="bert.encoder.layer.0")``)
masks a layer whose output holds one vector per input token: ``[B, L, H]``, or
a tuple / ``ModelOutput`` whose first element is that (as Hugging Face layers
return; the gated output keeps the structure). The units are the same tokens
as at the input (padding excluded, special tokens only with
``mask_special=True``); their scorer features are the hidden vectors, scaled to
unit RMS per sequence, plus the relative position. Per-token layers: a BERT's
``bert.embeddings``, ``bert.encoder.layer.<i>`` (and their sub-layers),
``bert.encoder``; the :class:`~bottleneck_text.models.BiLSTMClassifier`'s
``token_features``. Nothing can be removed in the middle of a network, so at a
hidden layer the baselines are ``zero`` (also what ``remove`` means there) and
``learned`` (a learned vector; it needs the hidden width to equal the
embedding width, as in BERT). Relevance maps to the input tokens unchanged.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bottleneck.errors import BottleneckError, describe
from bottleneck.key_bias_attention import (
    check_gradient_share,
    gate_attention_bias,
    key_bias_attention_on,
)
from bottleneck.modality import Modality
from bottleneck.units import Units

from .shorten import Packed, forward_packed, pack_kept

OPTIONS = ("embedding", "special_ids", "mask_special", "placeholder_id", "attention_gates",
           "attention_gradient_share")
#: Largest gradient one token's gate takes through its attention bias (``attention_gates``):
#: the sign is what a top-k ranking acts on; unbounded, closed tokens of a small BERT got
#: 1e10-1e12 (see :func:`~bottleneck.key_bias_attention.gate_attention_bias`).
ATTENTION_GATE_GRAD_BOUND = 1.0
#: Baselines understood at a hidden layer (``remove`` means ``zero`` there).
HIDDEN_BASELINES = ("remove", "zero", "learned")


@dataclass
class TextBatch:
    """Parsed text input: ids or embeddings, the attention mask, and how the model is called."""

    input_ids: Tensor | None  # [B, L] long
    inputs_embeds: Tensor | None  # [B, L, D] float
    attention_mask: Tensor  # [B, L] bool
    extra: dict[str, Any]  # other keyword arguments for the model
    kind: str  # "tensor" (model(ids)) or "mapping" (model(**inputs))

    @property
    def shape(self) -> tuple[int, int]:
        ref = self.input_ids if self.input_ids is not None else self.inputs_embeds
        return int(ref.shape[0]), int(ref.shape[1])


@dataclass
class GatedText:
    """Text input plus a ``[B, L]`` gate per token, applied at the embedding output."""

    batch: TextBatch
    gates: Tensor  # [B, L], 1 on tokens that are not units
    baseline: str
    state: nn.Module | None


class LearnedPlaceholder(nn.Module):
    """A learned embedding vector that replaces dropped tokens (DiffMask's placeholder)."""

    def __init__(self, init: Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(init.detach().clone())

    def forward(self) -> Tensor:
        return self.value


def _token_states(features: Any, shape: tuple[int, int]) -> Tensor:
    """The ``[B, L, H]`` per-token tensor of a layer's output (a tensor, tuple or ``ModelOutput``)."""
    first = features
    if isinstance(features, Mapping):
        first = next(iter(features.values()), None)
    elif isinstance(features, (tuple, list)):
        first = features[0] if features else None
    if isinstance(first, Tensor) and first.is_floating_point() and first.dim() == 3 and tuple(first.shape[:2]) == shape:
        return first
    raise BottleneckError(
        "hidden insertion on a text model needs a layer whose output holds one vector per input token: "
        f"[B, L, H] with B, L = {shape}, or a tuple / ModelOutput starting with it (got {describe(features)}); "
        "name a per-token layer before the pooling (e.g. bert.encoder.layer.0)"
    )


def _replace_token_states(features: Any, gated: Tensor) -> Any:
    """``features`` with its per-token tensor replaced by ``gated`` (same structure)."""
    if isinstance(features, Tensor):
        return gated
    if isinstance(features, Mapping):
        out = copy.copy(features)
        out[next(iter(features))] = gated
        return out
    return type(features)([gated, *features[1:]]) if isinstance(features, list) else (gated, *features[1:])


def _chain_edges(rows: Tensor) -> Tensor:
    """``[2, E]`` edges joining adjacent units of the same sequence (both directions)."""
    same = rows[1:] == rows[:-1]
    index = torch.arange(rows.numel(), device=rows.device)
    forward = torch.stack([index[:-1][same], index[1:][same]])
    return torch.cat([forward, forward.flip(0)], dim=1)


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _is_hugging_face(model: nn.Module) -> bool:
    """Whether ``model`` is a ``transformers`` model (which takes 4-D float attention masks).

    Without ``transformers`` imported no model can be one, so it is not imported here.
    """
    module = sys.modules.get("transformers")
    return module is not None and isinstance(model, module.PreTrainedModel)


def find_embedding(model: nn.Module, name: str | None = None) -> nn.Module:
    """The module whose output is the token embeddings: named, ``get_input_embeddings()``, or the first ``nn.Embedding``."""
    if name is not None:
        try:
            return model.get_submodule(name)
        except AttributeError:
            raise BottleneckError(f"embedding={name!r} names no module of {type(model).__name__}") from None
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter):
        try:
            found = getter()
        except (NotImplementedError, AttributeError):
            found = None
        if isinstance(found, nn.Module):
            return found
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            return module
    raise BottleneckError(
        f"{type(model).__name__} has no input embedding (no get_input_embeddings(), no nn.Embedding); "
        "name it with attach(..., embedding='module.name') or pass inputs_embeds"
    )


class TextModality(Modality):
    """Adapter for text classifiers: Hugging Face models or any module with a token embedding.

    :param embedding: the embedding module (configured from the model), or ``None``.
    :param special_ids: token ids that are never masked (unless ``mask_special``).
    :param mask_special: make special tokens units too.
    :param placeholder_id: token whose embedding initialises the learned baseline.
    :param attends: the model takes an ``attention_mask`` (enables ``remove``).
    :param attention_gates: with ``remove``, training gates each token's attention weight
        (a per-key bias, Hugging Face models and 0/1 gates only) instead of its embedding.
    :param attention_gradient_share: with ``attention_gates``, the share of a batch's
        texts whose token gates get their gradient through each attention layer, drawn
        anew per layer and scaled to keep the gradient unbiased (1, the default: every
        text; see :mod:`~bottleneck.key_bias_attention`).
    """

    name = "text"
    baselines = ("learned", "zero")
    layer_defaults: ClassVar[dict[str, Any]] = {"keep_warmup": 0.5, "constraint_damping": 10.0}

    def __init__(
        self,
        embedding: nn.Module | None = None,
        special_ids: tuple[int, ...] = (),
        mask_special: bool = False,
        placeholder_id: int | None = None,
        attends: bool = False,
        takes_positions: bool = False,
        attention_gates: bool = False,
        attention_gradient_share: float = 1.0,
    ) -> None:
        self.embedding = embedding
        self.special_ids = tuple(int(i) for i in special_ids)
        self.mask_special = bool(mask_special)
        self.placeholder_id = placeholder_id
        self.attends, self.takes_positions = attends, takes_positions
        self.attention_gates = attention_gates
        self.attention_gradient_share = check_gradient_share(attention_gradient_share, "attention_gradient_share")
        if not attention_gates and self.attention_gradient_share != 1.0:
            raise BottleneckError(
                "attention_gradient_share applies to token gates trained through the attention; "
                f"set attention_gates=True (got attention_gradient_share={attention_gradient_share!r} without it)"
            )
        if attends:
            self.baselines = ("remove", "learned", "zero")

    # -- configuration --------------------------------------------------------
    def configure(self, model: nn.Module, **options: Any) -> TextModality:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise BottleneckError(f"text modality options are {list(OPTIONS)} (got unknown {unknown})")
        embedding = find_embedding(model, options.get("embedding"))
        config = getattr(model, "config", None)
        placeholder = options.get("placeholder_id")
        if placeholder is None:
            for key in ("mask_token_id", "pad_token_id"):
                value = getattr(config, key, None)
                if isinstance(value, int):
                    placeholder = value
                    break
        if placeholder is None and isinstance(embedding, nn.Embedding) and embedding.padding_idx is not None:
            placeholder = int(embedding.padding_idx)
        special = options.get("special_ids") or ()
        attention_gates = options.get("attention_gates", False)
        if not isinstance(attention_gates, bool):
            raise BottleneckError(f"attention_gates must be True or False (got {attention_gates!r})")
        if attention_gates and not _is_hugging_face(model):
            raise BottleneckError(
                "attention_gates=True needs a Hugging Face model (it passes a 4-D float attention mask); "
                f"got {type(model).__name__}"
            )
        return TextModality(
            embedding, tuple(special), bool(options.get("mask_special", False)), placeholder,
            attends=_accepts(model, "attention_mask"), takes_positions=_accepts(model, "position_ids"),
            attention_gates=attention_gates,
            attention_gradient_share=options.get("attention_gradient_share", 1.0),
        )

    def check_baseline(self, baseline: str) -> str:
        baseline = super().check_baseline(baseline)
        if self.attention_gates and baseline != "remove":
            raise BottleneckError(
                f"attention_gates=True gates the attention of the remove baseline; got baseline={baseline!r}"
            )
        return baseline

    def make_baseline(self, baseline: str) -> nn.Module | None:
        if baseline != "learned":
            return None
        weight = getattr(self.embedding, "weight", None)
        if not isinstance(weight, Tensor):
            raise BottleneckError("the learned baseline needs the embedding's weight to size the placeholder")
        if self.placeholder_id is not None and 0 <= self.placeholder_id < weight.shape[0]:
            return LearnedPlaceholder(weight[self.placeholder_id])
        return LearnedPlaceholder(torch.zeros(weight.shape[1], dtype=weight.dtype, device=weight.device))

    def accepts(self, inputs: Any) -> bool:
        if isinstance(inputs, Mapping):
            return "input_ids" in inputs or "inputs_embeds" in inputs
        return isinstance(inputs, Tensor) and inputs.dim() == 2 and not inputs.is_floating_point()

    # -- inputs -> units ------------------------------------------------------
    def parse(self, inputs: Any) -> TextBatch:
        """Validate ``inputs`` and split them into ids/embeddings, attention mask and the rest."""
        if isinstance(inputs, Tensor):
            ids, embeds, mask, extra, kind = inputs, None, None, {}, "tensor"
        elif isinstance(inputs, Mapping):
            extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "inputs_embeds", "attention_mask")}
            ids, embeds, mask, kind = inputs.get("input_ids"), inputs.get("inputs_embeds"), inputs.get("attention_mask"), "mapping"
            if ids is None and embeds is None:
                raise BottleneckError(f"text inputs need input_ids or inputs_embeds (got keys {sorted(inputs)})")
        else:
            raise BottleneckError(
                f"text inputs must be input_ids [B, L], or a dict / BatchEncoding with input_ids and "
                f"attention_mask (got {describe(inputs)})"
            )
        if ids is not None:
            if not isinstance(ids, Tensor) or ids.dim() != 2:
                raise BottleneckError(f"input_ids must be a [B, L] tensor (got {describe(ids)})")
            if ids.is_floating_point() or ids.dtype == torch.bool:
                raise BottleneckError(f"input_ids must be integer token ids, not {ids.dtype} (got {describe(ids)})")
            vocab = getattr(self.embedding, "num_embeddings", None)
            if ids.numel() and (int(ids.min()) < 0 or (vocab is not None and int(ids.max()) >= vocab)):
                raise BottleneckError(
                    f"input_ids must lie in [0, {vocab}) (the embedding's vocabulary); got ids from "
                    f"{int(ids.min())} to {int(ids.max())}"
                )
            ref = ids
        else:
            if not isinstance(embeds, Tensor) or embeds.dim() != 3 or not embeds.is_floating_point():
                raise BottleneckError(f"inputs_embeds must be a [B, L, D] float tensor (got {describe(embeds)})")
            if not torch.isfinite(embeds).all():
                raise BottleneckError("inputs_embeds holds NaN or Inf values")
            ref = embeds
        batch_size, length = int(ref.shape[0]), int(ref.shape[1])
        if batch_size == 0 or length == 0:
            raise BottleneckError(f"empty text batch: got {describe(ref)} (every sequence needs >= 1 token)")
        if mask is None:
            mask = torch.ones(batch_size, length, dtype=torch.bool, device=ref.device)
        else:
            if not isinstance(mask, Tensor) or tuple(mask.shape) != (batch_size, length):
                raise BottleneckError(
                    f"attention_mask must be [B, L] = [{batch_size}, {length}] like the ids (got {describe(mask)})"
                )
            if mask.is_floating_point() and not ((mask == 0) | (mask == 1)).all():
                raise BottleneckError("attention_mask must hold only 0 and 1")
            mask = mask.bool()
        empty = (~mask).all(1)
        if empty.any():
            rows = empty.nonzero().view(-1)[:5].tolist()
            raise BottleneckError(f"sequences {rows} are all padding (attention_mask is 0 everywhere); every sequence needs >= 1 token")
        return TextBatch(ids, embeds, mask, extra, kind)

    def unit_mask(self, batch: TextBatch) -> Tensor:
        """``[B, L]`` bool: which tokens are units (real, and not special unless masked too)."""
        units = batch.attention_mask.clone()
        if self.special_ids and not self.mask_special and batch.input_ids is not None:
            special = torch.isin(batch.input_ids, torch.tensor(self.special_ids, device=batch.input_ids.device))
            units &= ~special
        no_units = ~units.any(1)
        if no_units.any():
            rows = no_units.nonzero().view(-1)[:5].tolist()
            raise BottleneckError(
                f"sequences {rows} hold only special tokens: nothing to mask (pass mask_special=True to mask them)"
            )
        return units

    def embed(self, batch: TextBatch) -> Tensor:
        """``[B, L, D]`` token embeddings (detached): the scorer's view of each token."""
        if batch.inputs_embeds is not None:
            return batch.inputs_embeds.detach()
        if self.embedding is None:
            raise BottleneckError("the text modality must be configured with the model (use attach)")
        with torch.no_grad():
            return self.embedding(batch.input_ids).detach()

    def to_units(self, inputs: Any, *, with_graph: bool = True) -> Units:
        batch = self.parse(inputs)
        units_mask = self.unit_mask(batch)
        rows, cols = units_mask.nonzero(as_tuple=True)
        embeddings = self.embed(batch)
        lengths = batch.attention_mask.sum(1).clamp(min=1).to(embeddings.dtype)
        relative = (cols.to(embeddings.dtype) / lengths[rows]).unsqueeze(-1)
        features = torch.cat([embeddings[rows, cols], relative], dim=-1)
        edge_index = _chain_edges(rows) if with_graph else None
        return Units(
            x=features, batch=rows, num_samples=batch.shape[0], pos=cols.unsqueeze(-1).float(),
            edge_index=edge_index, meta={"text": batch, "rows": rows, "cols": cols, "units_mask": units_mask},
        )

    # -- gates -> inputs ------------------------------------------------------
    def full_gates(self, units: Units, gates: Tensor) -> Tensor:
        """``[N]`` unit gates -> ``[B, L]`` token gates (1 on tokens that are not units)."""
        batch: TextBatch = units.meta["text"]
        full = torch.ones(batch.shape, dtype=gates.dtype, device=gates.device)
        return full.index_put((units.meta["rows"], units.meta["cols"]), gates)

    def apply_gates(self, inputs: Any, units: Units, gates: Tensor, baseline: str, **state: Any) -> Any:
        self.check_baseline(baseline)
        return GatedText(units.meta["text"], self.full_gates(units, gates), baseline, state.get("state"))

    def drop_units(self, inputs: Any, units: Units, keep: Tensor) -> Any:
        batch: TextBatch = units.meta["text"]
        if batch.input_ids is None:
            raise BottleneckError("the sparse path re-packs input_ids; inputs_embeds cannot be shortened here")
        kept = self.full_gates(units, keep.to(torch.float32)) > 0.5
        return pack_kept(batch.input_ids, batch.attention_mask.long(), kept & batch.attention_mask)

    def call_model(self, model: nn.Module, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(inputs, Packed):
            if not self.attends:  # ids-only model: shorter rows, right-padded with the pad id
                return model(inputs.input_ids, *args, **kwargs)
            if args:
                raise BottleneckError("the text sparse path passes inputs by keyword; give extra model arguments as keywords")
            return forward_packed(model, inputs, **kwargs)
        if isinstance(inputs, GatedText):
            return self._call_gated(model, inputs, *args, **kwargs)
        return model(inputs, *args, **kwargs) if not isinstance(inputs, Mapping) else model(*args, **inputs, **kwargs)

    def _baseline_vector(self, gated: GatedText, like: Tensor) -> Tensor:
        if gated.baseline == "learned":
            if gated.state is None:
                raise BottleneckError("the learned baseline needs its state module (make_baseline)")
            return gated.state().to(like.dtype)
        return torch.zeros((), dtype=like.dtype, device=like.device)

    def _call_gated(self, model: nn.Module, gated: GatedText, *args: Any, **kwargs: Any) -> Any:
        batch = gated.batch
        if gated.baseline == "remove" and self.attention_gates and gated.gates.requires_grad:
            return self._call_attention_gated(model, gated, *args, **kwargs)
        gate = gated.gates.unsqueeze(-1)
        mask = batch.attention_mask
        if gated.baseline == "remove":
            mask = mask & (gated.gates > 0)
        if batch.inputs_embeds is not None:
            embeds = batch.inputs_embeds
            blended = gate.to(embeds.dtype) * embeds + (1 - gate.to(embeds.dtype)) * self._baseline_vector(gated, embeds)
            call = {**batch.extra, "inputs_embeds": blended}
            if self.attends:
                call["attention_mask"] = mask.long()
            return model(*args, **call, **kwargs)

        def blend(module: nn.Module, args_: Any, output: Tensor) -> Tensor:
            if not isinstance(output, Tensor) or output.shape[:2] != gate.shape[:2]:
                raise BottleneckError(
                    f"the embedding output must be [B, L, D] with B, L = {tuple(gate.shape[:2])} "
                    f"(got {describe(output)}); name the token embedding with attach(..., embedding=...)"
                )
            g = gate.to(output.dtype)
            return g * output + (1 - g) * self._baseline_vector(gated, output)

        handle = self.embedding.register_forward_hook(blend)
        try:
            if batch.kind == "tensor" and not self.attends:
                return model(batch.input_ids, *args, **kwargs)
            call = {**batch.extra, "input_ids": batch.input_ids}
            if self.attends:
                call["attention_mask"] = mask.long()
            return model(*args, **call, **kwargs)
        finally:
            handle.remove()

    def _call_attention_gated(self, model: nn.Module, gated: GatedText, *args: Any, **kwargs: Any) -> Any:
        """Training with ``attention_gates``: whole embeddings, each key's attention weight times its gate.

        Padding gets weight 0, so the bias replaces the attention mask. With 0/1 gates the
        logits are those of the hidden-token path: closed keys are left out of the value
        (:func:`~bottleneck.key_bias_attention.key_bias_attention`), and only their gradient
        is that of the attention with them at :data:`~bottleneck.key_bias_attention.GATE_FLOOR`.
        Fractional gates are an error: a token whose attention weight is only scaled down
        can still be read, since the softmax renormalises -- the text demo's BERT with
        hard-concrete gates learned gates of 0 on every token (keep rate 0.000, masked
        accuracy 0.505) while still reading them (its top-k ranking gave 0.999 sparse).
        Why: with tokens hidden, a closed token's gate gets no gradient and an open one
        only that of scaling its embedding. On the speed benchmark's BERT (keep 0.25,
        seeds 0, 1, 2) the sparse accuracy was 0.980, 0.967 and 0.881 that way against
        dense 1.000, 0.990 and 1.000, and 1.000, 0.990 and 0.500 (a collapse) this way.
        """
        batch = gated.batch
        if bool(((gated.gates > 0) & (gated.gates < 1)).any()):
            raise BottleneckError(
                "attention_gates=True needs hard 0/1 gates in training (gate='topk'); got fractional gates, "
                "and a token whose attention weight is only scaled down can still be read"
            )
        weights = gated.gates * batch.attention_mask.to(gated.gates.dtype)
        bias = gate_attention_bias(weights, grad_bound=ATTENTION_GATE_GRAD_BOUND)
        inputs = ({"inputs_embeds": batch.inputs_embeds} if batch.inputs_embeds is not None
                  else {"input_ids": batch.input_ids})
        dtype = batch.inputs_embeds.dtype if batch.inputs_embeds is not None else self._embedding_dtype()
        # fused SDPA kernels, the bias's gradient computed beside them
        with key_bias_attention_on(model, gradient_share=self.attention_gradient_share):
            return model(*args, **batch.extra, **inputs, attention_mask=bias.to(dtype), **kwargs)

    def _embedding_dtype(self) -> torch.dtype:
        weight = getattr(self.embedding, "weight", None)
        return weight.dtype if isinstance(weight, Tensor) and weight.is_floating_point() else torch.float32

    # -- hidden-layer insertion -----------------------------------------------
    def hidden_to_units(self, features: Any, *, with_graph: bool = True, inputs: Units | None = None) -> Units:
        if inputs is None or "text" not in inputs.meta:
            raise BottleneckError("hidden insertion on text needs the input units (inputs=)")
        hidden = _token_states(features, inputs.meta["text"].shape)
        rows, cols = inputs.meta["rows"], inputs.meta["cols"]
        values = hidden.detach()[rows, cols]
        # hidden states have arbitrary scale: the scorer sees them at unit RMS per sequence
        square = torch.zeros(inputs.num_samples, dtype=values.dtype, device=values.device)
        square = square.index_add(0, rows, values.pow(2).mean(-1))
        scale = (square / inputs.counts().to(values.dtype)).sqrt().clamp(min=1e-6)
        relative = inputs.x[:, -1:].to(values.dtype)
        edge_index = None
        if with_graph:
            edge_index = inputs.edge_index if inputs.edge_index is not None else _chain_edges(rows)
        return inputs.with_(
            x=torch.cat([values / scale[rows, None], relative], dim=-1), edge_index=edge_index,
            meta={**inputs.meta, "kind": "hidden", "features": values},
        )

    def apply_hidden_gates(self, features: Any, units: Units, gates: Tensor, baseline: str, **state: Any) -> Any:
        if baseline not in HIDDEN_BASELINES:
            raise BottleneckError(
                f"baseline at a hidden text layer must be one of {list(HIDDEN_BASELINES)} (got {baseline!r})"
            )
        hidden = _token_states(features, units.meta["text"].shape)
        gate = self.full_gates(units, gates.to(hidden.dtype)).unsqueeze(-1)
        if baseline == "learned":
            module = state.get("state")
            if module is None:
                raise BottleneckError("the learned baseline needs its state module (make_baseline)")
            value = module().to(hidden.dtype)
            if value.shape[-1] != hidden.shape[-1]:
                raise BottleneckError(
                    f"the learned baseline has the embedding width {value.shape[-1]} but this layer's "
                    f"tokens have width {hidden.shape[-1]}; use baseline='zero' at this layer"
                )
            gated = gate * hidden + (1.0 - gate) * value
        else:
            gated = gate * hidden
        return _replace_token_states(features, gated)

    def relevance_to_input(self, values: Tensor, hidden: Units, inputs: Units) -> Tensor:
        if values.shape[0] != inputs.num_units:
            raise BottleneckError(f"expected one value per input token unit ({inputs.num_units}), got {describe(values)}")
        return values

    # -- pictures -------------------------------------------------------------
    def token_rows(
        self, units: Units, values: Tensor, tokenizer: Any = None
    ) -> list[tuple[list[str], list[float], list[int]]]:
        """Per sample: (tokens as text, relevance per token, column of each token), padding left out.

        Tokens that are not units (special tokens) get relevance 1: they are always kept.
        """
        batch: TextBatch = units.meta["text"]
        full = self.full_gates(units, values.detach().float().to(units.meta["rows"].device)).cpu()
        mask = batch.attention_mask.cpu()
        ids = batch.input_ids.cpu() if batch.input_ids is not None else None
        rows = []
        for b in range(batch.shape[0]):
            cols = mask[b].nonzero().view(-1).tolist()
            if ids is None:
                words = [f"#{c}" for c in cols]
            elif tokenizer is not None:
                words = tokenizer.convert_ids_to_tokens([int(ids[b, c]) for c in cols])
            else:
                words = [str(int(ids[b, c])) for c in cols]
            rows.append((words, [float(full[b, c]) for c in cols], cols))
        return rows

    def render(self, inputs: Any, units: Units, relevance: Tensor, out_dir: Path, **options: Any) -> list[Path]:
        """An HTML page highlighting the tokens of up to ``max_samples`` (default 8) sequences.

        :param options: ``tokenizer`` (turns ids into text), ``kept`` (``[N]`` bool units kept),
            ``evidence`` (``[B, L]`` bool ground truth), ``captions`` (list of str),
            ``prefix`` (file name, default ``"tokens"``).
        """
        from .render import render_html

        max_samples = int(options.get("max_samples", 8))
        kept = options.get("kept")
        kept_rows = self.token_rows(units, kept.float(), None) if kept is not None else None
        evidence = options.get("evidence")
        captions = options.get("captions")
        examples = []
        for i, (words, values, cols) in enumerate(self.token_rows(units, relevance, options.get("tokenizer"))):
            if i >= max_samples:
                break
            example = {"tokens": words, "relevance": values, "caption": captions[i] if captions else f"sample {i}"}
            if kept_rows is not None:
                example["kept"] = [v > 0.5 for v in kept_rows[i][1]]
            if evidence is not None:
                example["evidence"] = [bool(evidence[i, c]) for c in cols]
            examples.append(example)
        return [render_html(examples, Path(out_dir) / f"{options.get('prefix', 'tokens')}.html")]
