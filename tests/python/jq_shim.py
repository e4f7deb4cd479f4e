#!/usr/bin/env python3
"""`jq` for the tests that run README's pipelines, on machines without the jq command: the
`jq` Python package runs jq's own engine (libjq). Takes what README uses: `jq [-r] [-c]
FILTER`, reading JSON values from standard input.

    python jq_shim.py [-r] [-c] FILTER < input
"""

import json
import sys

import jq


def main() -> None:
    raw = compact = False
    args = sys.argv[1:]
    while args and args[0].startswith("-") and len(args) > 1:
        flags = args.pop(0)[1:]
        unknown = set(flags) - {"r", "c"}
        if unknown:
            sys.exit(f"jq_shim: unsupported option -{''.join(sorted(unknown))}")
        raw |= "r" in flags
        compact |= "c" in flags
    if len(args) != 1:
        sys.exit("usage: jq [-r] [-c] FILTER")
    program = jq.compile(args[0])
    try:
        for value in program.input_text(sys.stdin.read()):
            if raw and isinstance(value, str):
                print(value)
            else:
                text = (
                    json.dumps(value, separators=(",", ":"), ensure_ascii=False)
                    if compact
                    else json.dumps(value, indent=2, ensure_ascii=False)
                )
                print(text)
    except BrokenPipeError:
        # Like jq: a reader that closed early (`| head`) ends quietly.
        sys.stderr.close()


if __name__ == "__main__":
    main()
