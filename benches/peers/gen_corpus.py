"""Deterministic corpus for the side-by-side benchmark (standard library only).

Writes, under OUT:
  oru/NNNNN.hl7       ORU^R01 results, 1-20 TX observations, HL7 escapes in the text
  orders/NNNNN.json   QUBS order documents (appointment, comments, site, config), the
                      input the mapping engine reads
  expected_oru.json   for every ORU: accession, result status, interpreter, report text as
                      generated before escaping, so every reader can be checked against it

Usage: gen_corpus.py OUT [--oru N] [--orders N] [--seed S]
"""

import argparse
import json
import os
import random

SEED = 20261120

FAMILIES = ["O'Brien", "Nguyen", "Smith", "Müller", "Papadopoulos", "Singh", "Brown",
            "Lefèvre", "Tan", "Williams", "García", "Kowalski", "Zhang", "MacDonald"]
GIVENS = ["Jane", "Priya", "Liam", "Zoë", "Mohammed", "Chloé", "Oliver", "Mei", "Aroha",
          "Jack", "Sofía", "Noah", "Isla", "René"]
TITLES = ["Mrs", "Mr", "Ms", "Dr", "Miss", "Prof"]
WORDS = ("the lungs are clear there is no focal consolidation effusion or pneumothorax "
         "heart size is normal mediastinal contours within limits no acute osseous "
         "abnormality small nodule in the right upper lobe measuring mm compared with "
         "prior study stable appearance recommend follow-up in months impression "
         "unremarkable degenerative change at with mild narrowing").split()
# Plain-text characters an ER7 writer must escape, and some it must not touch.
SPECIALS = ["|", "^", "&", "~", "\\", "é", "ü", "°", "±", "%", "'", "/"]

SITES = [
    {"siteName": "North Shore Imaging", "timeZone": "Australia/Sydney"},
    {"siteName": "Swan Valley Radiology", "timeZone": "Australia/Perth"},
    {"siteName": "Harbour Imaging | Auckland", "timeZone": "Pacific/Auckland"},
]
MODALITIES = ["CT", "MR", "US", "XR", "NM", "MG", "OT"]  # OT is in no code table
PRIORITIES = ["Routine", "routine ", "Urgent", "Urgent - same day", "STAT", "Semi-urgent"]
GENDERS = ["Female", "Male", "F", "M", "Unknown", "other", "X"]
STUDIES = ["CT Chest with contrast", "MRI Brain", "US Abdomen", "XR Chest PA/Lateral",
           "NM Bone scan", "Mammogram bilateral", "CT Abdomen/Pelvis ^ delayed",
           "Outside film review"]


def escape(s):
    """HL7 v2 escaping with the default delimiters; a line break becomes \\.br\\."""
    out = []
    for c in s:
        if c == "\\":
            out.append("\\E\\")
        elif c == "|":
            out.append("\\F\\")
        elif c == "^":
            out.append("\\S\\")
        elif c == "&":
            out.append("\\T\\")
        elif c == "~":
            out.append("\\R\\")
        elif c == "\n":
            out.append("\\.br\\")
        else:
            out.append(c)
    return "".join(out)


def sentence(rng, lo, hi):
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        words.insert(rng.randrange(len(words) + 1), rng.choice(SPECIALS))
    s = " ".join(words)
    return s[0].upper() + s[1:] + "."


def ts(rng, tz_offset="+1100"):
    return "2026%02d%02d%02d%02d%02d%s" % (
        rng.randint(1, 12), rng.randint(1, 28), rng.randint(7, 19), rng.randrange(60),
        rng.randrange(60), tz_offset)


def oru(rng, i):
    appt = "APT-%06d" % (100000 + i)
    acc = "ACC%07d" % (3000000 + rng.randrange(1000000))
    status = rng.choice(["F", "F", "F", "P", "C"])
    fam, giv = rng.choice(FAMILIES), rng.choice(GIVENS)
    middle = rng.choice(["", "", "Anne", "J"])
    prefix = rng.choice(["Dr", "Dr", "Prof", ""])
    provider = "%07d%s" % (rng.randrange(10**7), rng.choice("ABCDEFGHJK"))
    interp_parts = [prefix, giv, middle, fam]
    interpreter = " ".join(p for p in interp_parts if p)
    # NDL: OBR-32.1 is a CNN whose parts are sub-components: id&family&given&middle&suffix&prefix
    ndl = "&".join([provider, escape(fam), escape(giv), escape(middle), "", escape(prefix)])
    ndl = ndl.rstrip("&")
    rep_ts = ts(rng)
    segs = [
        "MSH|^~\\&|RIS|%s|QUBS|ACME|%s||ORU^R01^ORU_R01|MSG%08d|P|2.5.1|||||AUS|UNICODE UTF-8"
        % (rng.choice(["NSI", "SVR", "HIA"]), rep_ts, i),
        "PID|1||P-%05d^^^acme^MR||%s^%s^^^%s||19%02d%02d%02d|%s"
        % (rng.randrange(10**5), escape(rng.choice(FAMILIES)), escape(rng.choice(GIVENS)),
           rng.choice(TITLES), rng.randint(30, 99), rng.randint(1, 12), rng.randint(1, 28),
           rng.choice("FMU")),
        "PV1|1|O",
        "ORC|RE|%s^QUBS|F-%05d^RIS" % (appt, i),
        "OBR|1|%s^QUBS|F-%05d^RIS|24627-2^%s^LN|||%s|||||||||^Grant^Alan||%s||||%s|||%s|||||||%s"
        % (appt, i, escape(rng.choice(STUDIES)), ts(rng), acc, rep_ts, status, ndl),
    ]
    lines = []
    n_obx = rng.randint(1, 20)
    set_id = 0
    for k in range(n_obx):
        text = sentence(rng, 6, 30)
        if rng.random() < 0.2:
            text += "\n" + sentence(rng, 3, 12)
        lines.append(text)
        set_id += 1
        segs.append("OBX|%d|TX|18782-3^Radiology Study observation^LN|%d|%s||||||%s|||%s"
                    % (set_id, k + 1, escape(text), status, rep_ts))
        if k == 0 and rng.random() < 0.25:
            # A numeric observation (dose) among the text: not part of the report text.
            set_id += 1
            segs.append("OBX|%d|NM|73569-6^Radiation dose^LN|1|%d.%d|mGy.cm|||||%s"
                        % (set_id, rng.randint(50, 900), rng.randrange(10), status))
    message = "\r".join(segs) + "\r"
    expected = {"accession": acc, "status": status, "interpreter": interpreter,
                "text": "\n".join(lines)}
    return message, expected


def order(rng, i):
    site = rng.choice(SITES)
    appt = "APT-%06d" % (500000 + i)
    pid = "P-%05d" % rng.randrange(10**5)
    fam, giv = rng.choice(FAMILIES), rng.choice(GIVENS)
    style = rng.random()
    if style < 0.6:
        name = " ".join(x for x in [rng.choice(TITLES), giv, rng.choice(["", "Mary", "Lee"]), fam] if x)
    elif style < 0.8:
        name = "%s, %s" % (fam.upper(), giv)
    else:
        name = "%s %s" % (giv, fam)
    month = rng.randint(1, 12)
    day = rng.randint(1, 28)
    start_min = rng.randint(7 * 4, 19 * 4) * 15
    start = "%02d:%02d:00" % divmod(start_min, 60)
    end_min = start_min + rng.choice([15, 30, 45, 60])
    modality = rng.choice(MODALITIES)
    appointment = {
        "domain": "acme",
        "appointmentId": appt,
        "status": "PENDING REPORTING",
        "scheduledSite": site["siteName"],
        "appointmentDate": "2026-%02d-%02d" % (month, day),
        "startTime": start,
        "patientId": pid,
        "patientName": name,
        "dateOfBirth": "19%02d-%02d-%02d" % (rng.randint(30, 99), rng.randint(1, 12), rng.randint(1, 28)),
        "gender": rng.choice(GENDERS),
        "studyDescription": rng.choice(STUDIES),
        "clinicalInfo": sentence(rng, 3, 14),
        "modality": modality,
        "priority": rng.choice(PRIORITIES),
        "doctorName": "Dr %s %s" % (rng.choice(GIVENS), rng.choice(FAMILIES)),
        "reportingDeadlineUtc": "2026-%02d-%02dT05:00:00Z" % (month, day),
        "assignedRadiologist": {
            "userId": "u-%d" % rng.randrange(1000),
            "fullName": "Dr %s %s" % (rng.choice(GIVENS), rng.choice(FAMILIES)),
            "email": "rad%d@example.org" % rng.randrange(1000),
        },
    }
    if rng.random() < 0.9:
        appointment["endTime"] = "%02d:%02d:00" % divmod(end_min, 60)
    if rng.random() < 0.85:
        appointment["assignedRadiologist"]["providerNumber"] = "%07d%s" % (
            rng.randrange(10**7), rng.choice("ABCDEFGHJK"))
    comments = []
    for k in range(rng.choice([0, 1, 1, 2, 2, 3, 4])):
        ctype = rng.choice(["AC", "AC", "PC", "AA", "PA"])
        comments.append({
            "guid": "c-%d-%d" % (i, k),
            "commentType": ctype,
            "appointmentId": appt if ctype in ("AC", "AA") else "",
            "patientId": pid,
            "commentText": sentence(rng, 3, 16) + rng.choice(["", " "]),
            "commentDateTime": "2026-%02d-%02dT%02d:%02d:00Z" % (
                month, day, rng.randrange(24), rng.randrange(60)),
            "isAlert": ctype in ("AA", "PA"),
        })
    return {
        "domain": "acme",
        "appointment": appointment,
        "comments": comments,
        "attachments": [],
        "site": site,
        "config": {"sendingApplication": "QUBS-BRIDGE", "receivingApplication": "RIS"},
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--oru", type=int, default=2000)
    ap.add_argument("--orders", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=SEED)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    os.makedirs(os.path.join(a.out, "oru"), exist_ok=True)
    os.makedirs(os.path.join(a.out, "orders"), exist_ok=True)
    expected = []
    for i in range(a.oru):
        msg, exp = oru(rng, i)
        with open(os.path.join(a.out, "oru", "%05d.hl7" % i), "w", encoding="utf-8", newline="") as f:
            f.write(msg)
        expected.append(exp)
    with open(os.path.join(a.out, "expected_oru.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=0)
    for i in range(a.orders):
        with open(os.path.join(a.out, "orders", "%05d.json" % i), "w", encoding="utf-8") as f:
            json.dump(order(rng, i), f, ensure_ascii=False, indent=1)
    print("corpus: %d ORU^R01, %d orders in %s (seed %d)" % (a.oru, a.orders, a.out, a.seed))


if __name__ == "__main__":
    main()
