"""The rules of the shipped mappings (mappings/orm_o01.yaml, service_request.yaml and
oru_to_report.yaml, with their tables) written out in Python for the Python peers: what an
integration developer using one of those libraries would write by hand. Only the message or
resource building differs per library; these values are computed inside the timed loop, as
the mapping engine computes its values inside qubs-bridge's.

Kept in step with the mappings by the output check of compare.py: every peer's ORM^O01,
ServiceRequest and report submission must equal qubs-bridge's.
"""

import re
import uuid
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

# --- code tables (mappings/tables/*.yaml) ------------------------------------------------

PRIORITY = {"routine": "routine", "normal": "routine", "elective": "routine",
            "urgent": "urgent", "urgent - same day": "asap", "same day": "asap",
            "asap": "asap", "stat": "stat", "emergency": "stat"}
HL7_PRIORITY = {"routine": "R", "urgent": "A", "asap": "A", "stat": "S"}
SEX = {"male": "M", "m": "M", "female": "F", "f": "F", "other": "O", "o": "O",
       "unknown": "U", "u": "U"}
FHIR_GENDER = {"M": "male", "F": "female", "O": "other", "U": "unknown", "A": "other",
               "N": "unknown"}
EXAM_LOINC = {"ctbrn": "30799-1", "mrknl": "26257-6", "xrche": "36643-5", "usabd": "24558-9",
              "ctpa": "36147-7", "mrlsp": "24968-0", "mgbil": "26175-0", "xranr": "46347-1",
              "ctabp": "36813-4", "usthy": "25010-0", "ctchc": "24628-0", "ctchu": "29252-4",
              "mrbrn": "24590-2"}
MODALITY_LOINC = {"ct": "25045-6", "mr": "25056-3", "mri": "25056-3", "us": "25061-3",
                  "xr": "43468-8", "cr": "43468-8", "dx": "43468-8", "nm": "49118-3",
                  "pt": "44136-0", "pet": "44136-0"}
LOINC_NAMES = {
    "30799-1": "CT Head WO contrast", "26257-6": "MR Knee - left",
    "36643-5": "XR Chest 2 Views", "24558-9": "US Abdomen",
    "36147-7": "CTA Pulmonary arteries W contrast IV", "24968-0": "MR Lumbar spine",
    "26175-0": "MG Breast - bilateral Screening", "46347-1": "XR Ankle - right GE 3 Views",
    "36813-4": "CT Abdomen and Pelvis W contrast IV", "25010-0": "US Thyroid gland",
    "24628-0": "CT Chest W contrast IV", "29252-4": "CT Chest WO contrast",
    "24590-2": "MR Brain", "25045-6": "CT Unspecified body region",
    "25056-3": "MR Unspecified body region", "25061-3": "US Unspecified body region",
    "43468-8": "XR Unspecified body region Views", "49118-3": "NM Unspecified body region Views",
    "44136-0": "PT Unspecified body region"}
# QUBS status -> lifecycle class (appointment_status.yaml; default in_progress).
LIFECYCLE = {"not arrived": "booked", "arrived": "booked", "cancellation list": "booked",
             "study inprogress": "in_progress", "pending reporting": "in_progress",
             "dictation inprogress": "reporting", "dictated": "reporting",
             "typing inprogress": "reporting", "typed": "preliminary",
             "review typed": "preliminary", "authorising": "preliminary",
             "second review": "preliminary", "peer review": "preliminary",
             "second opinion": "preliminary", "authorised": "final", "finalised": "final",
             "apppointment cancelled": "cancelled", "appointment cancelled": "cancelled",
             "did not attend": "not_attended"}
SR_STATUS = {"final": "completed", "cancelled": "revoked", "not_attended": "revoked"}
ORC_1 = {"final": "SC", "cancelled": "CA", "not_attended": "DC"}
ORC_5 = {"booked": "SC", "final": "CM", "cancelled": "CA", "not_attended": "DC"}
RESULT_STATUS = {"p": "preliminary", "f": "final", "c": "final"}

# --- names (src/mapping/names.rs) ------------------------------------------------------

TITLES = {"dr", "dr.", "prof", "prof.", "mr", "mr.", "mrs", "mrs.", "ms", "ms.", "miss", "mx",
          "a/prof", "assoc", "assoc.", "sir", "dame"}
SUFFIXES = {"jr", "jr.", "sr", "sr.", "ii", "iii", "iv"}
PARTICLES = {"van", "von", "der", "den", "ter", "ten", "zu", "zum", "zur", "vander", "de",
             "del", "della", "dei", "degli", "di", "da", "das", "dos", "du", "des", "la", "le",
             "lo", "san", "santa", "st", "st.", "saint", "ó", "o", "ní", "nic", "ua", "uí",
             "mac", "mc", "ap", "te", "bin", "binti", "bint", "ibn", "abu"}


def squash(s):
    return " ".join(s.split())


def parse_name(s):
    """(prefixes, given names, family, suffix) of a name kept in one field."""
    s = s.strip()
    if "^" in s:
        c = [squash(x) for x in s.split("^")] + [""] * 5
        return ([c[4]] if c[4] else [], [x for x in (c[1], c[2]) if x], c[0] or None,
                c[3] or None)
    family = None
    rest = s
    if "," in s:
        f, rest = s.split(",", 1)
        family = squash(f) or None
    words = rest.split()
    prefix = []
    while len(words) > 1 or (family is not None and words):
        if words[0].lower() in TITLES:
            prefix.append(words.pop(0))
        else:
            break
    if len(words) == 1 and family is None and words[0].lower() in TITLES:
        prefix.append(words.pop(0))
    suffix = None
    if (len(words) > 2 or (family is not None and len(words) > 1)) and words[-1].lower() in SUFFIXES:
        suffix = words.pop()
    if family is None and words:
        start = len(words) - 1
        while start > 1 and words[start - 1].lower() in PARTICLES:
            start -= 1
        family = " ".join(words[start:])
        del words[start:]
    return prefix, words, family, suffix


def name_part(s, part):
    prefix, given, family, suffix = parse_name(s)
    if part == "family":
        return family or ""
    if part == "given":
        return given[0] if given else ""
    if part == "middle":
        return " ".join(given[1:])
    if part == "prefix":
        return " ".join(prefix)
    if part == "suffix":
        return suffix or ""
    return " ".join(prefix + given + ([family] if family else []) + ([suffix] if suffix else []))


# --- values ------------------------------------------------------------------------------

_BREAKS = re.compile(r"[\r\n\u2028\u2029\x85]")


def present(v):
    """A value a rule can use: missing, null and "" are absent."""
    return v is not None and v != ""


# mappings/tables/hl7_diagnostic_service.yaml: modality -> HL7 table 0074 (any case; RAD
# for a modality it does not list).
HL7_DIAGNOSTIC_SERVICE = {
    "ct": "CT", "mr": "NMR", "mri": "NMR", "us": "RUS", "xr": "RX", "cr": "RX", "dx": "RX",
    "mg": "RX", "nm": "NMS", "pt": "NMS", "pet": "NMS", "pet-ct": "NMS", "rf": "RAD",
    "xa": "RAD",
}


def text(v):
    """A JSON scalar as text (None when absent)."""
    if v is None or isinstance(v, (dict, list)):
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    v = str(v)
    return v if v else None


def first(*values):
    for v in values:
        v = text(v)
        if v is not None:
            return v
    return None


def blank(v):
    """`present: false` in a condition: absent or only white space."""
    return v is None or (isinstance(v, str) and not v.strip())


def single_line(s):
    if s is None or not _BREAKS.search(s):
        return s
    return " ".join(x.strip() for x in _BREAKS.split(s) if x.strip())


def trim(s):
    return None if s is None else s.strip()


def escaped_len(s):
    return sum(3 if c in "|^&~\\" else 5 if c in "\r\n" else 1 for c in s)


def hl7_max_length(s, limit):
    if s is None or escaped_len(s) <= limit:
        return s
    out = []
    used = 1
    for c in s:
        w = escaped_len(c)
        if used + w > limit:
            break
        used += w
        out.append(c)
    return "".join(out).rstrip() + "\u2026"


def lookup(table, v, default=None):
    if v is None or v == "":
        return v
    return table.get(v.strip().lower(), default)


def site_time(day, clock, zone):
    return datetime.fromisoformat(day + "T" + clock).replace(tzinfo=zone)


def site_end(day, start, end, zone):
    """End of a site-local interval: an end before the start is on the next day."""
    s = datetime.fromisoformat(day + "T" + start)
    e = datetime.fromisoformat(day + "T" + end)
    if e < s:
        e += timedelta(days=1)
    return e.replace(tzinfo=zone)


def hl7_ts(dt):
    return dt.strftime("%Y%m%d%H%M%S%z")


def iso_ts(dt):
    return dt.isoformat()


def instant(s):
    dt = datetime.fromisoformat(s.strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_alert(c):
    return (text(c.get("isAlert")) or "").strip().lower() == "true" or \
        (text(c.get("commentType")) or "").strip().upper() in ("AA", "PA")


def comment_groups(order):
    """Comments with text, patient-level (PC, PA) first, then the others, each in QUBS's order;
    each as (alert, text)."""
    patient, other = [], []
    for c in order.get("comments") or []:
        if blank(c.get("commentText")):
            continue
        kind = (text(c.get("commentType")) or "").strip().upper()
        (patient if kind in ("PC", "PA") else other).append(c)
    return patient, other


def note_text(c):
    t = c["commentText"].strip()
    return "ALERT: " + t if is_alert(c) else t


class Person:
    """A referrer or radiologist: structured first/last names as they are, a single-field
    name parsed only for what they do not give; title and middle names from that field."""

    def __init__(self, first_name, last_name, full):
        self.first, self.last, self.full = text(first_name), text(last_name), text(full)
        parsed = single_line(self.full)
        self.family = trim(self.last if self.last is not None else
                           (name_part(self.full, "family") or None) if self.full else None)
        self.given = trim(self.first if self.first is not None else
                          (name_part(self.full, "given") or None) if self.full else None)
        self.family = single_line(self.family)
        self.given = single_line(self.given)
        structured = not (blank(first_name) and blank(last_name))
        self.middle = None if structured or parsed is None else name_part(parsed, "middle")
        self.prefix = None if parsed is None else name_part(parsed, "prefix")


def radiologist(a):
    ar = a.get("assignedRadiologist") or {}
    r = a.get("radiologist") or {}
    full = first(ar.get("fullName"), r.get("fullName"))
    parsed = single_line(full)

    def part(field, name_kind):
        for who in (ar, r):
            if present(text(who.get(field))):
                return text(who.get(field))
            if present(text(who.get("fullName"))):
                v = name_part(who["fullName"], name_kind)
                if v:
                    return v
        return None
    structured = any(not blank(x.get(k)) for x in (ar, r) for k in ("firstName", "lastName"))
    return {
        "number": trim(first(ar.get("providerNumber"), r.get("providerNumber"))),
        "family": single_line(trim(part("lastName", "family"))),
        "given": single_line(trim(part("firstName", "given"))),
        "middle": None if structured or parsed is None else name_part(parsed, "middle"),
        "prefix": None if parsed is None else name_part(parsed, "prefix"),
        "text": single_line(trim(first(
            ar.get("fullName"), template(ar.get("firstName"), ar.get("lastName")),
            r.get("fullName"), template(r.get("firstName"), r.get("lastName"))))),
        "email": trim(first(ar.get("email"), r.get("email"))),
        "any": any(not blank(x.get(k)) for x in (ar, r)
                   for k in ("providerNumber", "fullName", "firstName", "lastName", "email")),
    }


def template(*parts):
    """`"{a} {b}"`: absent when every placeholder is, else the text trimmed."""
    values = [text(p) for p in parts]
    if all(v is None for v in values):
        return None
    return " ".join(v or "" for v in values).strip() or None


def exam(a):
    codes = a.get("examCodes") or []
    code = text(codes[0].get("code")) if codes else None
    description = text(codes[0].get("description")) if codes else None
    modality = text(a.get("modality"))
    if not blank(code):
        loinc = EXAM_LOINC.get(code.strip().lower()) or None
        loinc_system = code.strip().lower() in EXAM_LOINC
    else:
        loinc = MODALITY_LOINC.get(modality.strip().lower()) or None if modality else None
        loinc_system = modality is not None and modality.strip().lower() in MODALITY_LOINC
    return {
        "code": trim(code) if not blank(code) else None,
        "raw_code": code,
        "description": trim(description),
        "has_code": not blank(code),
        "text": trim(first(a.get("studyDescription"), description, modality)),
        "loinc": loinc,
        "loinc_name": LOINC_NAMES.get(loinc) or None if loinc else None,
        "loinc_system": loinc_system,
    }


def lifecycle(a):
    s = text(a.get("status"))
    if s is None or not s.strip():
        return None
    return LIFECYCLE.get(s.strip().lower(), "in_progress")


def orm_segments(order):
    """The ORM^O01 of orm_o01.yaml: segments, each a list of
    (field, repetition, component, sub-component, text) with 1-based parts; empty values are
    left out."""
    a = order["appointment"]
    site = order.get("site") or {}
    cfg = order.get("config") or {}
    zone = ZoneInfo(site["timeZone"])
    domain = text(order.get("domain"))
    patient_name = single_line(text(a.get("patientName")))
    doctor = Person(a.get("doctorFirstName"), a.get("doctorLastName"), a.get("doctorName"))
    rad = radiologist(a)
    x = exam(a)
    day, start, end = text(a.get("appointmentDate")), text(a.get("startTime")), text(a.get("endTime"))
    start_ts = hl7_ts(site_time(day, start, zone)) if not blank(start) else None
    end_ts = hl7_ts(site_end(day, start, end, zone)) if not blank(start) and not blank(end) else None
    prio = HL7_PRIORITY[lookup(PRIORITY, trim(text(a.get("priority"))), "routine") or "routine"] \
        if present(trim(text(a.get("priority")))) else None
    life = lifecycle(a)
    appointment_id = trim(single_line(trim(text(a.get("appointmentId")))))
    placer_ns = text(cfg.get("placerNamespace")) or "QUBS"
    gender = trim(first(a.get("gender"), a.get("patientSex")))
    clinical = text(a.get("clinicalInfo"))
    dob = first(a.get("dateOfBirth"), a.get("patientDateOfBirth"))

    msh = [(3, 1, 1, 1, text(cfg.get("sendingApplication")) or "QUBS"),
           (4, 1, 1, 1, single_line(first(site.get("siteName"), a.get("scheduledSite"), domain))),
           (5, 1, 1, 1, text(cfg.get("receivingApplication"))),
           (6, 1, 1, 1, text(cfg.get("receivingFacility"))),
           (7, 1, 1, 1, hl7_ts(datetime.now(zone))),
           (9, 1, 1, 1, "ORM"), (9, 1, 2, 1, "O01"), (9, 1, 3, 1, "ORM_O01"),
           (10, 1, 1, 1, uuid.uuid4().hex[:20].upper()),
           (11, 1, 1, 1, text(cfg.get("processingId")) or "P"),
           (12, 1, 1, 1, "2.5.1"), (18, 1, 1, 1, "UNICODE UTF-8")]
    pid = [(1, 1, 1, 1, "1"),
           (3, 1, 1, 1, single_line(trim(text(a.get("patientId"))))),
           (3, 1, 4, 1, first(cfg.get("patientAssigningAuthority"), domain)),
           (3, 1, 5, 1, "MR")]
    if patient_name is not None:
        pid += [(5, 1, 1, 1, name_part(patient_name, "family")),
                (5, 1, 2, 1, name_part(patient_name, "given")),
                (5, 1, 3, 1, name_part(patient_name, "middle")),
                (5, 1, 4, 1, name_part(patient_name, "suffix")),
                (5, 1, 5, 1, name_part(patient_name, "prefix"))]
    pid += [(7, 1, 1, 1, date.fromisoformat(dob.strip()[:10]).strftime("%Y%m%d") if dob else None),
            (8, 1, 1, 1, lookup(SEX, gender, "U"))]

    def nte(set_id, c):
        alert = is_alert(c)
        return [(1, 1, 1, 1, str(set_id)), (2, 1, 1, 1, "P"), (3, 1, 1, 1, note_text(c)),
                (4, 1, 1, 1, "AI" if alert else "RE"),
                (4, 1, 2, 1, "Ancillary Instructions" if alert else "Remark"),
                (4, 1, 3, 1, "HL70364")]

    def person(f):
        return [(f, 1, 2, 1, doctor.family), (f, 1, 3, 1, doctor.given),
                (f, 1, 4, 1, doctor.middle), (f, 1, 6, 1, doctor.prefix)]

    patient_notes, order_notes = comment_groups(order)
    segments = [("MSH", msh), ("PID", pid)]
    segments += [("NTE", nte(i, c)) for i, c in enumerate(patient_notes, 1)]
    segments.append(("PV1", [(1, 1, 1, 1, "1"), (2, 1, 1, 1, "O")] + person(8)))
    orc_1 = ORC_1.get(life) or "NW"
    orc_5 = (ORC_5.get(life, "IP") if life else None) or "IP"
    timing = lambda f: [(f, 1, 4, 1, start_ts), (f, 1, 5, 1, end_ts), (f, 1, 6, 1, prio)]  # noqa: E731
    segments.append(("ORC", [(1, 1, 1, 1, orc_1), (2, 1, 1, 1, appointment_id),
                             (2, 1, 2, 1, placer_ns), (5, 1, 1, 1, orc_5)]
                     + timing(7) + person(12)))
    obr = [(1, 1, 1, 1, "1"), (2, 1, 1, 1, appointment_id), (2, 1, 2, 1, placer_ns),
           (4, 1, 1, 1, single_line(x["code"])), (4, 1, 2, 1, single_line(x["text"])),
           (4, 1, 3, 1, (text(cfg.get("examCodingSystem")) or "L") if x["has_code"] else None),
           (4, 1, 4, 1, x["loinc"]), (4, 1, 5, 1, x["loinc_name"]),
           (4, 1, 6, 1, "LN" if x["loinc_system"] else None),
           (7, 1, 1, 1, start_ts),
           (13, 1, 1, 1, hl7_max_length(single_line(trim(clinical)), 300))]
    obr += person(16)
    modality = trim(text(a.get("modality")))
    obr += [(24, 1, 1, 1, HL7_DIAGNOSTIC_SERVICE.get(modality.lower(), "RAD")
                          if modality else None)]
    obr += timing(27)
    obr += [(32, 1, 1, 1, single_line(rad["number"])), (32, 1, 1, 2, rad["family"]),
            (32, 1, 1, 3, rad["given"]), (32, 1, 1, 4, rad["middle"]),
            (32, 1, 1, 6, rad["prefix"]), (36, 1, 1, 1, start_ts)]
    segments.append(("OBR", obr))
    set_id = 0
    if not blank(clinical):
        set_id += 1
        segments.append(("NTE", [(1, 1, 1, 1, str(set_id)), (2, 1, 1, 1, "P"),
                                 (3, 1, 1, 1, clinical.strip()), (4, 1, 1, 1, "1R"),
                                 (4, 1, 2, 1, "Primary Reason"), (4, 1, 3, 1, "HL70364")]))
    for c in order_notes:
        set_id += 1
        segments.append(("NTE", nte(set_id, c)))
    return [(name, [v for v in values if v[4]]) for name, values in segments]


def service_request(order):
    """The ServiceRequest of service_request.yaml as a JSON-shaped dict."""
    a = order["appointment"]
    site = order.get("site") or {}
    cfg = order.get("config") or {}
    zone = ZoneInfo(site["timeZone"])
    x = exam(a)
    rad = radiologist(a)
    patient_id = trim(text(a.get("patientId")))
    patient_name = single_line(text(a.get("patientName")))
    patient_system = text(cfg.get("patientIdentifierSystem")) or "urn:qubs:patient"
    number_system = text(cfg.get("providerNumberSystem")) or "urn:qubs:provider-number"

    def drop(d):
        """Without empty values, as the engine leaves them out."""
        if isinstance(d, dict):
            d = {k: drop(v) for k, v in d.items()}
            return {k: v for k, v in d.items() if v not in (None, "", [], {})}
        if isinstance(d, list):
            d = [drop(v) for v in d]
            return [v for v in d if v not in (None, "", [], {})]
        return d

    contained = []
    patient = {"resourceType": "Patient", "id": "patient"}
    if not blank(a.get("patientId")):
        patient["identifier"] = [{"system": patient_system, "value": patient_id}]
    if patient_name is not None:
        patient["name"] = [{
            "text": name_part(patient_name, "text"),
            "family": name_part(patient_name, "family"),
            "given": [name_part(patient_name, "given"), name_part(patient_name, "middle")],
            "prefix": [name_part(patient_name, "prefix")],
            "suffix": [name_part(patient_name, "suffix")],
        }]
    gender = trim(first(a.get("gender"), a.get("patientSex")))
    if present(gender):
        patient["gender"] = FHIR_GENDER.get(lookup(SEX, gender, "U"), "unknown")
    dob = first(a.get("dateOfBirth"), a.get("patientDateOfBirth"))
    if dob:
        patient["birthDate"] = date.fromisoformat(dob.strip()[:10]).isoformat()
    patient = drop(patient)
    if len(patient) > 2:
        contained.append(patient)
    has_referrer = any(not blank(a.get(k)) for k in ("doctorName", "doctorFirstName", "doctorLastName"))
    doctor = Person(a.get("doctorFirstName"), a.get("doctorLastName"), a.get("doctorName"))
    referrer_text = single_line(trim(first(a.get("doctorName"),
                                           template(a.get("doctorFirstName"), a.get("doctorLastName")))))
    if has_referrer:
        referrer = drop({"resourceType": "Practitioner", "id": "referrer", "name": [{
            "text": referrer_text, "family": doctor.family,
            "given": [doctor.given, doctor.middle], "prefix": [doctor.prefix]}]})
        if len(referrer) > 2:
            contained.append(referrer)
    if rad["any"]:
        r = {"resourceType": "Practitioner", "id": "radiologist"}
        if present(rad["number"]):
            r["identifier"] = [{"system": number_system, "value": rad["number"]}]
        r["name"] = [{"text": rad["text"], "family": rad["family"],
                      "given": [rad["given"], rad["middle"]], "prefix": [rad["prefix"]]}]
        if present(rad["email"]):
            r["telecom"] = [{"system": "email", "value": rad["email"]}]
        r = drop(r)
        if len(r) > 2:
            contained.append(r)
    site_name = first(site.get("siteName"), a.get("scheduledSite"))
    if not blank(site.get("siteName")) or not blank(a.get("scheduledSite")):
        loc = drop({"resourceType": "Location", "id": "site",
                    "name": single_line(trim(site_name))})
        if len(loc) > 2:
            contained.append(loc)

    life = lifecycle(a)
    sr = {"resourceType": "ServiceRequest", "contained": contained,
          "status": SR_STATUS.get(life, "active") if life else "active",
          "intent": "order",
          "identifier": [{
              "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                   "code": "PLAC"}]},
              "system": text(cfg.get("placerIdentifierSystem")) or "urn:qubs:appointment",
              "value": trim(text(a.get("appointmentId"))),
          }],
          "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "363679005",
                                    "display": "Imaging"}]}]}
    codings = []
    if x["has_code"]:
        codings.append({"system": text(cfg.get("examCodeSystem")) or "urn:qubs:exam-code",
                        "code": x["code"], "display": x["description"]})
    codings.append({"system": "http://loinc.org" if x["loinc_system"] else None,
                    "code": x["loinc"], "display": x["loinc_name"]})
    sr["code"] = {"text": x["text"], "coding": codings}
    prio = trim(text(a.get("priority")))
    sr["priority"] = lookup(PRIORITY, prio, "routine") if present(prio) else None
    sr["subject"] = {"reference": "#patient",
                     "identifier": {"system": patient_system if not blank(a.get("patientId")) else None,
                                    "value": patient_id},
                     "display": name_part(single_line(text(a.get("patientName")).strip()), "text")}
    day, start, end = text(a.get("appointmentDate")), text(a.get("startTime")), text(a.get("endTime"))
    if not blank(start):
        sr["occurrencePeriod"] = {
            "start": iso_ts(site_time(day, start, zone)),
            "end": iso_ts(site_end(day, start, end, zone)) if not blank(end) else None}
    else:
        sr["occurrenceDateTime"] = date.fromisoformat(day.strip()[:10]).isoformat()
    sr["requester"] = {"reference": "#referrer" if has_referrer else None, "display": referrer_text}
    sr["performer"] = [{"reference": "#radiologist" if rad["any"] else None, "display": rad["text"],
                        "identifier": {"system": number_system if present(rad["number"]) else None,
                                       "value": rad["number"]}}]
    has_site = not blank(site.get("siteName")) or not blank(a.get("scheduledSite"))
    sr["locationReference"] = [{"reference": "#site" if has_site else None,
                                "display": single_line(trim(site_name))}]
    sr["reasonCode"] = [{"text": trim(text(a.get("clinicalInfo")))}]
    deadline = first(a.get("reportingDeadlineUtc"), a.get("reportingDeadline"))
    if deadline:
        sr["extension"] = [{
            "url": text(cfg.get("reportingDeadlineExtension"))
            or "urn:qubs:fhir:extension:reporting-deadline",
            "valueDateTime": instant(deadline)}]
    info = []
    for att in order.get("attachments") or []:
        if blank(att.get("guid")) and blank(att.get("fileName")):
            continue
        if blank(att.get("category")):
            display = single_line(text(att.get("fileName")))
        else:
            # Template "{a.category}: {a.fileName}": a missing placeholder is empty text.
            display = single_line((text(att.get("category")) + ": "
                                   + (text(att.get("fileName")) or "")).strip())
        info.append({"type": "DocumentReference",
                     "identifier": {
                         "system": (text(cfg.get("attachmentIdentifierSystem")) or "urn:qubs:attachment")
                         if not blank(att.get("guid")) else None,
                         "value": trim(text(att.get("guid")))},
                     "display": display})
    sr["supportingInfo"] = info
    patient_notes, order_notes = comment_groups(order)
    sr["note"] = [{"text": note_text(c), "time": instant(c["commentDateTime"])
                   if present(text(c.get("commentDateTime"))) else None}
                  for c in patient_notes + order_notes]
    return drop(sr)


# --- ORU^R01 -> report submission (oru_to_report.yaml) -----------------------------------

REPORT_TYPES = ("TX", "FT", "ST", "CE", "CWE")
CODED = ("CE", "CWE", "CNE", "CF")


def report_submission(obr, obxs, orc_2_1, unescape, domain, zone):
    """One ORDER_OBSERVATION group as a report submission. `obr` is a function field ->
    raw text; `obxs` a list of functions the same for each OBX; `unescape` undoes escapes."""
    def comp(raw, n, sep="^"):
        parts = (raw or "").split("~")[0].split(sep)
        return parts[n - 1] if len(parts) >= n else ""

    appointment = next((v for v in (unescape(orc_2_1), unescape(comp(obr(2), 1)),
                                    unescape(comp(obr(3), 1)), unescape(obr(18))) if v), "").strip()
    rows = [o for o in obxs if comp(o(2), 1).strip() in REPORT_TYPES
            and comp(o(11), 1).strip() not in ("W", "D")]
    status = unescape(obr(25))
    if status:
        statuses = [RESULT_STATUS[status.strip().lower()]]
    else:
        statuses = [RESULT_STATUS[v] for v in (unescape(o(11)).strip().lower() for o in rows) if v]
    report_status = "preliminary" if "preliminary" in statuses else "final"
    lines = []
    for o in rows:
        raw = o(5)
        if comp(o(2), 1).strip() in CODED:
            # A coded value reads as its text, else alternate text, original text, code.
            texts = []
            for rep in raw.split("~"):
                parts = rep.split("^")
                t = next((unescape(parts[k - 1].strip()) for k in (2, 5, 9, 1)
                          if len(parts) >= k and unescape(parts[k - 1].strip())), None)
                if t:
                    texts.append(t)
            lines.append("\n".join(texts))
        else:
            lines.append("\n".join(unescape(r) for r in raw.split("~")))
    text_ = "\n".join(lines).replace("\r\n", "\n").replace("\r", "\n")

    def hl7_name(raw):
        first_comp = raw.split("^")[0]
        if "&" in first_comp:
            parts = [p.strip() for p in first_comp.split("&")]
        else:
            parts = [c.split("&")[0].strip() for c in raw.split("^")]
        parts = parts[1:] + [""] * 5
        return " ".join(p for p in (parts[4], parts[1], parts[2], parts[0], parts[3]) if p).strip()
    # The radiologist: OBR-32, else the first text row's OBX-16; the id from the same place.
    obr_32 = unescape(obr(32).split("~")[0])
    if obr_32:
        name = hl7_name(obr_32)
        number = unescape(comp(obr(32), 1).split("&")[0]).strip()
    else:
        names = [unescape(o(16).split("~")[0]) for o in rows]
        name = next((hl7_name(n) for n in names if n), "")
        number = next((v for v in (unescape(comp(o(16), 1)) for o in rows) if v), "").strip()
    reported = unescape(obr(22)) or (unescape(obxs[0](14)) if obxs else "")
    out = {"domain": domain, "appointmentId": appointment, "reportText": text_,
           "reportStatus": report_status, "reportFormat": "text/plain"}
    if name:
        out["interpretingClinicianName"] = name
    if number:
        out["interpretingClinicianProviderNumber"] = number
    if reported:
        out["reportedAtUtc"] = hl7_instant(reported, zone)
    return out


def hl7_instant(ts, zone):
    ts = ts.strip().split("^")[0]
    m = re.fullmatch(r"(\d{8,14})(?:\.\d+)?([+-]\d{4})?", ts)
    digits, off = m.group(1), m.group(2)
    digits = digits + "0" * (14 - len(digits))
    dt = datetime.strptime(digits, "%Y%m%d%H%M%S")
    if off:
        sign = -1 if off[0] == "-" else 1
        dt = dt.replace(tzinfo=timezone(sign * timedelta(hours=int(off[1:3]), minutes=int(off[3:5]))))
    else:
        dt = dt.replace(tzinfo=zone)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
