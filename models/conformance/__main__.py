"""``python -m models.conformance KIT_DIR [--only preprocess,video,prompts,numerics,tokenizers]``"""

from __future__ import annotations

import argparse
import sys

from models.conformance import PARTS, run_kit


def _parts(value: str) -> set[str]:
    parts = {p.strip() for p in value.split(",") if p.strip()}
    unknown = parts - set(PARTS)
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(PARTS)} (got {value!r})")
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.conformance",
                                     description="Check the engine against an InternVL2 conformance kit.")
    parser.add_argument("kit_dir", help="kit folder (layout of tests/data/conformance)")
    parser.add_argument("--only", type=_parts, default=None,
                        help=f"comma-separated parts to run: {','.join(PARTS)} (default: all present)")
    args = parser.parse_args(argv)
    rep = run_kit(args.kit_dir, args.only)
    print(rep.summary(), flush=True)
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
