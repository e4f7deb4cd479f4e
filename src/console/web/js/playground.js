// The mapping playground: pick a mapping and an input (a golden case, a sample file, an
// order from QUBS, a recent result from the outbox, or pasted text), edit the mapping's
// YAML, and see the output, warnings and unread input fields as you type. Select an output
// field to see its trace, an input field to see the output fields it feeds. Run every
// golden case against the draft and accept a changed output as its case's expectation;
// promote the draft, then re-send the orders whose feed message it changed. The draft
// itself lives in the page until it is promoted.
import { api } from "./api.js";
import { ago, el, flash, show } from "./dom.js";
import { covers, er7View, fieldOf, jsonView, shapeOf, showEntries } from "./trace.js";
import { editor } from "./yaml.js";

const DEBOUNCE_MS = 400;
// Inputs and outputs larger than this are shown as plain text, without selectable fields.
const MAX_FIELD_VIEW = 300_000;

export async function render(main, session) {
  const [{ mappings, version }, { cases }] = await Promise.all([api("GET", "mappings"), api("GET", "cases")]);
  if (!mappings.length) {
    show(main, el("h1", {}, "Mapping playground"), el("p", { class: "error" }, "No mapping set is loaded."));
    return null;
  }
  const pick = el("select", { id: "pg-mapping" }, mappings.map((m) => el("option", { value: m.name }, `${m.name} (${m.input})`)));
  const source = el("select", { id: "pg-case" });
  const zone = el("input", { id: "pg-zone", size: 22, placeholder: "e.g. Australia/Sydney" });
  const yaml = el("textarea", { id: "pg-yaml", spellcheck: "false", wrap: "off", "aria-label": "Mapping YAML (draft)" });
  const yamlEditor = editor(yaml);
  const setYaml = (text) => {
    yaml.value = text;
    yamlEditor.paint();
  };
  const input = el("textarea", { id: "pg-input", spellcheck: "false", "aria-label": "Input" });
  const diagnostics = el("div", { id: "pg-diagnostics", "aria-live": "polite" });
  // The output and the input as selectable fields, and the selected field's trace.
  const output = el("div", { id: "pg-output-box" });
  const inputView = el("div", { id: "pg-input-box" });
  const trace = el("div", { id: "pg-trace", class: "trace", "aria-live": "polite" });
  const notes = el("div", { id: "pg-notes" });
  const file = el("input", { id: "pg-file", type: "file", accept: ".hl7,.er7,.txt,.json" });
  let recent = [];
  let view = null;
  const golden = el("div", { id: "pg-golden" });
  const draftState = el("span", { id: "pg-draft-state", class: "help" });
  const note = el("input", { id: "pg-note", size: 30, placeholder: "why (kept in the history)" });
  const accept = el("input", { id: "pg-accept", type: "checkbox" });
  const promotion = el("div", { id: "pg-promotion" });
  const impact = el("div", { id: "pg-impact" });
  const orderDomain = el("select", { id: "pg-order-domain" }, session.domains.map((d) => el("option", { value: d }, d)));
  const orderId = el("input", { id: "pg-order-id", size: 14, placeholder: "appointment id" });
  let timer = null;
  let seq = 0;

  const mapping = () => mappings.find((m) => m.name === pick.value);
  const draft = () => {
    const m = mapping();
    return yaml.value === m.text ? null : { file: m.file, text: yaml.value };
  };

  // Results in the outbox carry an ORU (`hl7`) or a DiagnosticReport (`fhir`).
  const OUTBOX_SOURCE = { oru: "hl7", diagnostic_report: "fhir" };

  async function loadRecent() {
    recent = [];
    const wanted = OUTBOX_SOURCE[mapping().input];
    if (!wanted) return;
    try {
      const { entries } = await api("GET", "outbox?limit=50");
      recent = entries.filter((e) => e.source === wanted).slice(0, 20);
    } catch (e) {
      flash(`The outbox could not be listed: ${e.message}`, true);
    }
  }

  async function fillCases() {
    const m = mapping();
    const usable = cases.filter((c) => c.mappings.includes(m.name) || c.kind === m.input);
    await loadRecent();
    show(
      source,
      el("option", { value: "" }, "pasted input"),
      el("optgroup", { label: "Golden cases" }, usable.map((c) => el("option", { value: c.name }, `golden case ${c.name}`))),
      recent.length
        ? el(
          "optgroup",
          { label: "Recent results in the outbox" },
          recent.map((e) => el("option", { value: `outbox:${e.id}` }, `result ${e.id}: ${e.sourceId} for ${e.appointmentId} (${e.state}, ${ago(e.receivedAt)})`)),
        )
        : "",
    );
    if (usable.length) {
      source.value = usable[0].name;
      await useCase();
    }
  }

  async function useCase() {
    if (source.value.startsWith("outbox:")) {
      const r = await api("GET", `outbox/${source.value.slice(7)}/input`);
      input.value = r.input;
      flash(`Result ${r.id} (${r.sourceId}, appointment ${r.appointmentId}) as the bridge received it.`);
      return;
    }
    const c = cases.find((x) => x.name === source.value);
    if (!c) return;
    input.value = c.input;
    zone.value = c.siteTimeZone || "";
  }

  function loadFile() {
    const f = file.files && file.files[0];
    if (!f) return;
    f.text().then((text) => {
      source.value = "";
      input.value = text;
      flash(`Input from the file ${f.name}.`);
      run();
    }, (e) => flash(`The file could not be read: ${e.message}`, true));
  }

  function jumpTo(line) {
    const lines = yaml.value.split("\n");
    const at = lines.slice(0, Math.max(0, line - 1)).reduce((n, l) => n + l.length + 1, 0);
    yaml.focus();
    yaml.setSelectionRange(at, at + (lines[line - 1] || "").length);
  }

  // The output is busy (aria-busy) from a change of mapping, case or draft until the run it
  // leads to is on screen: until then, what it shows (and a field selected in it) is about to
  // be replaced.
  let changing = 0;
  const markBusy = () => output.setAttribute("aria-busy", "true");
  async function change(prepare) {
    changing++;
    markBusy();
    try {
      await prepare();
    } catch (e) {
      flash(e.message, true);
    } finally {
      changing--;
    }
    await run();
  }

  async function run() {
    const mine = ++seq;
    markBusy();
    draftState.textContent = draft() ? "draft (not saved)" : `live set ${version}`;
    try {
      const r = await api("POST", "preview", {
        mapping: pick.value,
        input: input.value,
        siteTimeZone: zone.value.trim(),
        draft: draft() || undefined,
      });
      if (mine !== seq) return;
      show(diagnostics);
      showRun(r, input.value);
      show(
        notes,
        r.errors.length ? el("h2", {}, "Errors") : "",
        el("ul", { id: "pg-errors", class: "error" }, r.errors.map((e) => el("li", {}, `${e.code}: ${e.message}`))),
        el("h2", {}, `Warnings (${r.warnings.length})`),
        el("ul", { id: "pg-warnings" }, r.warnings.map((w) => el("li", {}, `${w.code}${w.rule ? ` [${w.rule}]` : ""}: ${w.message}`))),
        el("h2", {}, `Input fields no rule reads (${r.unreadFields.length})`),
        el("ul", { id: "pg-unread" }, r.unreadFields.map((f) => el("li", {}, el("code", {}, f)))),
        fieldsPanel(r.fields, r.unreadFields),
      );
    } catch (e) {
      if (mine !== seq) return;
      if (e.body && e.body.diagnostics) {
        show(output, el("pre", { id: "pg-output" }));
        show(trace);
        show(
          diagnostics,
          el("p", { class: "error" }, e.message),
          el(
            "ul",
            { class: "error" },
            e.body.diagnostics.map((d) =>
              el(
                "li",
                {},
                el(
                  "a",
                  { href: "#playground", class: "diag", onclick: (ev) => { ev.preventDefault(); jumpTo(d.line); } },
                  `${d.file}:${d.line}:${d.column}`,
                ),
                `: ${d.message}${d.hint ? ` (hint: ${d.hint})` : ""}`,
              ),
            ),
          ),
        );
      } else {
        flash(e.message, true);
      }
    } finally {
      if (mine === seq && changing === 0 && timer === null) output.removeAttribute("aria-busy");
    }
  }

  // One run on screen: the output and the input as selectable fields, unread input fields
  // marked, and the trace panel ready for a selection.
  function showRun(r, inputText) {
    const entries = (r.trace && r.trace.fields) || [];
    const reads = r.ruleReads || {};
    const kind = mapping().input;
    // Input fields are named as the rules read them: ER7 positions, JSON shape keys (a
    // DiagnosticReport's under `resource.`).
    const prefix = kind === "diagnostic_report" ? "resource." : "";
    const unread = new Set(r.unreadFields);
    const outputView = r.errors.length ? null : fieldsOf(r.output, "pg-output", "Output fields", (s) => selectOutput(s), "");
    const inView = fieldsOf(inputText, "pg-input-view", "Input fields", (s) => selectInput(nameOf(s)), prefix);
    for (const s of inView ? inView.spans : []) {
      const name = nameOf(s);
      if (unread.has(name)) {
        s.classList.add("unread");
        s.title = `${name}: no rule reads this field`;
      } else if ([...unread].some((u) => u.startsWith(`${name}.`))) {
        s.classList.add("unread-part");
        s.title = `${name}: some of its components no rule reads`;
      }
    }
    // Which output fields each trace entry wrote.
    const outSpans = outputView ? outputView.spans : [];
    const reportIndex = (s) => Number((/^\[(\d+)\]/.exec(s.dataset.path || "") || [])[1]);
    const spansOf = (f) => {
      if (f.target.match(/^[A-Z0-9]{3}-\d/)) {
        const field = fieldOf(f.target);
        const line = Number((/#(\d+)$/.exec(f.segment || "") || [])[1]);
        const same = outSpans.filter((s) => s.dataset.field === field);
        const here = same.filter((s) => Number(s.dataset.line) === line);
        return here.length ? here : same;
      }
      const under = (p) => p && (p === f.target || p.startsWith(`${f.target}.`) || p.startsWith(`${f.target}[`));
      const direct = outSpans.filter((s) => under(s.dataset.path) || under(s.dataset.alias));
      if (direct.length) return direct;
      // Report submissions: `[k].reportText`, one per ORDER_OBSERVATION group as a rule.
      const named = outSpans.filter((s) => under((s.dataset.path || "").replace(/^\[\d+\]\.?/, "")));
      const mine = named.filter((s) => reportIndex(s) === (f.group || 1) - 1);
      return mine.length ? mine : named;
    };
    const written = entries.map((f) => ({ f, spans: spansOf(f) }));
    view = { entries, reads, written, outputView, inView, prefix, fields: r.fields };
    show(output, outputView ? outputView.pre : el("pre", { id: "pg-output" }, r.errors.length ? "" : r.output.replaceAll("\r", "\n")));
    show(inputView, inView ? [el("h3", {}, "Input fields ", el("span", { class: "help" }, "select one to see the output fields it feeds; underlined: no rule reads it")), inView.pre] : "");
    show(
      trace,
      el("p", { class: "help" }, entries.length
        ? "Select an output field (click it, or focus the output and use the arrow keys and Enter) to see how its value came about."
        : "No trace for this run."),
    );
  }

  // A view of `text`: ER7 or JSON fields, or nothing for other text (or text so large that
  // a span per field would slow every keystroke: it is then shown as text).
  function fieldsOf(text, id, label, onSelect, prefix) {
    const t = text.replace(/^\uFEFF/, "").trim();
    if (t.length > MAX_FIELD_VIEW) return null;
    if (t.startsWith("MSH")) return er7View(id, label, t, onSelect);
    try {
      return jsonView(id, label, JSON.parse(t), onSelect, { prefix });
    } catch {
      return null;
    }
  }

  // An input field's name as the rules read it.
  function nameOf(span) {
    return span.dataset.field || shapeOf(span.dataset.path || "");
  }

  function clearMarks() {
    for (const s of document.querySelectorAll(".fields .selected, .fields .fed, .fields .source")) {
      s.classList.remove("selected", "fed", "source");
    }
  }

  const actions = {
    jumpTo: (line) => jumpTo(line),
    selectInput: (field) => {
      const span = view && view.inView && view.inView.spans.find((s) => covers(field, nameOf(s)));
      if (span) {
        span.scrollIntoView({ block: "nearest" });
        span.focus();
      }
      selectInput(field);
    },
  };

  function selectOutput(span) {
    if (!view) return;
    clearMarks();
    span.classList.add("selected");
    const found = view.written.filter((w) => w.spans.includes(span)).map((w) => w.f);
    const name = span.dataset.field
      ? `${span.dataset.field} (line ${span.dataset.line}, ${span.dataset.field.slice(0, 3)} segment)`
      : span.dataset.alias || span.dataset.path;
    // The input fields its rules read, marked in the input view.
    const read = found.flatMap((f) => (view.reads[f.rule] || []).map((r) => r.field));
    for (const s of view.inView ? view.inView.spans : []) {
      if (read.some((r) => covers(r, nameOf(s)))) s.classList.add("source");
    }
    showEntries(
      trace,
      `Trace of ${name}`,
      found,
      view.reads,
      actions,
      "No rule wrote this field in this run: the bridge writes it itself (the message header's fixed fields, MSH-7 and MSH-10), or it is part of a value written whole.",
    );
  }

  function selectInput(field) {
    if (!view) return;
    clearMarks();
    for (const s of view.inView ? view.inView.spans : []) {
      if (nameOf(s) === field) s.classList.add("selected");
    }
    const feeding = view.written.filter(({ f }) => (view.reads[f.rule] || []).some((r) => covers(r.field, field)));
    for (const w of feeding) {
      if (w.f.outcome === "written") w.spans.forEach((s) => s.classList.add("fed"));
    }
    const fate = (view.fields || []).find((x) => x.field === field);
    const open = (w) => {
      if (w.spans.length) {
        w.spans[0].scrollIntoView({ block: "nearest" });
        w.spans[0].focus();
        selectOutput(w.spans[0]);
      }
    };
    show(
      trace,
      el("h3", { class: "trace-heading" }, `What ${field} feeds`),
      feeding.length
        ? el(
          "ul",
          { id: "pg-feeds" },
          feeding.map((w) => {
            const use = (view.reads[w.f.rule] || []).find((r) => covers(r.field, field));
            return el(
              "li",
              {},
              el("button", { type: "button", class: "link", disabled: !w.spans.length, onclick: () => open(w) }, w.f.target),
              w.f.outcome === "written" ? ` = ${JSON.stringify(w.f.value ?? "")}` : ` (${w.f.outcome})`,
              use && use.use === "decides" ? " — decides whether or which value is written" : "",
              el("span", { class: "help" }, ` ${w.f.rule}`),
            );
          }),
        )
        : el("p", { class: "help" }, view.entries.length ? `No rule that ran in this run reads ${field}.` : "No trace for this run."),
      fate && fate.fate === "not_sent" ? el("p", { class: "help" }, `The mapping says it is not sent: ${fate.reason}`) : "",
    );
  }

  // Where each input field goes, from the mapping's rules; the filter finds a field either
  // way (type `ORC-7` for what feeds it, `appointment.priority` for where it goes).
  function fieldsPanel(fields, unread) {
    const filter = el("input", { id: "pg-fields-filter", type: "search", size: 28, placeholder: "input or output field" });
    const body = el("tbody");
    const describe = (f) =>
      f.fate === "sent" ? `written to ${f.targets.join(", ")}`
        : f.fate === "used" ? `decides ${f.targets.join(", ")}`
          : f.fate === "not_sent" ? `not sent: ${f.reason}`
            : "no rule reads it and not_sent does not list it";
    const fill = () => {
      const q = filter.value.trim().toLowerCase();
      show(
        body,
        fields
          .filter((f) => !q || f.field.toLowerCase().includes(q) || (f.targets || []).some((t) => t.toLowerCase().includes(q)))
          .map((f) => el(
            "tr",
            { class: f.fate === "unaccounted" || unread.includes(f.field) ? "warn" : "" },
            el("td", {}, el("code", {}, f.field)),
            el("td", {}, describe(f)),
          )),
      );
    };
    filter.addEventListener("input", fill);
    fill();
    return [
      el("h2", {}, `Where each input field goes (${fields.length}, from the rules)`),
      el("div", { class: "toolbar" }, el("label", {}, "Find", filter)),
      el("table", { id: "pg-fields" }, el("thead", {}, el("tr", {}, el("th", {}, "Input field"), el("th", {}, "What the rules do with it"))), body),
    ];
  }

  function soon() {
    clearTimeout(timer);
    markBusy();
    timer = setTimeout(() => {
      timer = null;
      run();
    }, DEBOUNCE_MS);
  }

  async function runGolden() {
    show(golden, el("p", { class: "help" }, "Running every golden case…"));
    try {
      const r = await api("POST", "golden", { draft: draft() || undefined });
      const failed = r.results.filter((x) => !x.passed);
      show(
        golden,
        el("p", { id: "pg-golden-summary", class: r.passed ? "ok" : "bad" },
          `${r.total - r.failed} of ${r.total} case outputs match${draft() ? " with the draft" : ""}; ${r.failed} differ.`),
        failed.map((x) =>
          el(
            "details",
            { class: "golden-case", "data-case": x.name, open: failed.length <= 3 },
            el("summary", {}, x.name),
            el("pre", {}, (x.diff || "").split("\n").map((l) =>
              el("span", { class: l.startsWith("-") ? "diff-del" : l.startsWith("+") ? "diff-add" : "" }, `${l}\n`))),
            // A differing output (or one without expectation) can become the expectation.
            x.status === "fail" || x.status === "new"
              ? el(
                "p",
                { class: "toolbar" },
                el("button", { type: "button", class: "golden-accept", onclick: () => acceptCase(x.name) }, "Accept as the new expectation"),
                el("span", { class: "help" }, draft() ? "writes the draft's output as this case's expected file" : "writes the live set's output as this case's expected file"),
              )
              : "",
          ),
        ),
      );
    } catch (e) {
      if (e.body && e.body.diagnostics) {
        show(golden, el("p", { class: "error" }, `${e.message}: fix the draft first.`));
      } else {
        flash(e.message, true);
      }
    }
  }

  async function acceptCase(name) {
    try {
      const r = await api("POST", "golden/accept", { name, draft: draft() || undefined });
      await runGolden();
      flash(`${name}: ${r.new ? "first expectation written" : `new expectation written (${r.fields.join(", ") || "changed lines"})`} from ${r.against}.`);
    } catch (e) {
      flash(e.message, true);
    }
  }

  async function fetchOrder(event) {
    event.preventDefault();
    const params = new URLSearchParams({ domain: orderDomain.value, id: orderId.value.trim() });
    try {
      const r = await api("GET", `order?${params}`);
      source.value = "";
      input.value = r.input;
      flash(`Order ${orderId.value.trim()} as QUBS has it now${r.listed ? "" : " (not in the latest pending list)"}.`);
      await run();
    } catch (e) {
      flash(e.message, true);
    }
  }

  async function runImpact() {
    const d = draft();
    if (!d) {
      show(impact, el("p", { class: "help" }, "Edit the mapping first: the impact preview compares the draft with the live file."));
      return;
    }
    show(impact, el("p", { class: "help" }, "Replaying the tracked orders…"));
    try {
      const r = await api("POST", "impact", { mapping: pick.value, draft: d });
      show(
        impact,
        el("p", { id: "pg-impact-summary" },
          `${r.changed} of ${r.examined} tracked orders change, ${r.unchanged} do not${r.failed.length ? `, ${r.failed.length} fail to map` : ""}.`),
        r.kinds.map((k) =>
          el(
            "details",
            { class: "impact-kind", open: r.kinds.length <= 3 },
            el("summary", {}, `${k.count} order(s): ${k.fields.join(", ")}`),
            el("p", { class: "help" }, `e.g. ${k.appointments.slice(0, 5).join(", ")}`),
            el("pre", {}, k.example.map((c) => [
              el("span", { class: "diff-del" }, `- ${c.field} ${c.before ?? "(absent)"}\n`),
              el("span", { class: "diff-add" }, `+ ${c.field} ${c.after ?? "(absent)"}\n`),
            ])),
          ),
        ),
      );
    } catch (e) {
      show(impact, el("p", { class: "error" }, e.message));
    }
  }

  // After a promotion: the orders whose feed message the new set changes can go out again
  // now (operators), rather than at the feed's next poll or never (`on_mapping_change`).
  async function offerResend() {
    const panel = el("div", { id: "pg-resend-panel" });
    promotion.append(panel);
    let feed;
    try {
      feed = (await api("GET", "overview")).feed;
    } catch (e) {
      return;
    }
    if (!feed.enabled) return;
    if (!session.roles.includes("operator")) {
      show(panel, el("p", { class: "help" }, "An operator can re-send the orders this change alters to the feed's consumers (Mapping playground, after a promotion)."));
      return;
    }
    const result = el("div", { id: "pg-resend-result", "aria-live": "polite" });
    const go = async (dryRun) => {
      show(result, el("p", { class: "help" }, dryRun ? "Comparing every tracked order…" : "Re-sending…"));
      try {
        const r = await api("POST", "feed/resend", { dryRun });
        const auto = r.onMappingChange === "resend_changed"
          ? " (the feed would also do this by itself at its next poll: feed.on_mapping_change = resend_changed)"
          : " (feed.on_mapping_change = ignore: nothing goes out unless sent here)";
        show(
          result,
          el("p", { id: "pg-resend-summary" }, dryRun
            ? `${r.changed} of ${r.tracked} tracked order(s) would be re-sent${auto}.`
            : `Re-sent ${r.resent} changed order(s) of ${r.tracked} tracked, as XO messages.`),
          r.domains.map((d) => el(
            "div",
            {},
            d.error
              ? el("p", { class: "error" }, `${d.domain}: ${d.error}`)
              : el("p", { class: "help" }, `${d.domain}: ${d.changed} changed, ${d.unchanged} unchanged${d.unknown ? `, ${d.unknown} without a message to compare` : ""}${d.unmappable ? `, ${d.unmappable} fail to map` : ""}${dryRun ? "" : `; ${d.resent} re-sent`}.`),
            d.example
              ? el("pre", {}, el("span", { class: "help" }, `e.g. ${d.example.appointmentId}\n`), d.example.changes.map((c) => [
                el("span", { class: "diff-del" }, `- ${c.field} ${c.before ?? "(absent)"}\n`),
                el("span", { class: "diff-add" }, `+ ${c.field} ${c.after ?? "(absent)"}\n`),
              ]))
              : "",
          )),
        );
      } catch (e) {
        show(result, el("p", { class: "error" }, e.message));
      }
    };
    show(
      panel,
      el("h3", {}, "Re-send changed orders to feed consumers"),
      el("p", { class: "help" }, "Each tracked order is mapped again with the live set and compared with the last message its consumers got (MSH-7 and MSH-10 aside); those that differ go out again as XO."),
      el(
        "div",
        { class: "toolbar" },
        el("button", { type: "button", id: "pg-resend-check", onclick: () => go(true) }, "Check which orders changed"),
        el("button", { type: "button", id: "pg-resend", class: "primary", onclick: () => go(false) }, "Re-send changed orders"),
      ),
      result,
    );
  }

  async function promote() {
    const d = draft();
    if (!d) {
      flash("The draft is the live file: nothing to promote.", true);
      return;
    }
    show(promotion, el("p", { class: "help" }, "Checking the golden cases…"));
    try {
      const r = await api("POST", "promote", { draft: d, note: note.value, acceptGoldenChanges: accept.checked });
      // The promoted text is the live file now.
      mapping().text = d.text;
      show(promotion, el("p", { id: "pg-promoted", class: "ok" },
        `Promoted ${r.file} as version ${r.id}: mapping set ${r.setAfter} (${r.golden}).`));
      await offerResend();
      await run();
    } catch (e) {
      if (e.status === 409 && e.body && e.body.results) {
        show(promotion, el("p", { class: "error" }, e.message));
        await runGolden();
      } else if (e.body && e.body.diagnostics) {
        show(promotion, el("p", { class: "error" }, `${e.message}: fix the draft first.`));
      } else {
        show(promotion);
        flash(e.message, true);
      }
    }
  }

  pick.addEventListener("change", () =>
    change(async () => {
      setYaml(mapping().text);
      await fillCases();
    }),
  );
  source.addEventListener("change", () => change(useCase));
  file.addEventListener("change", loadFile);
  for (const t of [yaml, input, zone]) t.addEventListener("input", soon);

  show(
    main,
    el("h1", {}, "Mapping playground"),
    el(
      "form",
      { class: "toolbar", id: "pg-order-form", onsubmit: fetchOrder },
      el("label", {}, "Domain", orderDomain),
      el("label", {}, "Order from QUBS", orderId),
      el("button", { type: "submit", id: "pg-order-fetch" }, "Use as input"),
    ),
    el(
      "div",
      { class: "toolbar" },
      el("label", {}, "Mapping", pick),
      el("label", {}, "Input", source),
      el("label", {}, "or a sample file", file),
      el("label", {}, "Site time zone", zone),
      el("button", { type: "button", id: "pg-golden-run", class: "primary", onclick: runGolden }, "Run golden cases"),
      el("button", { type: "button", id: "pg-reset", onclick: () => { setYaml(mapping().text); run(); } }, "Discard draft"),
      draftState,
    ),
    el(
      "div",
      { class: "play" },
      el("div", { class: "pane" }, el("h2", {}, "Mapping (YAML)"), yamlEditor.wrap, diagnostics),
      el("div", { class: "pane" }, el("h2", {}, "Input"), input, inputView),
    ),
    el(
      "div",
      { class: "play" },
      el("div", { class: "pane" }, el("h2", {}, "Output"), output),
      el("div", { class: "pane" }, el("h2", {}, "Trace"), trace),
    ),
    notes,
    el("h2", {}, "Golden cases"),
    golden,
    el("h2", {}, "Impact on the tracked orders"),
    el("p", { class: "help" }, "The live mapping and the draft over the orders the feed tracks (order mappings): how many outputs change, by the fields that change."),
    el("button", { type: "button", id: "pg-impact-run", onclick: runImpact }, "Preview the impact"),
    impact,
    el("h2", {}, "Promote"),
    el(
      "div",
      { class: "toolbar" },
      el("label", {}, "Note", note),
      el("label", { class: "check" }, el("span", {}, "accept changed golden outputs as new expectations"), accept),
      el("button", { type: "button", id: "pg-promote", class: "primary", onclick: promote }, "Promote draft"),
    ),
    el("p", { class: "help" }, "Promotion needs every golden case to match (or your acceptance of the changed outputs); the file is written and the live set reloaded, and the version is kept in the mapping history."),
    promotion,
  );
  setYaml(mapping().text);
  await fillCases();
  await run();
  return () => clearTimeout(timer);
}
