"""The ``bottleneck`` command line: ``plugins`` and ``demo NAME``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import BottleneckError
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
        sub.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
        sub.add_argument("--quick", action="store_true", help="a small, fast setting")
        for name, (kind, default, help_text) in item.options.items():
            sub.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=default, help=help_text)
        sub.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except BottleneckError as error:
        print(f"bottleneck: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
