"""Merge ``bottleneck bench speed`` reports of different models into one JSON and Markdown report.

``benchmarks/cuda_check.sh`` runs the bench one model group per process on a lent GPU;
this joins the groups (and the scaling JSON of ``python -m bottleneck.scaling``) into
the report one ``bench speed`` run would have written, claims recomputed from the figures::

    python benchmarks/merge_speed.py cuda_out/speed_cuda_*.json --scaling cuda_out/scaling_cuda.json \\
        --json benchmarks/results/speed_cuda.json --markdown benchmarks/results/speed_cuda.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bottleneck.cli import _write_outputs
from bottleneck.speed import markdown, merge_reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="JSON files written by bench speed --json")
    parser.add_argument("--scaling", type=Path, help="JSON printed by python -m bottleneck.scaling")
    parser.add_argument("--json", type=Path, required=True, help="write the merged report here")
    parser.add_argument("--markdown", type=Path, help="also write its tables here")
    parser.add_argument("--command", default="benchmarks/cuda_check.sh, then benchmarks/merge_speed.py",
                        help="how the figures were made, for the Markdown's first line")
    args = parser.parse_args(argv)
    reports = [json.loads(path.read_text()) for path in args.reports]
    scaling = json.loads(args.scaling.read_text()) if args.scaling else None
    merged = merge_reports(reports, scaling)
    return _write_outputs(args, merged, markdown(merged, args.command))


if __name__ == "__main__":
    sys.exit(main())
