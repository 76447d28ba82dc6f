"""The ``bottleneck`` command line: ``plugins``, ``demo NAME``, ``bench explain|speed|plot|history``, ``explain`` and ``audit``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .devices import DEVICE_HELP, checked_device
from .errors import BottleneckError
from .output_paths import FIGURE, FILE, FOLDER, check_output
from .plugins import demos, plugin_info


def _plugins(args: argparse.Namespace) -> int:
    rows = plugin_info()
    if args.json:
        print(json.dumps([row.__dict__ for row in rows], indent=2))
        return 0
    width = max((len(r.name) for r in rows), default=4)
    for row in rows:
        origin = f"{row.distribution} {row.version}" if row.distribution else "core"
        print(f"{row.name:<{width}}  {origin}")
        for hook in row.hooks:
            print(f"{'':<{width}}    {hook}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    demo = demos()[args.name]
    options = {name: getattr(args, name) for name in demo.options if getattr(args, name, None) is not None}
    report = demo.run(Path(args.out), device=args.device, quick=args.quick, **options)
    shared = {k: report[k] for k in ("modality", "model", "accuracy_plain", "accuracy_masked",
                                     "accuracy_sparse", "keep_rate", "gt_auroc", "seconds")}
    print(json.dumps(shared, indent=2))
    print(f"wrote {Path(args.out) / 'report.json'}")
    return 0


def _provider(modality: str, what: str) -> Any:
    """A modality's demo attribute ``what`` (``testbed`` or ``audit``), or an error naming those installed."""
    items = demos()
    if modality not in items or getattr(items[modality], what) is None:
        known = sorted(name for name, item in items.items() if getattr(item, what) is not None)
        kind = {"testbed": "benchmark testbed", "audit": "audit setting", "speed": "speed benchmark"}[what]
        raise BottleneckError(f"no {kind} for modality {modality!r}; installed: {known}")
    return getattr(items[modality], what)


def _bench_explain(args: argparse.Namespace) -> int:
    from .evidence import markdown_table, run_benchmark

    testbed = _provider(args.modality, "testbed")(quick=args.quick, seed=args.seed)
    out = Path(args.out) if args.out else None
    report = run_benchmark(testbed, device=args.device, progress=not args.no_progress, seed=args.seed, out_dir=out)
    command = "bottleneck " + " ".join(sys.argv[1:]) if args.command_line is None else args.command_line
    report["command"] = command
    return _write_outputs(args, report, markdown_table(report, command))


def _write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path``, creating its folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def _write_outputs(args: argparse.Namespace, report: dict[str, Any], text: str) -> int:
    """Write ``report`` to ``--json`` and ``text`` to ``--markdown`` (if given); print the text."""
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        _write_text(args.markdown, text)
    print(text)
    print(f"wrote {args.json}" + (f" and {args.markdown}" if args.markdown else ""))
    return 0


def partial_report_path(json_path: str) -> Path:
    """Where ``bench speed`` keeps its report as it stands while it runs: ``speed.json`` -> ``speed.partial.json``."""
    return Path(json_path).with_suffix(".partial.json")


def _bench_speed(args: argparse.Namespace) -> int:
    from .speed import Timing, markdown, run_speed

    for name, least in Timing.LEAST.items():
        if getattr(args, name) < least:
            option = "--" + name.replace("_", "-")
            raise BottleneckError(f"{option} must be >= {least} (got {getattr(args, name)})")
    modalities = args.modality or sorted(name for name, item in demos().items() if item.speed is not None)
    cases = [case for modality in modalities
             for case in _provider(modality, "speed")(quick=args.quick, seed=args.seed)]
    if args.models:
        wanted = [name.strip() for name in args.models.split(",") if name.strip()]
        unknown = sorted(set(wanted) - {case.name for case in cases})
        if unknown:
            raise BottleneckError(f"--models {unknown} not among {[case.name for case in cases]}")
        cases = [case for case in cases if case.name in wanted]
    timing = Timing(args.repeats, args.warmup, args.sparse_processes)
    command = "bottleneck " + " ".join(sys.argv[1:]) if args.command_line is None else args.command_line
    partial = partial_report_path(args.json)
    partial.unlink(missing_ok=True)  # an earlier stopped run's: not to be read as this one's

    def keep_partial(so_far: dict[str, Any]) -> None:  # a half-hour run stopped late keeps what it measured
        _write_text(str(partial), json.dumps({**so_far, "partial": True, "command": command}, indent=2) + "\n")

    try:
        report = run_speed(cases, args.device, timing=timing, progress=not args.no_progress,
                           hold_heap=not args.system_heap, sparse_in_child=not args.sparse_in_process,
                           seed=args.seed, scaling=not args.no_scaling,
                           scaling_sizes=(1_000, 10_000) if args.quick else None, on_progress=keep_partial)
    except BaseException:
        if partial.exists():
            print(f"bottleneck: the run stopped; what it measured so far is in {partial}", file=sys.stderr)
        raise
    report["command"] = command
    code = _write_outputs(args, report, markdown(report, command))
    partial.unlink(missing_ok=True)
    if args.figure:
        from .speed_figure import plot_speed

        print(f"wrote {plot_speed(report, args.figure)}")
    return code


def _bench_plot(args: argparse.Namespace) -> int:
    from .speed_figure import load_speed_report, plot_speed

    print(f"wrote {plot_speed(load_speed_report(args.report), args.out)}")
    return 0


def _bench_history(args: argparse.Namespace) -> int:
    from .speed_history import history_markdown, load_history, plot_history

    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    runs = load_history(args.reports, labels)
    text = history_markdown(runs)
    if args.markdown:
        _write_text(args.markdown, text)
    print(text)
    if args.markdown:
        print(f"wrote {args.markdown}")
    if args.figure:
        print(f"wrote {plot_history(runs, args.figure)}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from .explain_saved import explain_saved

    report = explain_saved(Path(args.mask), Path(args.out), device=args.device, batches=args.batches)
    print(json.dumps({k: v for k, v in report.items() if k != "renders"}, indent=2))
    print(f"wrote {len(report['renders'])} renders and {Path(args.out) / 'report.json'}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from .audit_run import markdown, run_audit

    prepare = _provider(args.modality, "audit")
    options = {"cue": args.cue} if args.cue else {}
    setting = prepare(quick=args.quick, seed=args.seed, correlation=args.correlation, **options)
    command = "bottleneck " + " ".join(sys.argv[1:])
    report = run_audit(setting, Path(args.out), mitigation=args.mitigation, device=args.device, seed=args.seed,
                       progress=not args.no_progress, command=command)
    print(markdown(report, command))
    print(f"wrote {Path(args.out) / 'report.json'}, {Path(args.out) / 'report.md'} and each model's report")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bottleneck", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    plugins = commands.add_parser("plugins", help="list installed plugins, their versions and hooks")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.set_defaults(func=_plugins)
    demo = commands.add_parser("demo", help="run a modality's demo on embedded data")
    names = demo.add_subparsers(dest="name", required=True)
    for item in demos().values():
        sub = names.add_parser(item.name, help=item.help, description=item.help)
        sub.add_argument("--out", required=True, help="output directory")
        sub.add_argument("--device", default="cpu", help=DEVICE_HELP)
        sub.add_argument("--quick", action="store_true", help="a small, fast setting")
        for name, (kind, default, help_text) in item.options.items():
            sub.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=default, help=help_text)
        sub.set_defaults(func=_demo, outputs={"out": FOLDER})

    bench = commands.add_parser("bench", help="benchmarks that print and write JSON figures")
    kinds = bench.add_subparsers(dest="kind", required=True)
    explain_bench = kinds.add_parser(
        "explain", help="every explanation method on the same model and inputs (faithfulness, GT AUROC, speed)")
    explain_bench.add_argument("--modality", required=True, help="pointcloud, image or text")
    explain_bench.add_argument("--json", required=True, help="write the figures here")
    explain_bench.add_argument("--markdown", help="also write the results table here")
    explain_bench.add_argument("--quick", action="store_true", help="small setting, minutes on a 2-core CPU")
    explain_bench.add_argument("--device", default="cpu", help=DEVICE_HELP)
    explain_bench.add_argument("--seed", type=int, default=0)
    explain_bench.add_argument("--out", help="save the explain-mode mask and renders in this directory")
    explain_bench.add_argument("--no-progress", action="store_true", help="no progress bars")
    explain_bench.set_defaults(func=_bench_explain, command_line=None,
                               outputs={"json": FILE, "markdown": FILE, "out": FOLDER})
    speed_bench = kinds.add_parser(
        "speed", help="what the mask costs in training and explanation and saves at inference; scaling")
    speed_bench.add_argument("--json", required=True, help="write the figures here")
    speed_bench.add_argument("--markdown", help="also write the tables here")
    speed_bench.add_argument("--quick", action="store_true", help="smaller training sets and no 100k scaling point")
    speed_bench.add_argument("--device", default="cpu", help=DEVICE_HELP)
    speed_bench.add_argument("--modality", action="append", help="only this modality (repeatable; default all)")
    speed_bench.add_argument("--models", help="only these models, comma-separated (PointNet,ViT,...)")
    speed_bench.add_argument("--repeats", type=int, default=31, help="timed rounds per mode (speed.Timing)")
    speed_bench.add_argument("--warmup", type=int, default=5, help="untimed rounds per mode first")
    speed_bench.add_argument("--sparse-in-process", action="store_true",
                             help="time the sparse speed-ups in the process that trained the models (by default a "
                                  "fresh process per model loads them: bottleneck.sparse_timing)")
    speed_bench.add_argument("--sparse-processes", type=int, default=3,
                             help="fresh processes the sparse speed-ups are timed in, one after the other; each "
                                  "figure is the median of theirs (default %(default)s, as speed.Timing)")
    speed_bench.add_argument("--system-heap", action="store_true",
                             help="time with the C allocator as configured (by default freed memory stays in the "
                                  "heap on CPU, so no timing pays for page faults: bottleneck.timing.steady_heap)")
    speed_bench.add_argument("--no-scaling", action="store_true", help="skip the scaling section")
    speed_bench.add_argument("--figure", help="also draw the figures against their targets here (PNG, SVG, PDF)")
    speed_bench.add_argument("--seed", type=int, default=0)
    speed_bench.add_argument("--no-progress", action="store_true", help="no progress bars")
    speed_bench.set_defaults(func=_bench_speed, command_line=None,
                             outputs={"json": FILE, "markdown": FILE, "figure": FIGURE})

    plot = kinds.add_parser("plot", help="draw a saved speed report (bench speed --json) against its targets")
    plot.add_argument("report", help="JSON written by bottleneck bench speed --json")
    plot.add_argument("--out", required=True, help="the picture (PNG, SVG or PDF by its suffix)")
    plot.set_defaults(func=_bench_plot, outputs={"out": FIGURE})

    history = kinds.add_parser("history", help="several saved speed reports side by side: every judged figure per "
                               "run and how often each claim held")
    history.add_argument("reports", nargs="+", help="JSON files written by bottleneck bench speed --json, in order")
    history.add_argument("--labels", help="comma-separated run names, one per report (default: the file names)")
    history.add_argument("--markdown", help="also write the table here")
    history.add_argument("--figure", help="draw each judged figure per run against its target (PNG, SVG or PDF)")
    history.set_defaults(func=_bench_history, outputs={"markdown": FILE, "figure": FIGURE})

    explain = commands.add_parser(
        "explain", help="explain a testbed's test data with a saved model and mask; write renders")
    explain.add_argument("mask", help="a mask file saved by `bottleneck bench explain --out DIR`")
    explain.add_argument("--out", required=True, help="output directory")
    explain.add_argument("--device", default="cpu", help=DEVICE_HELP)
    explain.add_argument("--batches", type=int, default=1, help="test batches to render (all are scored)")
    explain.set_defaults(func=_explain, outputs={"out": FOLDER})

    audit = commands.add_parser(
        "audit", help="train plain, masked and mitigated models on cue-biased data; audit and compare them")
    audit.add_argument("--modality", required=True, help="pointcloud, image or text")
    audit.add_argument("--out", required=True, help="output directory")
    audit.add_argument("--cue", help="registered cue name (default: the modality's first; see `bottleneck plugins`)")
    audit.add_argument("--correlation", type=float, default=0.95, help="how often the training cue matches the label")
    audit.add_argument("--mitigation", choices=["mask", "reweight"], default="mask",
                       help="penalise the mask on cue units, or reweight groups")
    audit.add_argument("--quick", action="store_true", help="small setting, minutes on a 2-core CPU")
    audit.add_argument("--device", default="cpu", help=DEVICE_HELP)
    audit.add_argument("--seed", type=int, default=0)
    audit.add_argument("--no-progress", action="store_true", help="no progress bars")
    audit.set_defaults(func=_audit, outputs={"out": FOLDER})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "device", None) is not None:  # before any work: a typo fails now, not after training
            args.device = checked_device(args.device)
        for option, kind in getattr(args, "outputs", {}).items():  # and where it will write
            if getattr(args, option, None) is not None:
                check_output(getattr(args, option), kind, f"--{option}")
        return args.func(args)
    except BottleneckError as error:
        print(f"bottleneck: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
