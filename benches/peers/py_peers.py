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

from order_rules import orm_values, service_request


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


def hl7_orm(order):
    import hl7
    v = orm_values(order)
    msg = hl7.Message(separator="\r", sequence=[])
    esc = msg.escape

    def segment(name, values):
        """values: (field, repetition, component, sub-component, text) with 1-based parts."""
        seg = msg.create_segment([msg.create_field([name])])
        if name == "MSH":
            seg.append(msg.create_field(["|"]))
            seg.append(msg.create_field(["^~\\&"]))
        for f, r, c, s, text in values:
            if text:
                seg.assign_field(esc(text), f, r, c, s)
        msg.append(seg)

    segment("MSH", [
        (3, 1, 1, None, v["sending_app"]), (4, 1, 1, None, v["facility"]),
        (5, 1, 1, None, v["receiving_app"]), (6, 1, 1, None, v["receiving_facility"]),
        (7, None, None, None, v["now"]),
        (9, 1, 1, None, "ORM"), (9, 1, 2, None, "O01"), (9, 1, 3, None, "ORM_O01"),
        (10, None, None, None, v["control_id"]), (11, 1, 1, None, v["processing_id"]),
        (12, 1, 1, None, "2.5.1"), (18, None, None, None, "UNICODE UTF-8"),
    ])
    segment("PID", [
        (1, None, None, None, "1"),
        (3, 1, 1, None, v["patient_id"]), (3, 1, 4, None, v["authority"]), (3, 1, 5, None, "MR"),
        (5, 1, 1, None, v["family"]), (5, 1, 2, None, v["given"]), (5, 1, 3, None, v["middle"]),
        (5, 1, 5, None, v["prefix"]),
        (7, None, None, None, v["dob"]), (8, None, None, None, v["sex"]),
    ])
    segment("PV1", [
        (1, None, None, None, "1"), (2, None, None, None, "O"),
        (8, 1, 2, None, v["doctor_family"]), (8, 1, 3, None, v["doctor_given"]),
    ])
    segment("ORC", [
        (1, None, None, None, "NW"),
        (2, 1, 1, None, v["appointment_id"]), (2, 1, 2, None, v["placer_ns"]),
        (5, None, None, None, "SC"),
        (7, 1, 4, None, v["start"]), (7, 1, 5, None, v["end"]), (7, 1, 6, None, v["hl7_priority"]),
        (12, 1, 2, None, v["doctor_family"]), (12, 1, 3, None, v["doctor_given"]),
    ])
    segment("OBR", [
        (1, None, None, None, "1"),
        (2, 1, 1, None, v["appointment_id"]), (2, 1, 2, None, v["placer_ns"]),
        (4, 1, 1, None, v["procedure"]), (4, 1, 2, None, v["study"]),
        (4, 1, 3, None, "LN" if v["procedure"] else None),
        (7, None, None, None, v["start"]), (13, None, None, None, v["clinical"]),
        (16, 1, 2, None, v["doctor_family"]), (16, 1, 3, None, v["doctor_given"]),
        (24, None, None, None, v["modality"]),
        (27, 1, 4, None, v["start"]), (27, 1, 6, None, v["hl7_priority"]),
        (32, 1, 1, 1, v["provider_number"]), (32, 1, 1, 2, v["rad_family"]),
        (32, 1, 1, 3, v["rad_given"]),
        (36, None, None, None, v["start"]),
    ])
    for i, note in enumerate(v["notes"], 1):
        segment("NTE", [(1, None, None, None, str(i)), (2, None, None, None, "O"),
                        (3, None, None, None, note), (4, None, None, None, "RE")])
    return str(msg)


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
    v = orm_values(order)

    def put(parent, name, text):
        """Sets a leaf through its HL7 datatype, whose to_er7 escapes the text; a composite
        datatype is descended to its first component."""
        if not text:
            return
        el = getattr(parent, name)
        while el.datatype not in base:
            el = getattr(el, el.datatype.lower() + "_1")
        el.value = base[el.datatype](text, validation_level=tol)

    m = h["Message"]("ORM_O01", version="2.5.1", validation_level=tol)
    msh = m.msh
    put(msh, "msh_3", v["sending_app"])
    put(msh, "msh_4", v["facility"])
    put(msh, "msh_5", v["receiving_app"])
    put(msh, "msh_6", v["receiving_facility"])
    msh.msh_7 = v["now"]
    msh.msh_9 = "ORM^O01^ORM_O01"
    msh.msh_10 = v["control_id"]
    put(msh, "msh_11", v["processing_id"])
    msh.msh_12 = "2.5.1"
    put(msh, "msh_18", "UNICODE UTF-8")
    patient = m.orm_o01_patient
    pid = patient.pid
    pid.pid_1 = "1"
    put(pid.pid_3, "cx_1", v["patient_id"])
    put(pid.pid_3, "cx_4", v["authority"])
    put(pid.pid_3, "cx_5", "MR")
    put(pid.pid_5, "xpn_1", v["family"])
    put(pid.pid_5, "xpn_2", v["given"])
    put(pid.pid_5, "xpn_3", v["middle"])
    put(pid.pid_5, "xpn_5", v["prefix"])
    pid.pid_7 = v["dob"]
    put(pid, "pid_8", v["sex"])
    pv1 = patient.orm_o01_patient_visit.pv1
    pv1.pv1_1 = "1"
    put(pv1, "pv1_2", "O")
    put(pv1.pv1_8, "xcn_2", v["doctor_family"])
    put(pv1.pv1_8, "xcn_3", v["doctor_given"])
    order_group = m.orm_o01_order
    orc = order_group.orc
    put(orc, "orc_1", "NW")
    put(orc.orc_2, "ei_1", v["appointment_id"])
    put(orc.orc_2, "ei_2", v["placer_ns"])
    put(orc, "orc_5", "SC")
    orc.orc_7.tq_4 = v["start"]
    if v["end"]:
        orc.orc_7.tq_5 = v["end"]
    put(orc.orc_7, "tq_6", v["hl7_priority"])
    put(orc.orc_12, "xcn_2", v["doctor_family"])
    put(orc.orc_12, "xcn_3", v["doctor_given"])
    detail = order_group.orm_o01_order_detail
    obr = detail.obr
    obr.obr_1 = "1"
    put(obr.obr_2, "ei_1", v["appointment_id"])
    put(obr.obr_2, "ei_2", v["placer_ns"])
    put(obr.obr_4, "ce_1", v["procedure"])
    put(obr.obr_4, "ce_2", v["study"])
    put(obr.obr_4, "ce_3", "LN" if v["procedure"] else None)
    obr.obr_7 = v["start"]
    put(obr, "obr_13", v["clinical"])
    put(obr.obr_16, "xcn_2", v["doctor_family"])
    put(obr.obr_16, "xcn_3", v["doctor_given"])
    put(obr, "obr_24", v["modality"])
    obr.obr_27.tq_4 = v["start"]
    put(obr.obr_27, "tq_6", v["hl7_priority"])
    cnn = obr.obr_32.ndl_1
    put(cnn, "cnn_1", v["provider_number"])
    put(cnn, "cnn_2", v["rad_family"])
    put(cnn, "cnn_3", v["rad_given"])
    obr.obr_36 = v["start"]
    for i, note in enumerate(v["notes"], 1):
        nte = detail.add_segment("NTE")
        nte.nte_1 = str(i)
        put(nte, "nte_2", "O")
        put(nte, "nte_3", note)
        put(nte.nte_4, "ce_1", "RE")
    return m.to_er7()


# --- fhir.resources ---------------------------------------------------------------------

def fhir_sr(order):
    from fhir.resources.R4B.servicerequest import ServiceRequest
    # Building the pydantic model validates every element against the R4B definitions.
    return ServiceRequest.model_validate(service_request(order))


def fhir_dump(model):
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


IMPLS = {
    "hl7": ("python hl7", "hl7", {"oru": hl7_oru, "orm": hl7_orm}),
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
        items = orus if job == "oru" else orders
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
