"""``bottleneck bench speed``: what the mask costs in training and explanation, and what it saves.

Every figure is a ratio of two things timed side by side in one process, in
turn (a, b, a, b, ...: :func:`~bottleneck.timing.interleaved`), after warm-up,
as the ratio of medians, so load changes on a shared machine hit both alike:

* ``train_overhead``: one training step (forward, backward, optimiser step) of the
  jointly masked model over one step of the plain model, same batch;
* ``explain_overhead``: one explanation (``MaskedModel.explain``, explain-mode mask)
  over one plain forward pass, same batch;
* ``sparse_speedup``: the dense model's forward over ``MaskedModel.sparse(x, keep=k)``
  (mask, per-sample top-k, dropped units removed, model on the rest), for each keep,
  with the test accuracy at that keep beside the dense model's;
* ``scaling``: :mod:`bottleneck.scaling` (mask layer time, kNN time and memory per size).

Each plugin registers its models as :class:`SpeedCase` s through
``Demo(speed=prepare)`` (no new hook), as it registers its ``Testbed``.
"""

from __future__ import annotations

import copy
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import BestOnValidation
from .devices import torch_device
from .distill import DenseTeacher
from .errors import BottleneckError
from .sparse_timing import time_sparse, time_sparse_in_child
from .timing import interleaved, quartiles, steady_heap
from .train import _to, call_model, evaluate, fit
from .wrap import _logits_of, attach

#: Keep fractions of the sparse path.
KEEPS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
#: The issue's targets: overheads at most these ratios.
TRAIN_OVERHEAD_MAX = 1.25
EXPLAIN_OVERHEAD_MAX = 1.5
#: Sparse accuracy at the target keep may fall at most this far below dense.
ACCURACY_DROP_MAX = 0.02
#: The keep at which each model's sparse speed-up target applies.
TARGET_KEEP = 0.25
#: A joint run whose best held-out sparse accuracy is more than this under the dense model's
#: held-out accuracy is run again, up to ``SpeedCase.joint_attempts`` runs: the tolerance
#: the accuracy claim holds the test accuracies to (:data:`ACCURACY_DROP_MAX`).
RESTART_MARGIN = ACCURACY_DROP_MAX


@dataclass
class SpeedCase:
    """One model of the speed benchmark.

    :param name: the model's name in the report (``PointNet``, ``ViT``, ...).
    :param modality: registered modality name.
    :param make_model: builds the model with fresh weights (seeded by the caller).
    :param batch: ``(inputs, targets)``: the batch every timing runs on.
    :param attach_options: :func:`~bottleneck.attach` options every mask of this model needs
        (``special_ids``, ...).
    :param explain_options: extra options of the explain-mode mask (``{"where": "layer2"}``).
    :param sparse_target: the sparse speed-up this model must reach at keep 0.25; ``None``
        leaves it out of ``sparse_speedup`` (a CNN cannot skip pixels).
    :param train: re-iterable ``(inputs, targets)`` batches for the accuracy models.
    :param test: ``(inputs, targets)`` batches the accuracies are measured on.
    :param epochs: epochs of the plain (dense) model.
    :param lr: its learning rate.
    :param joint_epochs: epochs of the jointly masked model, continuing from the plain one.
    :param joint_lr: its learning rate (of the wrapped model's weights).
    :param joint_mask_lr: learning rate of the mask's own parameters in that run (``None``:
        ``joint_lr``): the mask starts from scratch on a trained model.
    :param joint_options: extra options of the jointly masked model (``gate``, ``baseline``).
    :param joint_distill: weight of distillation from the dense model in that run
        (:class:`~bottleneck.distill.DenseTeacher`; 0: none).
    :param joint_max_grad_norm: gradient-norm clip of that run (``fit(max_grad_norm=)``; ``None``: none).
    :param validation: held-out ``(inputs, targets)`` batches (never the test data): with them,
        the masked run keeps its epoch with the best sparse accuracy at keep 0.25 and the dense
        run its epoch with the best accuracy (:class:`~bottleneck.checkpoint.BestOnValidation`),
        each from ``select_from`` of the joint epochs on, so both get the same selection.
    :param select_from: fraction of the joint epochs before which no epoch is selected (the
        mask's budget is still falling during a keep warm-up).
    :param joint_attempts: with ``validation``, the most joint runs made: a run whose best
        held-out sparse accuracy at keep 0.25 is more than :data:`RESTART_MARGIN` under the
        dense model's held-out accuracy (as the mask is attached) is made again from the
        same dense model with a new mask (the random stream has moved on), and the run
        with the best held-out score is kept; the test data never decides. Every run's
        score is in ``details.sparse.<model>.selection.masked.attempts``. The first run is
        the one a single attempt makes, to the bit.
    :param settings: sizes and anything else that describes the case, for the report.
    :param judged: ``False`` for a variant timed beside a judged model (e.g. a smaller size
        of it): its figures are in ``details`` and the Markdown table, marked, but not in
        ``train_overhead`` / ``explain_overhead`` and not held to the targets.
    :param large_batch: a larger ``(inputs, targets)`` batch of the same data on which the
        speed-up at keep 0.25 is timed too, beside the judged figure and not judged itself:
        part of a sparse call's cost does not grow with the batch, and a larger batch
        shares it among more samples.
    """

    name: str
    modality: str
    make_model: Callable[[], nn.Module]
    batch: tuple[Any, Tensor]
    attach_options: dict[str, Any] = field(default_factory=dict)
    explain_options: dict[str, Any] = field(default_factory=dict)
    sparse_target: float | None = None
    train: Iterable[Any] | None = None
    test: list[tuple[Any, Tensor]] | None = None
    epochs: int = 5
    lr: float = 3e-3
    joint_epochs: int = 3
    joint_lr: float = 1e-3
    joint_mask_lr: float | None = None
    joint_options: dict[str, Any] = field(default_factory=dict)
    joint_distill: float = 0.0
    joint_max_grad_norm: float | None = None
    validation: list[tuple[Any, Tensor]] | None = None
    select_from: float = 0.5
    joint_attempts: int = 1
    settings: dict[str, Any] = field(default_factory=dict)
    judged: bool = True
    large_batch: tuple[Any, Tensor] | None = None

    def __post_init__(self) -> None:
        if self.sparse_target is not None and (self.train is None or not self.test):
            raise BottleneckError(f"speed case {self.name!r}: a sparse target needs train and test data")
        if self.sparse_target is not None and not self.judged:
            raise BottleneckError(f"speed case {self.name!r}: a sparse target is a judged figure (judged=False)")
        if isinstance(self.joint_attempts, bool) or not isinstance(self.joint_attempts, int) or self.joint_attempts < 1:
            raise BottleneckError(f"speed case {self.name!r}: joint_attempts must be an int >= 1 "
                                  f"(got {self.joint_attempts!r})")
        if self.joint_attempts > 1 and not self.validation:
            raise BottleneckError(f"speed case {self.name!r}: joint_attempts > 1 needs validation data to choose "
                                  f"between the runs (got none)")


@dataclass
class Timing:
    """How one comparison is timed: rounds per mode and untimed warm-up rounds.

    31 rounds after 5 warm-up rounds: on this project's shared 2-core machine single
    steps of the CNN varied by +-15% (75-101 ms plain, 89-123 ms masked), and the
    train-overhead ratio of medians over 15 consecutive rounds of one run ranged from
    1.17 to 1.28; twice the rounds halve the variance of the medians for a few seconds more per case.
    """

    repeats: int = 31
    warmup: int = 5
    #: Fresh processes the sparse speed-ups are timed in, one after the other (with
    #: ``fresh_process``); each speed-up is the median of theirs. The machine's speed moves
    #: over seconds, and the small sparse calls move more than the dense ones: 13 single
    #: processes timing the same two trained DGCNNs gave x4.36-x5.16 at keep 0.25 (dense
    #: 43-47 ms, sparse 8.5-10.8 ms), so one process is one draw.
    sparse_processes: int = 3

    #: The least value of each field: a median of one round has no spread to report (``repeats``);
    #: no warm-up is allowed, a negative one is a typo; the speed-ups need one process to time in.
    LEAST: ClassVar[dict[str, int]] = {"repeats": 2, "warmup": 0, "sparse_processes": 1}

    def __post_init__(self) -> None:
        for name, least in self.LEAST.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise BottleneckError(f"Timing.{name} must be an int >= {least} (got {value!r})")


def _ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)


def _spread(times: dict[str, list[float]]) -> dict[str, float]:
    """Interquartile range (ms) of each mode's timings, to judge how noisy the machine was."""
    return {name: quartiles(values)["iqr_ms"] for name, values in times.items()}


def _plain_step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: Any, targets: Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(_logits_of(call_model(model, inputs)), targets).backward()
    optimizer.step()


def _masked_step(masked: nn.Module, optimizer: torch.optim.Optimizer, inputs: Any, targets: Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    out = masked(inputs)
    (F.cross_entropy(_logits_of(out.output), targets) + out.ib_loss).backward()
    optimizer.step()


def train_overhead(case: SpeedCase, device: torch.device, timing: Timing) -> dict[str, float]:
    """Step time of joint (mask + model) training over plain training of the same model."""
    inputs, targets = _to(case.batch, device)
    plain = case.make_model().to(device)
    masked = attach(case.make_model(), case.modality, **case.attach_options).to(device)
    masked.train()
    masked(inputs)  # lazily sized layers exist after one call
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-4)
    masked_opt = torch.optim.Adam(masked.parameters(), lr=1e-4)
    plain.train()
    times = interleaved({
        "plain": lambda: _plain_step(plain, plain_opt, inputs, targets),
        "masked": lambda: _masked_step(masked, masked_opt, inputs, targets),
    }, timing.repeats, timing.warmup, device)
    plain_ms, masked_ms = _ms(times["plain"]), _ms(times["masked"])
    return {"plain_ms": plain_ms, "masked_ms": masked_ms, "ratio": masked_ms / plain_ms, "iqr_ms": _spread(times)}


def explain_overhead(case: SpeedCase, device: torch.device, timing: Timing) -> dict[str, float]:
    """Time of one explanation (explain-mode mask) over one plain forward pass, same batch."""
    inputs, _ = _to(case.batch, device)
    model = case.make_model().to(device).eval()
    explainer = attach(model, case.modality, mode="explain", **case.attach_options, **case.explain_options)
    explainer.to(device)
    explainer.explain(inputs)  # lazily sized layers
    with torch.no_grad():
        times = interleaved({
            "forward": lambda: call_model(model, inputs),
            "explain": lambda: explainer.explain(inputs),
        }, timing.repeats, timing.warmup, device)
    forward_ms, explain_ms = _ms(times["forward"]), _ms(times["explain"])
    return {"forward_ms": forward_ms, "explain_ms": explain_ms, "ratio": explain_ms / forward_ms,
            "where": case.explain_options.get("where", "input"), "iqr_ms": _spread(times)}


@dataclass
class SparseModels:
    """The dense model and the jointly masked model the sparse path runs, with training seconds."""

    dense: nn.Module
    masked: Any
    seconds: dict[str, float]
    #: The joint run's last-epoch means (task loss, keep rate, ...): a collapsed fine-tune shows here.
    joint_last_epoch: dict[str, float] = field(default_factory=dict)
    #: With validation data: each run's selected epoch and its validation accuracies.
    selection: dict[str, Any] = field(default_factory=dict)


def _training(case: SpeedCase) -> dict[str, Any]:
    """How a case's accuracy models are trained, for the report (empty for a timing-only case)."""
    if case.sparse_target is None:
        return {}
    return {"epochs": case.epochs, "lr": case.lr, "joint_epochs": case.joint_epochs, "joint_lr": case.joint_lr,
            "joint_mask_lr": case.joint_mask_lr, "joint_options": dict(case.joint_options),
            "joint_distill": case.joint_distill, "joint_max_grad_norm": case.joint_max_grad_norm,
            "validation_batches": len(case.validation) if case.validation else 0,
            "select_from": case.select_from if case.validation else None, "joint_attempts": case.joint_attempts,
            "restart_margin": RESTART_MARGIN if case.joint_attempts > 1 else None}


def train_sparse_models(case: SpeedCase, device: torch.device, *, progress: bool = True,
                        seed: int = 0) -> SparseModels:
    """Train the dense model, then the jointly masked one (keep 0.25) from it.

    With ``case.joint_distill`` the masked run also fits the dense model's predictions on
    the full inputs (the dense model as it was when the mask was attached).

    The dense reference then trains on for the masked run's epochs at its learning rate,
    so both end with the same training: a sparse model that only caught up on training
    the dense one never had would flatter the sparse accuracy. With ``case.validation``
    both runs then return to their best epoch on it (from ``case.select_from`` of the
    joint epochs on): the masked one by sparse accuracy at keep 0.25, the dense one by accuracy.
    With ``case.joint_attempts`` above 1, a joint run that ends more than
    :data:`RESTART_MARGIN` under the dense model on the held-out data is made again from
    the same dense model, and the best of the runs on the held-out data is kept.
    """
    if case.train is None:
        raise BottleneckError(f"speed case {case.name!r} has no training data")
    torch.manual_seed(seed)
    dense = case.make_model().to(device)
    start = time.perf_counter()
    fit(dense, case.train, epochs=case.epochs, lr=case.lr, device=device, progress=progress,
        description=f"{case.name} dense")
    dense_seconds = time.perf_counter() - start
    first = min(math.ceil(case.select_from * case.joint_epochs), case.joint_epochs - 1)  # the last epoch always counts
    reference = (evaluate(dense, case.validation, device=device)["accuracy"]
                 if case.validation and case.joint_attempts > 1 else None)
    runs: list[_JointRun] = []
    start = time.perf_counter()
    for attempt in range(case.joint_attempts):  # more than one only with validation data (__post_init__)
        runs.append(_joint_run(case, dense, device, first, progress=progress, attempt=attempt))
        if reference is None or runs[-1].pick.best_accuracy >= reference - RESTART_MARGIN:
            break
    masked_seconds = time.perf_counter() - start
    kept = runs[0] if len(runs) == 1 else max(runs, key=lambda run: run.pick.best_accuracy)
    masked, joint = kept.masked, kept.history
    picks: dict[str, BestOnValidation] = {}
    if case.validation:
        picks = {"masked": kept.pick,
                 "dense": BestOnValidation(dense, case.validation, start_epoch=first, device=device)}
    start = time.perf_counter()
    fit(dense, case.train, epochs=case.joint_epochs, lr=case.joint_lr, device=device, progress=progress,
        description=f"{case.name} dense, same epochs", on_epoch=picks.get("dense"))
    dense_seconds += time.perf_counter() - start
    for pick in picks.values():
        pick.restore()
    selection = {name: pick.summary() for name, pick in picks.items()}
    if reference is not None:
        selection["masked"].update(attempts=[run.pick.best_accuracy for run in runs], dense_at_attach=reference)
    return SparseModels(dense.eval(), masked.eval(), {"dense": dense_seconds, "masked": masked_seconds},
                        joint.last(), selection)


class _JointRun(NamedTuple):
    """One joint fine-tune: the masked model, its training history and its held-out pick (``None``
    without validation data)."""

    masked: Any
    history: Any
    pick: BestOnValidation | None


def _joint_run(case: SpeedCase, dense: nn.Module, device: torch.device, first: int, *, progress: bool,
               attempt: int) -> _JointRun:
    """One joint fine-tune of a new mask on a copy of ``dense``.

    With validation data the run watches its held-out sparse accuracy from epoch ``first`` on;
    the pick restores the best epoch (:meth:`BestOnValidation.restore`) when the run is kept.
    """
    options = {**case.attach_options, **case.joint_options}
    masked = attach(copy.deepcopy(dense), case.modality, keep=TARGET_KEEP, **options).to(device)
    teacher = DenseTeacher(dense, weight=case.joint_distill) if case.joint_distill else None
    pick = (BestOnValidation(masked, case.validation, sparse_keep=TARGET_KEEP, start_epoch=first, device=device)
            if case.validation else None)
    label = f"{case.name} masked" + (f", run {attempt + 1}" if attempt else "")
    joint = fit(masked, case.train, epochs=case.joint_epochs, lr=case.joint_lr, mask_lr=case.joint_mask_lr,
                device=device, progress=progress, description=label, penalty=teacher,
                max_grad_norm=case.joint_max_grad_norm, on_epoch=pick)
    return _JointRun(masked, joint, pick)


def sparse_speedup(case: SpeedCase, models: SparseModels, device: torch.device, timing: Timing,
                   keeps: tuple[float, ...] = KEEPS, *, fresh_process: bool = False,
                   hold_heap: bool = False) -> dict[str, Any]:
    """Dense forward time over the sparse path's at each keep, with the test accuracy at each keep.

    ``fresh_process`` times the two models in new processes (:mod:`bottleneck.sparse_timing`),
    not in the one that trained them, ``timing.sparse_processes`` of them one after the other:
    each figure is the median of theirs, and every process's own medians are kept
    (``processes``, ``speedup_per_process``). ``hold_heap`` is passed on to them.
    """
    inputs, _ = _to(case.batch, device)
    assert case.test is not None
    dense_accuracy = evaluate(models.dense, case.test, device=device)["accuracy"]
    runs = _time_sparse_runs(models, inputs, keeps, device, timing, fresh_process=fresh_process, hold_heap=hold_heap)
    medians = [{mode: _ms(values) for mode, values in times.items()} for times in runs]
    spreads = [_spread(times) for times in runs]
    dense_ms = statistics.median(run["dense"] for run in medians)
    per_keep: dict[str, dict[str, Any]] = {}
    for keep in keeps:
        ratios = [run["dense"] / run[str(keep)] for run in medians]
        per_keep[str(keep)] = {"sparse_ms": statistics.median(run[str(keep)] for run in medians),
                               "speedup": statistics.median(ratios), "speedup_per_process": ratios}
        try:
            scores = evaluate(models.masked, case.test, sparse=True, sparse_keep=keep, device=device)
        except BottleneckError as error:  # non-finite logits: recorded, judged as a miss, not a crash
            per_keep[str(keep)].update(accuracy=0.0, kept=float("nan"), error=str(error))
            continue
        per_keep[str(keep)].update(accuracy=scores["accuracy"], kept=scores.get("keep_rate", float("nan")))
    removed = models.masked.sparse(inputs, keep=TARGET_KEEP).removed
    large = None
    if case.large_batch is not None:
        large_inputs, large_targets = _to(case.large_batch, device)
        large_runs = _time_sparse_runs(models, large_inputs, (TARGET_KEEP,), device, timing,
                                       fresh_process=fresh_process, hold_heap=hold_heap)
        large_medians = [{mode: _ms(values) for mode, values in times.items()} for times in large_runs]
        large_ratios = [run["dense"] / run[str(TARGET_KEEP)] for run in large_medians]
        large = {"samples": len(large_targets), "keep": TARGET_KEEP,
                 "dense_ms": statistics.median(run["dense"] for run in large_medians),
                 "sparse_ms": statistics.median(run[str(TARGET_KEEP)] for run in large_medians),
                 "speedup": statistics.median(large_ratios), "speedup_per_process": large_ratios}
    return {"dense_ms": dense_ms, "dense_accuracy": dense_accuracy, "keeps": per_keep, "large_batch": large,
            "units_removed": bool(removed), "train_seconds": models.seconds,
            "joint_last_epoch": models.joint_last_epoch, "selection": models.selection, "fresh_process": fresh_process,
            # each timing process's medians and interquartile ranges; iqr_ms is each mode's largest
            "processes": [{"median_ms": run, "iqr_ms": spread} for run, spread in zip(medians, spreads, strict=True)],
            "iqr_ms": {mode: max(spread[mode] for spread in spreads) for mode in spreads[0]}}


def _time_sparse_runs(models: SparseModels, inputs: Any, keeps: tuple[float, ...], device: torch.device,
                      timing: Timing, *, fresh_process: bool, hold_heap: bool) -> list[dict[str, list[float]]]:
    """Each timing run's seconds per mode: ``timing.sparse_processes`` fresh processes, or this one."""
    if fresh_process:
        return [time_sparse_in_child(models.dense, models.masked, inputs, keeps, timing.repeats, timing.warmup,
                                     device, hold_heap=hold_heap) for _ in range(max(1, timing.sparse_processes))]
    return [time_sparse(models.dense, models.masked, inputs, keeps, timing.repeats, timing.warmup, device)]


def claims(report: dict[str, Any], targets: dict[str, float]) -> dict[str, Any]:
    """Each must-show target against the measured figures (computed, never written by hand)."""
    out: dict[str, Any] = {}
    if report["train_overhead"]:
        worst = max(report["train_overhead"], key=report["train_overhead"].get)
        out["train_overhead_at_most_1.25"] = {
            "holds": all(r <= TRAIN_OVERHEAD_MAX for r in report["train_overhead"].values()),
            "worst": worst, "worst_ratio": report["train_overhead"][worst]}
    if report["explain_overhead"]:
        worst = max(report["explain_overhead"], key=report["explain_overhead"].get)
        out["explain_overhead_at_most_1.5"] = {
            "holds": all(r <= EXPLAIN_OVERHEAD_MAX for r in report["explain_overhead"].values()),
            "worst": worst, "worst_ratio": report["explain_overhead"][worst]}
    for name, target in targets.items():
        figures = report["sparse_speedup"].get(name)
        if figures is None:
            continue
        at = figures[str(TARGET_KEEP)]
        dense_accuracy = report["details"]["sparse"][name]["dense_accuracy"]
        out[f"sparse_speedup_{name}"] = {
            "target": target, "speedup": at["speedup"], "speedup_holds": at["speedup"] >= target,
            "accuracy": at["accuracy"], "dense_accuracy": dense_accuracy,
            "accuracy_holds": at["accuracy"] >= dense_accuracy - ACCURACY_DROP_MAX}
    return out


#: Settings that must agree for reports to be merged: figures from different devices,
#: library versions, timing rounds or timing processes are not one table.
MERGE_MUST_AGREE = ("device", "device_name", "torch", "libraries", "threads", "repeats", "warmup", "seed",
                    "sparse_in_child", "sparse_processes")


def merge_reports(reports: list[dict[str, Any]], scaling: dict[str, Any] | None = None) -> dict[str, Any]:
    """One report from several ``bench speed`` runs over different models, claims recomputed.

    A lent GPU machine is held for minutes, so the CUDA bench runs one model group per
    process (``benchmarks/cuda_check.sh``): a group that fails or runs out of time loses
    only its own figures. ``scaling`` is the JSON of ``python -m bottleneck.scaling``
    where no run had a scaling section. Raises :class:`BottleneckError` where two runs
    measured the same model, where their settings in :data:`MERGE_MUST_AGREE` differ, or
    where more than one scaling section is given.
    """
    if not reports:
        raise BottleneckError("merge_reports needs at least one report")
    first = reports[0]["settings"]
    for report in reports[1:]:
        differing = {key: (first.get(key), report["settings"].get(key)) for key in MERGE_MUST_AGREE
                     if report["settings"].get(key) != first.get(key)}
        if differing:
            raise BottleneckError(f"reports to merge were measured under different settings: {differing}")
    merged: dict[str, Any] = {"train_overhead": {}, "sparse_speedup": {}, "explain_overhead": {},
                              "scaling": None, "details": {"train": {}, "explain": {}, "sparse": {}}}
    cases: dict[str, Any] = {}
    targets: dict[str, float] = {}
    for report in reports:
        names = set(report["details"]["train"])
        repeated = sorted(names & set(merged["details"]["train"]))
        if repeated:
            raise BottleneckError(f"models {repeated} are in more than one report")
        for section in ("train_overhead", "sparse_speedup", "explain_overhead"):
            merged[section].update(report[section])
        for part in ("train", "explain", "sparse"):
            merged["details"][part].update(report["details"][part])
        cases.update(report["settings"]["cases"])
        targets.update({key.removeprefix("sparse_speedup_"): claim["target"]
                        for key, claim in report["claims"].items() if key.startswith("sparse_speedup_")})
    sections = [report["scaling"] for report in reports if report.get("scaling")] + ([scaling] if scaling else [])
    if len(sections) > 1:
        raise BottleneckError(f"{len(sections)} scaling sections to merge; give one")
    merged["scaling"] = sections[0] if sections else None
    merged["claims"] = claims(merged, targets)
    merged["settings"] = {**first, "cases": cases, "merged_runs": len(reports)}
    merged["seconds"] = sum(report["seconds"] for report in reports)
    return merged


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows.

    Reports name it because figures move with it: the same bench ran every call 1.3-2.5
    times slower on one 2-core machine than on another, and subnormal floats cost this
    project's Intel Xeon a slow path per operand (see :data:`~bottleneck.key_bias_attention.GATE_FLOOR`).
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _library_versions() -> dict[str, str | None]:
    """Versions of the libraries the bench's models come from (``None``: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for name in ("transformers", "torch_geometric"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def _environment(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"device": str(device), "device_name": name, "torch": torch.__version__,
            "libraries": _library_versions(), "threads": torch.get_num_threads(),
            "python": platform.python_version()}


def run_speed(cases: list[SpeedCase], device: str | torch.device = "cpu", *, timing: Timing | None = None,
              progress: bool = True, seed: int = 0, scaling: bool = True,
              scaling_sizes: tuple[int, ...] | None = None, hold_heap: bool = False,
              sparse_in_child: bool = False,
              on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """All four sections for ``cases``; the report ``bottleneck bench speed`` writes.

    ``hold_heap`` keeps freed memory in this process's heap on CPU (:func:`~bottleneck.timing.steady_heap`,
    for the rest of the process: the command line sets it, a library caller chooses).
    ``sparse_in_child`` times the sparse speed-ups in a fresh process per model
    (:mod:`bottleneck.sparse_timing`; the command line's default).
    ``on_progress`` is called with the report as it stands (no claims or settings yet) after
    each model and after the scaling section: a caller keeps what a stopped run measured.
    """
    if not cases:
        raise BottleneckError("no speed cases: install a modality plugin that registers Demo(speed=...)")
    dev = torch_device(device)
    timing = timing or Timing()
    heap = steady_heap() if hold_heap and dev.type == "cpu" else None
    held = heap is not None and heap["applied"]  # the children hold theirs too
    started = time.perf_counter()
    report: dict[str, Any] = {"train_overhead": {}, "sparse_speedup": {}, "explain_overhead": {},
                              "scaling": None, "details": {"train": {}, "explain": {}, "sparse": {}}}
    targets: dict[str, float] = {}
    for case in cases:
        torch.manual_seed(seed)
        train = train_overhead(case, dev, timing)
        explain = explain_overhead(case, dev, timing)
        if case.judged:
            report["train_overhead"][case.name] = train["ratio"]
            report["explain_overhead"][case.name] = explain["ratio"]
        report["details"]["train"][case.name] = {**train, "judged": case.judged}
        report["details"]["explain"][case.name] = explain
        line = f"{case.name}: train overhead {train['ratio']:.2f}, explain overhead {explain['ratio']:.2f}"
        if case.sparse_target is not None:  # only judged cases have one (__post_init__)
            targets[case.name] = case.sparse_target
            models = train_sparse_models(case, dev, progress=progress, seed=seed)
            sparse = sparse_speedup(case, models, dev, timing, fresh_process=sparse_in_child, hold_heap=held)
            report["sparse_speedup"][case.name] = {
                keep: {"speedup": v["speedup"], "accuracy": v["accuracy"]} for keep, v in sparse["keeps"].items()}
            report["details"]["sparse"][case.name] = sparse
            at = sparse["keeps"][str(TARGET_KEEP)]
            line += (f", sparse x{at['speedup']:.2f} at keep {TARGET_KEEP} (accuracy {at['accuracy']:.3f}, "
                     f"dense {sparse['dense_accuracy']:.3f})")
        if progress:
            print(line, flush=True)
        if on_progress is not None:
            on_progress(report)
    if scaling:
        from .scaling import SIZES, run_scaling

        report["scaling"] = run_scaling(dev, sizes=scaling_sizes or SIZES, progress=progress, hold_heap=held)
        if on_progress is not None:
            on_progress(report)
    report["claims"] = claims(report, targets)
    report["settings"] = {
        **_environment(dev), "heap": heap, "sparse_in_child": sparse_in_child,
        "sparse_processes": timing.sparse_processes if sparse_in_child else 1, "repeats": timing.repeats,
        "warmup": timing.warmup, "seed": seed,
        "keeps": list(KEEPS), "cases": {case.name: {"modality": case.modality, **_training(case), **case.settings} for case in cases},
    }
    report["seconds"] = time.perf_counter() - started
    return report


def _cell(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def judged_text(value: float, bound: float | None, *, at_least: bool, digits: int = 2) -> str:
    """``value`` to ``digits`` decimals, or to as many more (up to 6) as it takes for the text to
    fall on the same side of ``bound`` as the value: run 16's DGCNN speed-up of 4.997 against
    x5 printed as "x5.00" beside a claim that did not hold, as run 9's ViT overhead of 1.2507
    had printed as "1.25" against a bound of 1.25."""
    if bound is not None:
        holds = value >= bound if at_least else value <= bound
        while digits < 6:
            shown = float(f"{value:.{digits}f}")
            if (shown >= bound if at_least else shown <= bound) == holds:
                break
            digits += 1
    return f"{value:.{digits}f}"


def markdown(report: dict[str, Any], command: str = "") -> str:
    """The report as Markdown tables: overheads, sparse speed-ups with accuracy, scaling."""
    settings = report["settings"]
    versions = ", ".join(f"{name} {version}" for name, version in
                         [("torch", settings["torch"]), *settings.get("libraries", {}).items()] if version)
    lines = [f"Measured with `{command}` on {settings['device_name']} "
             f"({settings['device']}, {settings['threads']} threads; {versions}), "
             f"medians of {settings['repeats']} interleaved repeats.", ""]
    lines += ["| model | train overhead (≤ 1.25) | plain step | masked step | explain overhead (≤ 1.5) |",
              "|---|---|---|---|---|"]
    for name, train in report["details"]["train"].items():
        explain = report["details"]["explain"][name]
        judged = train.get("judged", True)
        label = name if judged else f"{name} (not judged)"
        train_text = judged_text(train["ratio"], TRAIN_OVERHEAD_MAX if judged else None, at_least=False)
        explain_text = judged_text(explain["ratio"], EXPLAIN_OVERHEAD_MAX if judged else None, at_least=False)
        lines.append(f"| {label} | {train_text} | {train['plain_ms']:.1f} ms | {train['masked_ms']:.1f} ms | "
                     f"{explain_text} ({explain['explain_ms']:.1f} / {explain['forward_ms']:.1f} ms, "
                     f"mask at {explain['where']}) |")
    if report["sparse_speedup"]:
        keeps = list(next(iter(report["sparse_speedup"].values())))
        lines += ["", "| model | dense | " + " | ".join(f"keep {k}" for k in keeps) + " |",
                  "|---|---|" + "---|" * len(keeps)]
        targets = {name: report["claims"].get(f"sparse_speedup_{name}", {}).get("target")
                   for name in report["sparse_speedup"]}
        for name, per_keep in report["sparse_speedup"].items():
            details = report["details"]["sparse"][name]
            cells = [f"x{judged_text(v['speedup'], targets[name] if keep == str(TARGET_KEEP) else None, at_least=True)}, "
                     f"acc {v['accuracy']:.3f}" for keep, v in per_keep.items()]
            lines.append(f"| {name} | {details['dense_ms']:.1f} ms, acc {details['dense_accuracy']:.3f} | "
                         + " | ".join(cells) + " |")
        per_process = {name: details["keeps"].get(str(TARGET_KEEP), {}).get("speedup_per_process", [])
                       for name, details in report["details"]["sparse"].items()}
        if any(len(ratios) > 1 for ratios in per_process.values()):
            lines += ["", f"Speed-ups are medians over the timing processes; at keep {TARGET_KEEP} each gave: "
                      + "; ".join(f"{name} " + ", ".join(f"x{judged_text(r, targets.get(name), at_least=True)}"
                                                         for r in ratios)
                                  for name, ratios in per_process.items()) + "."]
        remade = {name: details["selection"]["masked"] for name, details in report["details"]["sparse"].items()
                  if len(details.get("selection", {}).get("masked", {}).get("attempts", [])) > 1}
        if remade:
            lines += ["", "Joint runs made again (held-out sparse accuracy at keep " + str(TARGET_KEEP)
                      + f" more than {RESTART_MARGIN:.2f} under the dense model's; the best held-out run is kept): "
                      + "; ".join(f"{name} {len(pick['attempts'])} runs, "
                                  + ", ".join(f"{accuracy:.3f}" for accuracy in pick["attempts"])
                                  + f" (dense {pick['dense_at_attach']:.3f})" for name, pick in remade.items()) + "."]
        larger = {name: details["large_batch"] for name, details in report["details"]["sparse"].items()
                  if details.get("large_batch")}
        if larger:
            lines += ["", "On a larger batch of the same data (not judged; what a sparse call costs whatever "
                      "the batch is shared by more samples), at keep " + str(TARGET_KEEP) + ": "
                      + "; ".join(f"{name} x{large['speedup']:.2f} on {large['samples']} samples "
                                  f"({large['dense_ms']:.1f} / {large['sparse_ms']:.1f} ms)"
                                  for name, large in larger.items()) + "."]
    scaling = report.get("scaling")
    if scaling:
        lines += ["", "| units | mask layer fwd+bwd | on one thread | mask layer peak memory | exact kNN (k=16) | "
                  "kNN peak memory | serial kNN (k=8) |", "|---|---|---|---|---|---|---|"]
        for size, row in scaling["sizes"].items():
            lines.append(f"| {int(size):,} | {row['mask_layer_ms']:.1f} ms | {_cell(row.get('mask_layer_ms_one_thread'), 1)} ms | "
                         f"{_cell(row.get('mask_layer_peak_mib'), 1)} MiB | {row['knn_ms']:.0f} ms | "
                         f"{row['knn_peak_mib']:.0f} MiB | {row['serial_knn_ms']:.1f} ms |")
        if "mask_layer_ratio_10k_over_1k" in scaling:
            lines.append(f"\nMask layer 10k/1k ({scaling['mask_layer_judged_on']}): "
                         f"{scaling['mask_layer_ratio_10k_over_1k']:.2f}; 100k/10k: "
                         f"{_cell(scaling.get('mask_layer_ratio_100k_over_10k'))}; 10k/1k at the run's threads: "
                         f"{_cell(scaling.get('mask_layer_ratio_10k_over_1k_all_threads'))}.")
        floor = scaling.get("mask_layer_floor")
        if floor:
            share = floor.get("share_of_1k_step")
            ops = f" ({floor['ops']} top-level ATen operations)" if "ops" in floor else ""
            lines.append(f"Per-call floor (the step on {floor['units']} units, timed as the ratio's sizes): "
                         f"{floor['ms']:.2f} ms{ops}" + (f", {100 * share:.0f}% of the 1k step." if share else "."))
        if "mask_layer_peak_mib_at_largest" in scaling:
            largest = max(int(size) for size in scaling["sizes"])
            lines.append(f"Mask layer peak memory: {scaling['mask_layer_peak_mib_at_largest']:.1f} MiB at {largest:,} "
                         f"units ({scaling['mask_layer_peak_kib_per_unit_at_largest']:.2f} KiB per unit); 100k/10k: "
                         f"{_cell(scaling.get('mask_layer_peak_ratio_100k_over_10k'))}.")
        fit = scaling.get("mask_layer_fit")
        if fit:
            lines.append(f"Linear fit: {fit['fixed_ms']:.2f} ms per call + {fit['ms_per_1k_units']:.2f} ms per 1k "
                         f"units (largest residual {100 * fit['max_relative_residual']:.0f}%).")
    lines += ["", "Claims:"]
    for name, claim in report["claims"].items():
        lines.append(f"- `{name}`: {claim}")
    return "\n".join(lines) + "\n"
