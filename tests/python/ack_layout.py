#!/usr/bin/env python3
"""Reads HL7 v2 ACKs with hl7apy, an independent implementation of the standard's
structures, in the version each ACK declares (MSH-12): every segment is parsed with strict
validation, so a component the version's data type does not have (e.g. a fifth component
in ERR-1, whose ELD type has four) is an error. Prints, per file, what the error segment
says by the standard's own component names, for the Rust test to compare.

    python ack_layout.py ACK_FILE...

One JSON object per file, one per line. Exits non-zero only when it could not run.
"""

import json
import sys

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_segment


def value(element):
    """A primitive as its text; a composite (ELD, CE, CWE...) as `{component name: value}`."""
    kids = element.children
    if kids and not (len(kids) == 1 and kids[0].name == element.datatype):
        return {k.name: value(k) for k in kids}
    return element.to_er7()


def read(path: str) -> dict:
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    segments = [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]
    msh = segments[0].split(segments[0][3])
    version = msh[11].split(msh[1][0])[0]
    result = {"file": path, "version": version, "segments": [s[:3] for s in segments]}
    try:
        for raw in segments:
            segment = parse_segment(raw, version=version, validation_level=VALIDATION_LEVEL.STRICT)
            segment.validate()
            if segment.name == "MSA":
                result["MSA"] = {f.name: value(f) for f in segment.children}
            if segment.name == "ERR":
                result["ERR"] = {f.name: value(f) for f in segment.children}
                result["ERR_datatypes"] = {f.name: f.datatype for f in segment.children}
        result["valid"] = True
    except Exception as e:  # hl7apy raises its own types for every layout problem
        result["valid"] = False
        result["error"] = f"{type(e).__name__}: {e}"
    return result


def main() -> None:
    for path in sys.argv[1:]:
        print(json.dumps(read(path)))


if __name__ == "__main__":
    main()
