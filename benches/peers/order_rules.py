"""The order mapping rules of mappings/orm_o01.yaml and mappings/service_request.yaml,
written out in Python for the Python peers: what an integration developer using one of
those libraries would write by hand. Only the message or resource building differs per
library; these values are computed inside the timed loop, as the mapping engine computes
its values inside qubs-bridge's.
"""

import re
import uuid
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

TITLES = {"dr", "dr.", "prof", "prof.", "mr", "mr.", "mrs", "mrs.", "ms", "ms.", "miss",
          "a/prof", "assoc", "sir", "dame"}
PRIORITY = {"routine": "routine", "normal": "routine", "elective": "routine",
            "urgent": "urgent", "urgent - same day": "asap", "same day": "asap",
            "asap": "asap", "stat": "stat", "emergency": "stat"}
HL7_PRIORITY = {"routine": "R", "urgent": "A", "asap": "A", "stat": "S"}
PROCEDURE = {"ct": "24627-2", "mr": "24590-2", "mri": "24590-2", "us": "24532-1",
             "xr": "36643-5", "dx": "36643-5", "cr": "36643-5", "nm": "49118-3",
             "mg": "24606-6", "pt": "44136-0"}
SEX = {"male": "M", "m": "M", "female": "F", "f": "F", "other": "O", "o": "O",
       "unknown": "U", "u": "U"}
ALERTS = ("AA", "PA")
_WORDS = re.compile(r"[\s^]+")


def split_name(s):
    """(prefixes, given names, family) of a free-text name, as the `name` filter reads it:
    `Family, Given` or `Family^Given`, else `[Title] Given [Middle...] Family`."""
    cut = s.find(",")
    if cut < 0:
        cut = s.find("^")
    family = None
    rest = s
    if cut >= 0:
        family = s[:cut].strip() or None
        rest = s[cut + 1:]
    words = [w for w in _WORDS.split(rest) if w]
    prefix = []
    while words and words[0].lower() in TITLES:
        prefix.append(words.pop(0))
    if family is None and words:
        family = words.pop()
    return prefix, words, family or ""


def site_time(day, clock, zone):
    return datetime.fromisoformat(day + "T" + clock).replace(tzinfo=zone)


def hl7_ts(dt):
    return dt.strftime("%Y%m%d%H%M%S%z")


def instant(s):
    return datetime.fromisoformat(s).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def orm_values(order):
    """Every value of the ORM^O01, keyed by what it is; None or "" = not set."""
    a = order["appointment"]
    site = order.get("site") or {}
    cfg = order.get("config") or {}
    zone = ZoneInfo(site["timeZone"])
    domain = order.get("domain")
    p_prefix, p_given, p_family = split_name(a["patientName"])
    d_prefix, d_given, d_family = split_name(a["doctorName"])
    rad = a.get("assignedRadiologist") or {}
    r_prefix, r_given, r_family = split_name(rad.get("fullName", ""))
    start = site_time(a["appointmentDate"], a["startTime"], zone)
    end = a.get("endTime")
    prio = PRIORITY.get(a["priority"].strip().lower(), "routine")
    modality = a["modality"].strip()
    study = (a.get("studyDescription") or a["modality"]).strip()
    notes = []
    for c in order.get("comments") or []:
        text = c["commentText"].strip()
        if c["commentType"] in ALERTS:
            text = "ALERT: " + text
        notes.append(text)
    procedure = PROCEDURE.get(modality.lower())
    control = uuid.uuid4().hex[:20].upper()
    return {
        "sending_app": cfg.get("sendingApplication") or "QUBS",
        "facility": site.get("siteName") or domain,
        "receiving_app": cfg.get("receivingApplication"),
        "receiving_facility": cfg.get("receivingFacility"),
        "now": hl7_ts(datetime.now(zone)),
        "control_id": control,
        "processing_id": cfg.get("processingId") or "P",
        "patient_id": a["patientId"].strip(),
        "authority": cfg.get("patientAssigningAuthority") or domain,
        "family": p_family,
        "given": p_given[0] if p_given else "",
        "middle": " ".join(p_given[1:]),
        "prefix": " ".join(p_prefix),
        "dob": date.fromisoformat(a["dateOfBirth"]).strftime("%Y%m%d"),
        "sex": SEX.get(a["gender"].strip().lower(), "U"),
        "doctor_family": d_family,
        "doctor_given": d_given[0] if d_given else "",
        "appointment_id": a["appointmentId"].strip(),
        "placer_ns": cfg.get("placerNamespace") or "QUBS",
        "start": hl7_ts(start),
        "end": hl7_ts(site_time(a["appointmentDate"], end, zone)) if end else None,
        "hl7_priority": HL7_PRIORITY.get(prio, "R"),
        "procedure": procedure,
        "study": study,
        "clinical": a["clinicalInfo"].strip(),
        "modality": modality.upper(),
        "provider_number": (rad.get("providerNumber") or "").strip(),
        "rad_family": r_family,
        "rad_given": r_given[0] if r_given else "",
        "notes": notes,
    }


def service_request(order):
    """The ServiceRequest of service_request.yaml as a JSON-shaped dict."""
    a = order["appointment"]
    site = order.get("site") or {}
    cfg = order.get("config") or {}
    zone = ZoneInfo(site["timeZone"])
    prefix, given, family = split_name(a["patientName"].strip())
    rad = a.get("assignedRadiologist") or {}
    modality = a["modality"].strip()
    sr = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "identifier": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                 "code": "PLAC"}]},
            "system": cfg.get("placerIdentifierSystem") or "urn:qubs:appointment",
            "value": a["appointmentId"].strip(),
        }],
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "363679005",
                                  "display": "Imaging"}]}],
        "code": {"text": (a.get("studyDescription") or a["modality"]).strip()},
        "priority": PRIORITY.get(a["priority"].strip().lower(), "routine"),
        "subject": {
            "identifier": {"system": cfg.get("patientIdentifierSystem") or "urn:qubs:patient",
                           "value": a["patientId"].strip()},
            "display": " ".join(prefix + given + ([family] if family else [])),
        },
        "occurrenceDateTime": site_time(a["appointmentDate"], a["startTime"], zone).isoformat(),
        "requester": {"display": a["doctorName"].strip()},
        "performer": [{"display": rad["fullName"].strip()}],
        "reasonCode": [{"text": a["clinicalInfo"].strip()}],
    }
    procedure = PROCEDURE.get(modality.lower())
    if procedure:
        sr["code"]["coding"] = [{"system": "http://loinc.org", "code": procedure}]
    number = (rad.get("providerNumber") or "").strip()
    if number:
        sr["performer"][0]["identifier"] = {
            "system": cfg.get("providerNumberSystem") or "urn:qubs:provider-number",
            "value": number}
    comments = order.get("comments") or []
    notes = [{"text": c["commentText"].strip(), "time": instant(c["commentDateTime"])}
             for c in comments if c["commentType"] in ("AC", "PC")]
    notes += [{"text": "ALERT: " + c["commentText"].strip(),
               "time": instant(c["commentDateTime"])}
              for c in comments if c["commentType"] in ALERTS]
    if notes:
        sr["note"] = notes
    return sr
