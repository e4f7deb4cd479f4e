"""The Python peers of the side-by-side benchmark: python-hl7 (`hl7`), `hl7apy` and
`fhir.resources`. One library per process:

  py_peers.py --impl hl7|hl7apy|fhir.resources --corpus DIR --out DIR [--runs 5] [--check 50]
              [--budget 60]

Loads the corpus into memory (orders parsed from JSON), times each job over the whole
corpus, best of --runs (a job that has used --budget seconds stops after 2 runs), prints
one JSON line per job, and writes the outputs of the first --check items to OUT/<impl>/
for compare.py.
"""

import argparse
import glob
import json
import os
import re
import sys
import time
from importlib.metadata import version

from zoneinfo import ZoneInfo

from order_rules import orm_segments, report_submission, service_request

# The report job's site (run.sh and the Rust side use the same).
SYDNEY = ZoneInfo("Australia/Sydney")


def best_of(runs, items, fn, budget):
    """Best of `runs` runs; a job past `budget` seconds stops after its second run (hl7apy
    needs minutes per run). Returns (best seconds, runs done, last outputs)."""
    best = float("inf")
    out = None
    spent = 0.0
    done = 0
    while done < runs:
        t0 = time.perf_counter()
        out = [fn(x) for x in items]
        secs = time.perf_counter() - t0
        best = min(best, secs)
        spent += secs
        done += 1
        if done >= 2 and spent > budget:
            break
    return best, done, out


# --- python-hl7 -------------------------------------------------------------------------

def hl7_oru(text):
    import hl7
    msg = hl7.parse(text)
    obr = msg.segment("OBR")
    # extract_field unescapes; python-hl7 turns \.br\ into CR, the other readers into LF.
    parts = (obr.extract_field(field_num=32, component_num=1, subcomponent_num=k)
             for k in (6, 3, 4, 2, 5))
    lines = [seg.extract_field(field_num=5).replace("\r", "\n")
             for seg in msg.segments("OBX") if str(seg[2]) == "TX"]
    return {
        "accession": obr.extract_field(field_num=18),
        "status": obr.extract_field(field_num=25),
        "interpreter": " ".join(p for p in parts if p),
        "text": "\n".join(lines),
    }


_NON_ASCII_RUNS = re.compile(r"([^\x00-\x7f]+)")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def hl7_orm(order):
    import hl7
    msg = hl7.Message(separator="\r", sequence=[])

    def esc(text):
        # The ORM is FT-style (`line_breaks: br`): one \.br\ per line break. python-hl7's
        # escape has no such mode (and writes LF as a malformed hex escape), so each line is
        # escaped on its own.
        # It also writes each non-ASCII character as a hex escape of its code point (`…` as
        # \X2026\), which HL7 readers decode as bytes (" &"); the message is UTF-8, so such
        # runs are kept as they are and only the ASCII between them is escaped.
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        return "\\.br\\".join(
            "".join(p if _NON_ASCII.match(p) else msg.escape(p)
                    for p in _NON_ASCII_RUNS.split(line) if p)
            for line in lines)

    for name, values in orm_segments(order):
        seg = msg.create_segment([msg.create_field([name])])
        if name == "MSH":
            seg.append(msg.create_field(["|"]))
            seg.append(msg.create_field(["^~\\&"]))
        for f, r, c, sc, text in values:
            seg.assign_field(esc(text), f, r, c, sc)
        msg.append(seg)
    return str(msg)


def hl7_report(text):
    import hl7
    msg = hl7.parse(text)
    obr = msg.segment("OBR")
    orc = msg.segments("ORC")[0] if any(str(s[0]) == "ORC" for s in msg) else None

    def raw(seg, n):
        try:
            return str(seg[n])
        except IndexError:
            return ""
    obxs = [(lambda o: lambda n: raw(o, n))(o) for o in msg if str(o[0]) == "OBX"]
    orc_2_1 = raw(orc, 2).split("~")[0].split("^")[0] if orc else ""
    return report_submission(lambda n: raw(obr, n), obxs, orc_2_1, msg.unescape, "acme",
                             SYDNEY)


# --- hl7apy -----------------------------------------------------------------------------

_ESCAPES = re.compile(r"\\(F|S|T|R|E|\.br|X(?:[0-9A-Fa-f]{2})+)\\")
_CHARS = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\", ".br": "\n"}


def _unescape_match(m):
    code = m.group(1)
    if code[0] == "X":
        raw = bytes.fromhex(code[1:])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")
    return _CHARS[code]


def unescape(s):
    """HL7 escapes undone: hl7apy keeps values as written and has no unescape of its own."""
    return _ESCAPES.sub(_unescape_match, s) if "\\" in s else s


def _raw(el):
    """The text of a leaf as it stood in the message (hl7apy's `.value` on a field
    re-escapes it, turning \\.br\\ into \\E\\.br\\E\\)."""
    while el.children:
        el = el.children[0]
    v = el.value
    return v if isinstance(v, str) else v.value


def hl7apy_oru(text):
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message
    msg = parse_message(text, find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT)
    obr = msg.obr[0]
    cnn = {c.name: unescape(_raw(c)) for c in obr.obr_32.children[0].children}
    parts = (cnn.get("CNN_%d" % k, "") for k in (6, 3, 4, 2, 5))
    lines = [unescape(_raw(o.obx_5)) for o in msg.obx if _raw(o.obx_2) == "TX"]
    return {
        "accession": unescape(_raw(obr.obr_18)),
        "status": unescape(_raw(obr.obr_25)),
        "interpreter": " ".join(p for p in parts if p),
        "text": "\n".join(lines),
    }


_HL7APY = {}


def _hl7apy_setup():
    if not _HL7APY:
        from hl7apy import load_library
        from hl7apy.consts import VALIDATION_LEVEL
        from hl7apy.core import Message
        _HL7APY.update(Message=Message, T=VALIDATION_LEVEL.TOLERANT,
                       base=load_library("2.5.1").get_base_datatypes())
    return _HL7APY


def hl7apy_orm(order):
    h = _hl7apy_setup()
    base, tol = h["base"], h["T"]

    def put(seg, name, f, c, sc, text):
        """Sets SEG-f.c.sc: text leaves through their HL7 datatype, whose to_er7 escapes the
        text; dates, times and numbers as ER7 strings (they hold no delimiter)."""
        parent, child = seg, "%s_%d" % (name.lower(), f)
        for part in (c, sc):
            el = getattr(parent, child)
            if el.datatype in base and part == 1:
                break
            parent, child = el, "%s_%d" % (el.datatype.lower(), part)
        el = getattr(parent, child)
        while el.datatype not in base:
            parent, child = el, el.datatype.lower() + "_1"
            el = getattr(parent, child)
        if el.datatype in ("DTM", "DT", "TM", "SI", "NM"):
            setattr(parent, child, text)
        else:
            el.value = base[el.datatype](text, validation_level=tol)

    m = h["Message"]("ORM_O01", version="2.5.1", validation_level=tol)
    patient = m.orm_o01_patient
    group = m.orm_o01_order
    detail = group.orm_o01_order_detail
    seen_obr = False
    for name, values in orm_segments(order):
        if name == "MSH":
            seg = m.msh
        elif name == "PID":
            seg = patient.pid
        elif name == "PV1":
            seg = patient.orm_o01_patient_visit.pv1
        elif name == "ORC":
            seg = group.orc
        elif name == "OBR":
            seg = detail.obr
            seen_obr = True
        else:
            seg = (detail if seen_obr else patient).add_segment("NTE")
        for f, r, c, sc, text in values:
            if name == "MSH" and f in (7, 9, 10, 12):
                continue
            put(seg, name, f, c, sc, text.replace("\r\n", "\n").replace("\r", "\n"))
        if name == "MSH":
            get = {(f, c): t for f, r, c, sc, t in values}
            m.msh.msh_7 = get[(7, 1)]
            m.msh.msh_9 = "ORM^O01^ORM_O01"
            m.msh.msh_10 = get[(10, 1)]
            m.msh.msh_12 = "2.5.1"
    # hl7apy writes a line break in a value as it is; the ORM is FT-style: \.br\.
    return m.to_er7().replace("\n", "\\.br\\")


# --- fhir.resources ---------------------------------------------------------------------

def fhir_sr(order):
    from fhir.resources.R4B.servicerequest import ServiceRequest
    # Building the pydantic model validates every element against the R4B definitions.
    return ServiceRequest.model_validate(service_request(order))


def fhir_dump(model):
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


IMPLS = {
    "hl7": ("python hl7", "hl7", {"oru": hl7_oru, "report": hl7_report, "orm": hl7_orm}),
    "hl7apy": ("hl7apy", "hl7apy", {"oru": hl7apy_oru, "orm": hl7apy_orm}),
    "fhir.resources": ("fhir.resources (R4B)", "fhir.resources", {"sr": fhir_sr}),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", required=True, choices=sorted(IMPLS))
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--check", type=int, default=50)
    ap.add_argument("--budget", type=float, default=60.0,
                    help="seconds after which a job stops at 2 runs")
    a = ap.parse_args()
    label, dist, jobs = IMPLS[a.impl]
    out_dir = os.path.join(a.out, a.impl)
    os.makedirs(out_dir, exist_ok=True)
    orus, orders = [], []
    for p in sorted(glob.glob(os.path.join(a.corpus, "oru", "*.hl7"))):
        with open(p, encoding="utf-8", newline="") as f:
            orus.append(f.read())
    for p in sorted(glob.glob(os.path.join(a.corpus, "orders", "*.json"))):
        with open(p, encoding="utf-8") as f:
            orders.append(json.load(f))
    impl = "%s %s" % (label, version(dist))
    for job, fn in jobs.items():
        items = orus if job in ("oru", "report") else orders
        secs, runs, out = best_of(a.runs, items, fn, a.budget)
        print(json.dumps({"job": job, "impl": impl, "items": len(items), "runs": runs,
                          "best_s": secs, "items_per_s": len(items) / secs}), flush=True)
        keep = out[:a.check]
        if job == "sr":
            keep = [fhir_dump(m) for m in keep]
        with open(os.path.join(out_dir, job + ".json"), "w", encoding="utf-8") as f:
            json.dump(keep, f, ensure_ascii=False, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
