"""Checks every implementation's outputs, then prints the ratio table.

  compare.py WORK     (WORK holds corpus/, out/<impl>/ and results.jsonl)

Checks, on the items each implementation saved (the first --check of the corpus):
- ORU: accession, status, interpreter and report text equal to what the generator wrote
  before escaping (expected_oru.json), for every implementation;
- report: every implementation's report submission equals the one the generator expects
  (expected_oru.json `report`: the retracted rows left out, coded rows as their text,
  the report time in UTC);
- ORM^O01: every peer's message equals qubs-bridge's field by field once values are
  unescaped (MSH-7 time and MSH-10 control id excepted), and qubs-bridge's carries the
  order's appointment id, clinical history and comments with text;
- ServiceRequest: every peer's resource equals qubs-bridge's as JSON, and it carries the
  order's appointment id.
Any difference is printed and the exit status is 1: the table is only printed for
implementations that produced the same results.
"""

import glob
import json
import os
import sys

import hl7

PRIMARY = "qubs-bridge"
# What the oru job extracts (expected_oru.json also holds each message's `report`).
ORU_FIELDS = ("accession", "status", "interpreter", "text")
TARGET = 20.0


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def er7_tree(text):
    """Segments -> fields -> repetitions -> components -> sub-components, every leaf unescaped
    (with python-hl7's unescape), trailing empty parts dropped at every level. Index n of a
    segment is field n, MSH included (MSH-1 is the field separator)."""
    text = text.replace("\n", "\r")
    msg = hl7.parse(text)
    out = []
    for line in filter(None, text.split("\r")):
        fields = line.split("|")
        seg = [fields[0]]
        if fields[0] == "MSH":
            seg += ["|", fields[1]]  # the delimiters themselves, never escaped
            fields = fields[1:]
        for f in fields[1:]:
            reps = [[trim([msg.unescape(s) for s in c.split("&")]) for c in r.split("^")]
                    for r in f.split("~")]
            seg.append(trim([trim(r) for r in reps]))
        out.append(trim(seg))
    return out


def trim(parts):
    while parts and parts[-1] in ("", []):
        parts = parts[:-1]
    return parts


def leaf(tree, seg, field, comp=1):
    """Unescaped SEG-field.comp of the first such segment, or ''."""
    for s in tree:
        if s[0] == seg:
            try:
                return s[field][0][comp - 1][0]
            except IndexError:
                return ""
    return ""


def check(work):
    corpus = os.path.join(work, "corpus")
    out = os.path.join(work, "out")
    impls = sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "*")))
    if PRIMARY not in impls:
        return ["no qubs-bridge outputs in %s" % out]
    errors = []
    expected = load(os.path.join(corpus, "expected_oru.json"))
    orders = [load(p) for p in sorted(glob.glob(os.path.join(corpus, "orders", "*.json")))]

    for impl in impls:
        path = os.path.join(out, impl, "oru.json")
        if not os.path.exists(path):
            continue
        got = load(path)
        if not got:
            errors.append("%s: no ORU outputs saved" % impl)
        for i, g in enumerate(got):
            for k in ORU_FIELDS:
                v = expected[i][k]
                if g.get(k) != v:
                    errors.append("%s: ORU %d: %s is %r, expected %r"
                                  % (impl, i, k, g.get(k, "")[:120], v[:120]))

    def lines(t):
        return t.replace("\r\n", "\n").replace("\r", "\n")

    for impl in impls:
        path = os.path.join(out, impl, "report.json")
        if not os.path.exists(path):
            continue
        got = load(path)
        if not got:
            errors.append("%s: no report outputs saved" % impl)
        for i, g in enumerate(got):
            if g != expected[i]["report"]:
                keys = sorted(k for k in set(g) | set(expected[i]["report"])
                              if g.get(k) != expected[i]["report"].get(k))
                errors.append("%s: report %d differs in %s: %r, expected %r"
                              % (impl, i, keys, [str(g.get(k))[:80] for k in keys],
                                 [str(expected[i]["report"].get(k))[:80] for k in keys]))

    ref_orm = [er7_tree(m) for m in load(os.path.join(out, PRIMARY, "orm.json"))]
    for i, t in enumerate(ref_orm):
        o = orders[i]
        a = o["appointment"]
        notes = sorted(lines(n[3][0][0][0]) for n in t if n[0] == "NTE")
        wanted = [lines(c["commentText"].strip()) for c in o.get("comments") or []
                  if c["commentText"].strip()]
        if (a.get("clinicalInfo") or "").strip():
            wanted.append(lines(a["clinicalInfo"].strip()))
        carried = all(any(n in (w, "ALERT: " + w) for n in notes) for w in wanted)
        if (leaf(t, "MSH", 9) != "ORM" or leaf(t, "ORC", 2) != a["appointmentId"]
                or len(notes) != len(wanted) or not carried):
            errors.append("%s: ORM %d does not carry the order's values" % (PRIMARY, i))
    for impl in impls:
        path = os.path.join(out, impl, "orm.json")
        if impl == PRIMARY or not os.path.exists(path):
            continue
        for i, m in enumerate(load(path)):
            t = er7_tree(m)
            if not leaf(t, "MSH", 7) or not leaf(t, "MSH", 10):
                errors.append("%s: ORM %d has no MSH-7 or MSH-10" % (impl, i))
            for tree in (t, ref_orm[i]):
                tree[0] = [f if n not in (7, 10) else [] for n, f in enumerate(tree[0])]
            if t != ref_orm[i]:
                for a, b in zip(t, ref_orm[i]):
                    if a != b:
                        errors.append("%s: ORM %d: %s differs:\n  %r\n  qubs-bridge: %r"
                                      % (impl, i, a[0], a, b))
                        break
                else:
                    errors.append("%s: ORM %d: %d segments, qubs-bridge %d"
                                  % (impl, i, len(t), len(ref_orm[i])))

    ref_sr = load(os.path.join(out, PRIMARY, "sr.json"))
    for i, r in enumerate(ref_sr):
        if (r.get("resourceType") != "ServiceRequest"
                or r["identifier"][0]["value"] != orders[i]["appointment"]["appointmentId"]):
            errors.append("%s: ServiceRequest %d does not carry the order's id" % (PRIMARY, i))
    for impl in impls:
        path = os.path.join(out, impl, "sr.json")
        if impl == PRIMARY or not os.path.exists(path):
            continue
        for i, r in enumerate(load(path)):
            if r != ref_sr[i]:
                keys = sorted(k for k in set(r) | set(ref_sr[i]) if r.get(k) != ref_sr[i].get(k))
                errors.append("%s: ServiceRequest %d differs in %s: %r vs qubs-bridge %r"
                              % (impl, i, keys, [r.get(k) for k in keys],
                                 [ref_sr[i].get(k) for k in keys]))
    return errors


JOBS = [
    ("oru", "ORU^R01 parse + extract 4 values (unescaped)"),
    ("report", "ORU^R01 -> QUBS report submission (oru_to_report.yaml)"),
    ("orm", "appointment -> ORM^O01 ER7"),
    ("sr", "appointment -> FHIR ServiceRequest, validated"),
]


def ratio_text(x):
    return "%.1f" % x if x >= 10 else "%.2f" % x if x >= 0.1 else "%.3f" % x


def table(work):
    rows = [json.loads(line) for line in open(os.path.join(work, "results.jsonl"))
            if line.startswith("{")]
    lines = []
    summary = []
    missed = False
    w = max(len(r["impl"]) for r in rows) + 2
    for job, title in JOBS:
        rs = sorted((r for r in rows if r["job"] == job), key=lambda r: -r["items_per_s"])
        peers = [r for r in rs if not r["impl"].startswith(PRIMARY)]
        ours = [r for r in rs if r["impl"] == PRIMARY]
        if not peers or not ours:
            continue
        fastest = peers[0]
        lines.append("%s: %s (%d items)" % (job, title, rs[0]["items"]))
        lines.append("  %-*s %12s %16s %5s %18s" % (w, "implementation", "items/s",
                                                   "vs fastest peer", "runs", "allocs/item"))
        for r in rs:
            lines.append("  %-*s %12s %15sx %5d %18s" % (w, r["impl"], "{:,.0f}".format(r["items_per_s"]),
                                                         ratio_text(r["items_per_s"] / fastest["items_per_s"]),
                                                         r["runs"], allocs_text(r)))
        lines.append("")
        ratio = ours[0]["items_per_s"] / fastest["items_per_s"]
        ok = ratio >= TARGET
        missed |= not ok
        summary.append("  %-6s qubs-bridge / %-*s = %6sx  (%s %gx)"
                       % (job, w - 2, fastest["impl"], ratio_text(ratio),
                          "meets" if ok else "misses", TARGET))
    print("\n".join(lines))
    print("qubs-bridge / fastest peer:")
    print("\n".join(summary))
    return missed


def allocs_text(row):
    """Heap allocations per item and bytes asked for, where the implementation counts them
    (the Rust side, with a counting allocator; the peers' runtimes have no comparable figure)."""
    if "allocs_per_item" not in row:
        return "-"
    return "%.0f (%s B)" % (row["allocs_per_item"], "{:,.0f}".format(row["alloc_bytes_per_item"]))


def main():
    work = sys.argv[1]
    errors = check(work)
    if errors:
        print("OUTPUT CHECK FAILED (%d differences):" % len(errors), file=sys.stderr)
        for e in errors[:40]:
            print("  " + e, file=sys.stderr)
        return 1
    print("output check: every implementation agrees on the checked items\n")
    table(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
