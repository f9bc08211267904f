"""Stage: validate the raw dataset and write the manifest that every later stage reads.

    python -m mdgen.stages.validate_dataset --root data/raw --manifest results/data/manifest.csv \
        --report results/data/report.json --num-classes 31 --channels 3 --on-bad-file fail

Exit status 1, and no manifest, when the dataset is unusable (a missing split or a user without
valid images) or when any file is bad and --on-bad-file is fail; the report is still written.
"""

from __future__ import annotations

import argparse
import sys

from mdgen.data.validation import format_summary, validate_dataset, write_manifest, write_report


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder holding train/ and val/ with user_NN folders")
    parser.add_argument("--num-classes", type=int, default=31, help="number of users: user_00 .. user_{N-1}")
    parser.add_argument("--size", type=int, default=128, help="training resolution (size x size)")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument(
        "--on-bad-file",
        choices=("fail", "skip"),
        default="fail",
        help="fail: any bad file fails the run; skip: bad files are excluded from the manifest",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=40_000_000,
        help="larger images are rejected from their header, before decoding",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes decoding images")
    parser.add_argument("--manifest", required=True, help="output CSV of the files that passed")
    parser.add_argument("--report", required=True, help="output JSON report of counts and problems")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    print(
        f"Validating {args.root}/{{train,val}}/user_NN for {args.num_classes} users: "
        f"{args.channels}-channel images, trained at {args.size}x{args.size}, "
        f"at most {args.max_pixels:,} pixels each, {args.workers} worker(s), on_bad_file={args.on_bad_file}"
    )
    result = validate_dataset(
        args.root,
        num_classes=args.num_classes,
        channels=args.channels,
        size=args.size,
        max_pixels=args.max_pixels,
        workers=args.workers,
        progress=True,
    )
    print(format_summary(result, args.on_bad_file, report_path=args.report))
    write_report(result, args.report, args.on_bad_file)
    print(f"Report: {args.report}")

    if result.fatal:
        print(
            f"FAILED: {len(result.fatal)} dataset-level error(s) above. Fix the dataset: data.on_bad_file: skip "
            "cannot help, because excluding files never adds a missing split or image. No manifest was written."
        )
        return 1
    if not result.passed(args.on_bad_file):
        print(
            f"FAILED: {len(result.errors)} bad file(s) or folder(s) above. Fix or remove them, or set "
            "data.on_bad_file: skip to exclude them from the manifest. No manifest was written."
        )
        return 1
    write_manifest(result.rows, args.manifest)
    excluded = f", {len(result.excluded)} excluded" if result.excluded else ""
    print(f"Manifest: {args.manifest} ({len(result.rows)} images{excluded})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
