"""Where a small batch's time goes: operations (and on a GPU kernel launches and host syncs) per call, by batch size.

On an H200 the bench's 32-sample batches ran every masked call slower than the
dense model (``benchmarks/results/speed_cuda.md``): the masked training step cost
7-11 ms more than the plain one whatever the model, and a sparse call 3.5-5.5 ms
whatever it kept, because each of the mask's few hundred small tensor operations
is a kernel launch. This script measures that directly, for the speed bench's six
judged models (built as the bench builds them, random weights: the work does not
depend on them) on its timing batch repeated 1, 4, 16, ... times:

* ``dense_ms`` / ``sparse_ms`` / ``explain_ms``: the dense forward, ``MaskedModel.sparse(keep=0.25)``
  (the four models with a sparse target) and one explanation (the explain-mode mask, where
  the bench puts it), interleaved (:func:`bottleneck.timing.interleaved`), medians;
  ``speedup`` and ``explain_overhead`` their ratios to the dense forward;
* ``kept_model_ms``: the model alone on the reduced input that sparse call gives it (timed
  in the same interleaved rounds). ``mask_ms = sparse_ms - kept_model_ms`` is what choosing
  and removing the units costs (units, scorer, each sample's top-k, the drop), and
  ``free_mask_speedup = dense_ms / kept_model_ms`` the speed-up a mask that cost nothing would
  give: the ceiling for that model and batch, set by how the model's own cost falls with
  its input;
* ``mask_stages_ms``: that mask part stage by stage (:func:`mask_stages`: the units, the
  scorer, each sample's top-k, the drop), each timed as a call of its own in the same rounds;
* ``plain_step_ms`` / ``masked_step_ms``: a training step (forward, backward) of the
  plain model and of the jointly masked one; ``train_overhead`` their ratio;
* per call, from one profiled call of each: ``ops`` (top-level ATen operations),
  ``launches`` (CUDA kernel launches) and ``syncs`` (host waits on the GPU:
  :data:`SYNC_CALLS`); launches and syncs are counted on CUDA only, by the names of
  the CUDA runtime calls the profiler records (not yet checked on a GPU: a count of
  0 launches there means the names differ);
* on CUDA, ``kernel_ms`` per call: the summed time of its kernels on the device. The same
  kernels with no launch overhead (replayed from a CUDA graph, say) would take about that,
  so the ratios of these sums (``kernel_speedup``, ``kernel_explain_overhead``,
  ``kernel_train_overhead``) say what removing the launch overhead alone could give at
  that batch size (fusing kernels could give more).

A batch size the device cannot hold (out of memory) is reported as such and the run goes on.

``--points 128-256,512,1024`` also varies the size of each cloud for the point-cloud
models (the bench's 32 clouds, each of that many points, drawn as the bench draws them;
the other models run once): DGCNN's three kNN searches grow with the square of a cloud's
points and its per-point layers linearly, so its sparse speed-up at keep 0.25 (x4 on the
per-point work, x16 on the searches) depends on the cloud size as much as on the batch.
The mask keeps exactly ``ceil(0.25 n)`` points of each cloud (top-k) whatever its weights,
so these timings are a trained mask's; no accuracy is measured here.

The batch size at which ``speedup`` passes 1 is where sparse inference starts to pay
on that device. On the CPU the same figures say why a sparse speed-up falls short of
its target at the bench's batch: the model's own ceiling (``free_mask_speedup``) or the
mask's fixed cost per call (``mask_ms``), and how both move with the batch. Prints a
table and writes JSON::

    python benchmarks/launch_profile.py --device cuda --times 1,4,16,64 --json launch_cuda.json
    python benchmarks/launch_profile.py --device cpu --times 1,4 --models PointNet,DGCNN,ViT,BERT \
        --json benchmarks/results/launch_cpu.json
    python benchmarks/launch_profile.py --device cpu --times 1 --models PointNet,DGCNN \
        --points 128-256,256-512,512-1024,1024 --json benchmarks/results/launch_cpu_cloud_size.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from torch_geometric.data import Batch

from bottleneck.devices import device_argument
from bottleneck.speed import SpeedCase, cpu_name
from bottleneck.timing import interleaved, steady_heap, top_level_ops
from bottleneck.train import _to, call_model
from bottleneck.wrap import _logits_of, attach

#: The CUDA runtime calls that make the host wait for the GPU (an ``.item()``, a ``.tolist()``
#: or a data-dependent shape such as ``nonzero``'s copies to the host, then waits through one;
#: a synchronous ``cudaMemcpy`` waits by itself).
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
#: Keep fraction of the sparse calls (the bench's target keep).
KEEP = 0.25


def bench_cases() -> list[SpeedCase]:
    """The speed bench's judged cases, with the smallest training sets (never trained here)."""
    from bottleneck_image.speed import prepare_speed as image_cases
    from bottleneck_text.speed import prepare_speed as text_cases

    cases = [*pointcloud_bench_cases(),
             *image_cases(quick=True, vit_epochs=1, joint_epochs=1, test_size=64),
             *text_cases(quick=True, train_size=64, test_size=32, epochs=1, joint_epochs=1)]
    return [case for case in cases if case.judged]


def pointcloud_bench_cases(points: tuple[int, int] | None = None) -> list[SpeedCase]:
    """The bench's PointNet and DGCNN cases; ``points`` = ``(min, max)`` points per cloud (the bench's if ``None``)."""
    from bottleneck_pointcloud.speed import prepare_speed as pointcloud_cases

    sizes = {} if points is None else {"min_points": points[0], "max_points": points[1]}
    return pointcloud_cases(quick=True, train_size=64, dgcnn_train_size=32, test_size=64, **sizes)


def parse_points(text: str) -> list[tuple[int, int]]:
    """``"128-256,1024"`` -> ``[(128, 256), (1024, 1024)]``: points per cloud, each a range or one size."""
    sizes = []
    for part in text.split(","):
        matched = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if matched is None:
            raise argparse.ArgumentTypeError(f"points per cloud must be N or MIN-MAX, got {part.strip()!r}")
        size = (int(matched[1]), int(matched[2] or matched[1]))
        if not 1 <= size[0] <= size[1]:
            raise argparse.ArgumentTypeError(f"points per cloud must satisfy 1 <= MIN <= MAX, got {part.strip()!r}")
        sizes.append(size)
    return sizes


def repeated(inputs: Any, times: int) -> Any:
    """``inputs`` with its samples repeated ``times`` times: a larger batch of the same data."""
    if times == 1:
        return inputs
    if isinstance(inputs, Batch):
        return Batch.from_data_list(inputs.to_data_list() * times)
    if isinstance(inputs, torch.Tensor):
        return inputs.repeat(times, *([1] * (inputs.dim() - 1)))
    if isinstance(inputs, dict):
        return {key: repeated(value, times) for key, value in inputs.items()}
    raise TypeError(f"cannot repeat a batch of {type(inputs).__name__}")


def _count(fn: Callable[[], Any], device: torch.device) -> dict[str, int]:
    """Top-level ATen operations of one call of ``fn``; on CUDA also its kernel launches and host syncs."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:  # leaving the profiler waits for the device
        fn()
    events = prof.events()
    counts = {"ops": top_level_ops(events)}
    if device.type == "cuda":
        counts["launches"] = sum(e.name in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel",
                                            "cuLaunchKernelEx") for e in events)
        counts["syncs"] = sum(e.name in SYNC_CALLS for e in events)
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        counts["kernels"] = len(kernels)
        counts["kernel_ms"] = sum(e.time_range.elapsed_us() for e in kernels) / 1000
    return counts


def _kernel_ratios(counts: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Ratios of summed kernel time (CUDA only): what the calls would cost with launches free."""
    if "kernel_ms" not in counts["dense"]:
        return {}
    k = {name: c["kernel_ms"] for name, c in counts.items()}
    return {"kernel_speedup": k["dense"] / k["sparse"] if "sparse" in k else None,
            "kernel_explain_overhead": k["explain"] / k["dense"],
            "kernel_train_overhead": k["masked_step"] / k["plain_step"]}


def profile_case(case: SpeedCase, times: int, device: torch.device, repeats: int, warmup: int) -> dict[str, Any]:
    """Timings and counts of one model on its timing batch repeated ``times`` times."""
    torch.manual_seed(0)
    inputs, targets = _to((repeated(case.batch[0], times), case.batch[1].repeat(times)), device)
    plain = case.make_model().to(device)
    # as the bench: the training step with the mask its overhead is timed with, the sparse
    # call with the mask its sparse model is fine-tuned with
    masked = attach(case.make_model(), case.modality, **case.attach_options).to(device)
    explainer = attach(case.make_model().to(device).eval(), case.modality, mode="explain",
                       **case.attach_options, **case.explain_options).to(device)
    inference = {"dense": lambda: call_model(plain, inputs), "explain": lambda: explainer.explain(inputs)}
    with torch.no_grad():  # a mask builds its layers at its first call
        masked.eval().explain(inputs)
        explainer.explain(inputs)
        if case.sparse_target is not None:
            sparse = attach(case.make_model(), case.modality, keep=KEEP,
                            **{**case.attach_options, **case.joint_options}).to(device).eval()
            reduced = sparse.sparse(inputs, keep=KEEP).inputs
            adapter = sparse.adapter(inputs)
            inference["sparse"] = lambda: sparse.sparse(inputs, keep=KEEP)
            inference["kept_model"] = lambda: adapter.call_model(sparse.model, reduced)
            inference.update(mask_stages(sparse, adapter, inputs))

    def plain_step() -> None:
        plain.zero_grad(set_to_none=True)
        F.cross_entropy(_logits_of(call_model(plain, inputs)), targets).backward()

    def masked_step() -> None:
        masked.zero_grad(set_to_none=True)
        out = masked(inputs)
        (F.cross_entropy(_logits_of(out.output), targets) + out.ib_loss).backward()

    plain.eval()
    with torch.no_grad():
        times_s = interleaved(inference, repeats, warmup, device)
        counts = {name: _count(fn, device) for name, fn in inference.items()}
    plain.train()
    masked.train()
    steps = {"plain_step": plain_step, "masked_step": masked_step}
    times_s.update(interleaved(steps, repeats, warmup, device))
    counts.update({name: _count(fn, device) for name, fn in steps.items()})
    ms = {name: 1000 * statistics.median(values) for name, values in times_s.items()}
    samples = case.batch[1].numel() * times
    sparse_figures = {"speedup": None}
    if "sparse" in ms:
        sparse_figures = {"speedup": ms["dense"] / ms["sparse"], "mask_ms": ms["sparse"] - ms["kept_model"],
                          "free_mask_speedup": ms["dense"] / ms["kept_model"],
                          "mask_stages_ms": {stage: ms.pop(f"stage_{stage}") for stage in MASK_STAGES}}
    clouds = _points_per_cloud(case)
    if clouds:  # and the points in the batch
        clouds["points"] = int(inputs.num_nodes)
    return {"model": case.name, "samples": samples, **clouds, **{f"{name}_ms": value for name, value in ms.items()},
            **sparse_figures,
            "explain_overhead": ms["explain"] / ms["dense"], "train_overhead": ms["masked_step"] / ms["plain_step"],
            **_kernel_ratios(counts), "counts": counts}


#: The stages of a sparse call's mask part, in order (see :func:`mask_stages`).
MASK_STAGES = ("units", "scorer", "top_k", "drop")


def mask_stages(sparse: Any, adapter: Any, inputs: Any) -> dict[str, Callable[[], Any]]:
    """Each stage of ``sparse.sparse(inputs, keep=KEEP)`` before the model, as a call of its own
    (``adapter``: ``sparse.adapter(inputs)``, which the caller has).

    ``units``: the input as units (features, batch vector, checks); ``scorer``: the mask's
    relevance of every unit; ``top_k``: each sample's top ``ceil(KEEP n_i)`` units; ``drop``:
    the input rebuilt with only those. Each runs on what the stage before gave (made once,
    here), the calls :meth:`~bottleneck.wrap.MaskedModel.sparse` makes with the mask at the
    input. Timed in the same interleaved rounds as the whole call, their sum is close to
    ``mask_ms`` but not equal: a stage timed alone finds its caches as the stage before it
    left them only in the whole call.
    """
    if sparse.target_layer is not None:
        raise ValueError("mask stages are those of a mask at the input")
    units = adapter.to_units(inputs, with_graph=False)
    relevance = sparse.mask.relevance(sparse.encode(units))
    kept = sparse._top_units(relevance, units, KEEP)
    calls = {"units": lambda: adapter.to_units(inputs, with_graph=False),
             "scorer": lambda: sparse.mask.relevance(sparse.encode(units)),
             "top_k": lambda: sparse._top_units(relevance, units, KEEP),
             "drop": lambda: adapter.drop_units(inputs, units, kept)}
    return {f"stage_{stage}": calls[stage] for stage in MASK_STAGES}


def _points_per_cloud(case: SpeedCase) -> dict[str, Any]:
    """``{"points_per_cloud": "128-256"}`` for a point-cloud case (the size of its clouds), else ``{}``."""
    if case.modality != "pointcloud":
        return {}
    low, high = case.settings["min_points"], case.settings["max_points"]
    return {"points_per_cloud": f"{low}-{high}" if low != high else str(low)}


def _row(result: dict[str, Any]) -> str:
    head = f"| {result['model']} | {result['samples']} | {result.get('points_per_cloud', '—')} |"
    if "error" in result:
        return f"{head} {result['error']} |"
    counts = result["counts"]

    def cell(name: str) -> str:
        c = counts.get(name)
        if c is None:
            return "—"
        return f"{c['ops']}" + (f" / {c['launches']} / {c['syncs']} / {c['kernel_ms']:.2f}" if "launches" in c else "")

    sparse = ("— | — | — | — | — | —" if result["speedup"] is None else
              f"{result['sparse_ms']:.2f} | x{result['speedup']:.2f} | {result['kept_model_ms']:.2f} | "
              f"{result['mask_ms']:.2f} | {' / '.join(f'{v:.2f}' for v in result['mask_stages_ms'].values())} | "
              f"x{result['free_mask_speedup']:.2f}")
    return (f"{head} {result['dense_ms']:.2f} | {sparse} | "
            f"{result['explain_ms']:.2f} | {result['explain_overhead']:.2f} | {result['plain_step_ms']:.2f} | "
            f"{result['masked_step_ms']:.2f} | {result['train_overhead']:.2f} | "
            + " | ".join(cell(name) for name in ("dense", "sparse", "explain", "plain_step", "masked_step")) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", type=device_argument,
                        help="cpu, cuda, cuda:N or mps (default: cuda where there is one)")
    parser.add_argument("--times", default="1,4,16", help="batch repeats, comma-separated (1 = the bench's batch)")
    parser.add_argument("--models", default="CNN,ViT,PointNet,DGCNN,BiLSTM,BERT")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--points", type=parse_points, default=None,
                        help="points per cloud for PointNet and DGCNN, comma-separated N or MIN-MAX "
                             "(default: the bench's 128-256)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    # as the speed bench: freed memory stays in the heap, or each large call faults its pages in again
    heap = steady_heap() if device.type == "cpu" else None
    wanted = [name.strip() for name in args.models.split(",")]
    cases = {case.name: case for case in bench_cases()}
    unknown = sorted(set(wanted) - set(cases))
    if unknown:
        parser.error(f"--models {unknown} not among {sorted(cases)}")
    counted = "ops / launches / syncs / kernel ms" if device.type == "cuda" else "ops"
    print(f"| model | samples | points per cloud | dense ms | sparse ms | speed-up | kept model ms | mask ms "
          f"| mask stages ms ({' / '.join(MASK_STAGES)}) | free-mask speed-up | explain ms | explain overhead | plain step ms "
          f"| masked step ms | train overhead | dense {counted} | sparse {counted} | explain {counted} "
          f"| plain step {counted} | masked step {counted} |")
    print("|---" * 20 + "|")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    results = []
    sized = {points: {case.name: case for case in pointcloud_bench_cases(points)} for points in args.points or []}
    for name in wanted:
        variants = [by_name[name] for by_name in sized.values()] if cases[name].modality == "pointcloud" and sized \
            else [cases[name]]
        for case, times in ((case, int(t)) for case in variants for t in args.times.split(",")):
            try:
                results.append(profile_case(case, times, device, args.repeats, args.warmup))
            except torch.OutOfMemoryError:  # the larger batches of the larger models on a small device
                torch.cuda.empty_cache()
                results.append({"model": name, "samples": case.batch[1].numel() * times, **_points_per_cloud(case),
                                "error": "out of memory"})
            print(_row(results[-1]), flush=True)
            if args.json:  # after every row: a run stopped by a time limit keeps what it measured
                args.json.write_text(json.dumps({"device": str(device), "device_name": device_name,
                                                 "torch": torch.__version__, "threads": torch.get_num_threads(),
                                                 "keep": KEEP, "heap": heap, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
