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
import datetime
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
    report_lines = []
    n_obx = rng.randint(1, 20)
    set_id = 0
    for k in range(n_obx):
        text = sentence(rng, 6, 30)
        if rng.random() < 0.2:
            text += "\n" + sentence(rng, 3, 12)
        lines.append(text)
        # A row sent with OBX-11 W ("wrong", e.g. entered on the wrong patient) is retracted:
        # the 4-value job reads every TX row, the report mapping leaves it out.
        row_status = "W" if k > 0 and rng.random() < 0.04 else status
        if row_status != "W":
            report_lines.append(text)
        set_id += 1
        segs.append("OBX|%d|TX|18782-3^Radiology Study observation^LN|%d|%s||||||%s|||%s"
                    % (set_id, k + 1, escape(text), row_status, rep_ts))
        if k == 0 and rng.random() < 0.25:
            # A numeric observation (dose) among the text: not part of the report text.
            set_id += 1
            segs.append("OBX|%d|NM|73569-6^Radiation dose^LN|1|%d.%d|mGy.cm|||||%s"
                        % (set_id, rng.randint(50, 900), rng.randrange(10), status))
    if rng.random() < 0.1:
        # A coded conclusion: the report reads its text (component 2).
        set_id += 1
        grade = rng.randint(1, 5)
        segs.append("OBX|%d|CE|36625-2^Impression^LN|1|BI%d^BI-RADS %d^ACR||||||%s"
                    % (set_id, grade, grade, status))
        report_lines.append("BI-RADS %d" % grade)
    message = "\r".join(segs) + "\r"
    y, mo, d, h, mi, sec = (int(rep_ts[a:b]) for a, b in
                            ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14)))
    reported = datetime.datetime(y, mo, d, h, mi, sec,
                                 tzinfo=datetime.timezone(datetime.timedelta(hours=11)))
    expected = {"accession": acc, "status": status, "interpreter": interpreter,
                "text": "\n".join(lines),
                # What the whole inbound mapping (oru_to_report.yaml) makes of it.
                "report": {
                    "domain": "acme",
                    "appointmentId": appt,
                    "reportText": "\n".join(report_lines),
                    "reportStatus": "preliminary" if status == "P" else "final",
                    "reportFormat": "text/plain",
                    "interpretingClinicianName": interpreter,
                    "interpretingClinicianProviderNumber": provider,
                    "reportedAtUtc": reported.astimezone(datetime.timezone.utc)
                                             .strftime("%Y-%m-%dT%H:%M:%SZ"),
                }}
    return message, expected


# Order inputs as QUBS sends them, with the variety the shipped mappings decide on: exam
# codes the LOINC table knows, does not know, or none; names in one field (titles,
# particles, suffixes, `Family, Given`, HL7-style) or structured; statuses, comment types
# in any case, alerts flagged either way, blank comments, long clinical histories,
# appointments without a start or an end, attachments.
EXAM_CODES = [("CTBRN", "CT brain non-contrast"), ("MRKNL", "MRI knee left"),
              ("XRCHE", "XR chest PA/lateral"), ("USABD", "US abdomen complete"),
              ("CTPA", "CT pulmonary angiogram"), ("MRLSP", "MRI lumbar spine"),
              ("mgbil", "Mammogram bilateral screening"), ("XRANR", "XR ankle right"),
              ("CTABP", "CT abdomen/pelvis contrast"), ("USTHY", "US thyroid"),
              ("CTCHC", "CT chest contrast"), ("CTCHU", "CT chest non-contrast"),
              ("MRBRN", "MRI brain")]
UNKNOWN_EXAMS = [("XRSKL", "XR skull"), ("NMBON", "NM bone scan")]
ORDER_MODALITIES = ["CT", "MR", "MRI", "US", "XR", "CR", "NM", "MG", "PET", "OT", "PET-CT"]
FAMILY_NAMES = FAMILIES + ["Te Rangi", "van der Berg", "Ó Súilleabháin", "de la Cruz",
                           "bin Abdullah", "Ní Bhriain"]
STATUSES = ["PENDING REPORTING"] * 12 + ["AUTHORISED", "APPPOINTMENT CANCELLED",
                                         "DID NOT ATTEND", "typed", "Dictation Inprogress",
                                         "ON HOLD"]
COMMENT_TYPES = ["AC", "AC", "PC", "AA", "PA", "ac", "Pa", "ZZ"]


def person_name(rng):
    fam, giv = rng.choice(FAMILY_NAMES), rng.choice(GIVENS)
    style = rng.random()
    if style < 0.5:
        return " ".join(x for x in [rng.choice(TITLES), giv, rng.choice(["", "Mary", "Lee"]),
                                    fam, rng.choice(["", "", "", "", "Jr"])] if x)
    if style < 0.7:
        return "%s, %s" % (fam.upper(), giv)
    if style < 0.9:
        return "%s %s" % (giv, fam)
    return "%s^%s^^^%s" % (fam, giv, rng.choice(TITLES))


def order(rng, i):
    site = rng.choice(SITES)
    appt = "APT-%06d" % (500000 + i)
    pid = "P-%05d" % rng.randrange(10**5)
    month = rng.randint(1, 12)
    day = rng.randint(1, 28)
    start_min = rng.randint(7 * 4, 19 * 4) * 15
    end_min = start_min + rng.choice([15, 30, 45, 60])
    modality = rng.choice(ORDER_MODALITIES)
    clinical = sentence(rng, 3, 14)
    if rng.random() < 0.05:
        clinical = " ".join(sentence(rng, 20, 30) for _ in range(3)) + "\r\n" + sentence(rng, 5, 9)
    appointment = {
        "domain": "acme",
        "appointmentId": appt,
        "status": rng.choice(STATUSES),
        "scheduledSite": site["siteName"],
        "appointmentDate": "2026-%02d-%02d" % (month, day),
        "patientId": pid,
        "patientName": person_name(rng),
        "gender": rng.choice(GENDERS),
        "studyDescription": rng.choice(STUDIES),
        "modality": modality,
        "priority": rng.choice(PRIORITIES),
    }
    birth = "19%02d-%02d-%02d" % (rng.randint(30, 99), rng.randint(1, 12), rng.randint(1, 28))
    appointment["dateOfBirth" if rng.random() < 0.9 else "patientDateOfBirth"] = birth
    if rng.random() < 0.95:
        appointment["clinicalInfo"] = clinical
    if rng.random() < 0.95:
        appointment["startTime"] = "%02d:%02d:00" % divmod(start_min, 60)
        if rng.random() < 0.9:
            appointment["endTime"] = "%02d:%02d:00" % divmod(end_min, 60)
    kind = rng.random()
    if kind < 0.6:
        appointment["examCodes"] = [dict(zip(("code", "description"), rng.choice(EXAM_CODES)))]
    elif kind < 0.7:
        appointment["examCodes"] = [dict(zip(("code", "description"), rng.choice(UNKNOWN_EXAMS)))]
    elif kind < 0.85:
        appointment["examCodes"] = []
    doctor = rng.random()
    if doctor < 0.7:
        appointment["doctorName"] = "Dr %s %s" % (rng.choice(GIVENS), rng.choice(FAMILY_NAMES))
    elif doctor < 0.9:
        appointment["doctorFirstName"] = rng.choice(GIVENS)
        appointment["doctorLastName"] = rng.choice(FAMILY_NAMES)
        if rng.random() < 0.5:
            appointment["doctorName"] = "Dr %s %s" % (appointment["doctorFirstName"],
                                                      appointment["doctorLastName"])
    if rng.random() < 0.9:
        appointment["reportingDeadlineUtc"] = "2026-%02d-%02dT05:00:00Z" % (month, day)
    radiologist = rng.random()
    number = "%07d%s" % (rng.randrange(10**7), rng.choice("ABCDEFGHJK"))
    if radiologist < 0.6:
        appointment["assignedRadiologist"] = {
            "userId": "u-%d" % rng.randrange(1000),
            "fullName": "Dr %s %s" % (rng.choice(GIVENS), rng.choice(FAMILY_NAMES)),
            "email": "rad%d@example.org" % rng.randrange(1000),
        }
        if rng.random() < 0.85:
            appointment["assignedRadiologist"]["providerNumber"] = number
    elif radiologist < 0.85:
        appointment["assignedRadiologist"] = None
        appointment["radiologist"] = {
            "userId": "u-%d" % rng.randrange(1000),
            "firstName": rng.choice(GIVENS),
            "lastName": rng.choice(FAMILY_NAMES),
            "email": "rad%d@example.org" % rng.randrange(1000),
            "providerNumber": number,
        }
    comments = []
    for k in range(rng.choice([0, 1, 1, 2, 2, 3, 4])):
        ctype = rng.choice(COMMENT_TYPES)
        text = sentence(rng, 3, 16) + rng.choice(["", " "])
        if rng.random() < 0.1:
            text += "\r\n" + sentence(rng, 2, 6)
        if rng.random() < 0.03:
            text = "   "
        comments.append({
            "guid": "c-%d-%d" % (i, k),
            "commentType": ctype,
            "appointmentId": appt if ctype.upper() not in ("PC", "PA") else "",
            "patientId": pid,
            "commentText": text,
            "commentDateTime": "2026-%02d-%02dT%02d:%02d:00Z" % (
                month, day, rng.randrange(24), rng.randrange(60)),
            "isAlert": ctype.upper() in ("AA", "PA") or rng.random() < 0.1,
        })
    attachments = []
    for k in range(rng.choice([0, 0, 1, 2])):
        attachments.append({
            "guid": "a-%d-%d" % (i, k),
            "category": rng.choice(["Referral", "Worksheet", None]),
            "fileName": rng.choice(["referral.pdf", "worksheet.png", "prior | report.pdf"]),
            "addedDateTime": "2026-%02d-%02dT01:00:00Z" % (month, day),
            "url": None,
        })
    return {
        "domain": "acme",
        "appointment": appointment,
        "comments": comments,
        "attachments": attachments,
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
