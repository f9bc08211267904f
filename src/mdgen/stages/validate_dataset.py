"""Stage: validate the raw dataset and write the manifest that every later stage reads.

    python -m mdgen.stages.validate_dataset --root data/raw --manifest results/dataset/manifest.csv \
        --report results/dataset/report.json --config config/config.yaml --workers 4

Reads the data section: num_classes, size, channels, on_bad_file, max_pixels (see the schema).
Exit status 1, and no manifest, when the dataset is unusable (a missing split or a user without
valid images) or when any file is bad and data.on_bad_file is fail; the report is still written.
"""

from __future__ import annotations

import argparse
import sys

from mdgen.config import load_config
from mdgen.data.validation import format_summary, validate_dataset, write_manifest, write_report
from mdgen.progress import say


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="folder holding train/ and val/ with user_NN folders")
    parser.add_argument("--manifest", required=True, help="output CSV of the files that passed")
    parser.add_argument("--report", required=True, help="output JSON report of counts and problems")
    parser.add_argument("--config", required=True, help="JSON/YAML text or file with the data section")
    parser.add_argument("--workers", type=int, default=1, help="processes decoding images")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    data = load_config(args.config, "data")["data"]
    on_bad_file = data["on_bad_file"]
    say(
        f"Validating {args.root}/{{train,val}}/user_NN for {data['num_classes']} users: "
        f"{data['channels']}-channel images{f' ({colormap} colour-mapped)' if (colormap := data['colormap']) else ''}, "
        f"trained at {data['size']}x{data['size']}, "
        f"at most {data['max_pixels']:,} pixels each, {args.workers} worker(s), on_bad_file={on_bad_file}"
    )
    result = validate_dataset(
        args.root,
        num_classes=data["num_classes"],
        channels=data["channels"],
        colormap=data["colormap"],
        size=data["size"],
        max_pixels=data["max_pixels"],
        workers=args.workers,
        progress=True,
    )
    say(format_summary(result, on_bad_file, report_path=args.report))
    write_report(result, args.report, on_bad_file)
    say(f"Report: {args.report}")

    if result.fatal:
        say(
            f"FAILED: {len(result.fatal)} dataset-level error(s) above. Fix the dataset: data.on_bad_file: skip "
            "cannot help, because excluding files never adds a missing split or image. No manifest was written."
        )
        return 1
    if not result.passed(on_bad_file):
        say(
            f"FAILED: {len(result.errors)} bad file(s) or folder(s) above. Fix or remove them, or set "
            "data.on_bad_file: skip to exclude them from the manifest. No manifest was written."
        )
        return 1
    write_manifest(result.rows, args.manifest)
    excluded = f", {len(result.excluded)} excluded" if result.excluded else ""
    say(f"Manifest: {args.manifest} ({len(result.rows)} images{excluded})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
