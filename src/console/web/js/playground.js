// The mapping playground: pick a mapping and an input (a golden case or pasted text), edit
// the mapping's YAML, and see the output, warnings and unread input fields as you type; run
// every golden case against the draft. Nothing is written: the draft lives in the page.
import { api } from "./api.js";
import { el, flash, show } from "./dom.js";
import { editor } from "./yaml.js";

const DEBOUNCE_MS = 400;

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
  const output = el("pre", { id: "pg-output", tabindex: "0" });
  const notes = el("div", { id: "pg-notes" });
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

  function fillCases() {
    const m = mapping();
    const usable = cases.filter((c) => c.mappings.includes(m.name) || c.kind === m.input);
    show(
      source,
      el("option", { value: "" }, "pasted input"),
      usable.map((c) => el("option", { value: c.name }, `golden case ${c.name}`)),
    );
    if (usable.length) {
      source.value = usable[0].name;
      useCase();
    }
  }

  function useCase() {
    const c = cases.find((x) => x.name === source.value);
    if (!c) return;
    input.value = c.input;
    zone.value = c.siteTimeZone || "";
  }

  function jumpTo(line) {
    const lines = yaml.value.split("\n");
    const at = lines.slice(0, Math.max(0, line - 1)).reduce((n, l) => n + l.length + 1, 0);
    yaml.focus();
    yaml.setSelectionRange(at, at + (lines[line - 1] || "").length);
  }

  async function run() {
    const mine = ++seq;
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
      output.textContent = r.errors.length ? "" : r.output.replaceAll("\r", "\n");
      show(
        notes,
        r.errors.length ? el("h2", {}, "Errors") : "",
        el("ul", { id: "pg-errors", class: "error" }, r.errors.map((e) => el("li", {}, `${e.code}: ${e.message}`))),
        el("h2", {}, `Warnings (${r.warnings.length})`),
        el("ul", { id: "pg-warnings" }, r.warnings.map((w) => el("li", {}, `${w.code}${w.rule ? ` [${w.rule}]` : ""}: ${w.message}`))),
        el("h2", {}, `Input fields no rule reads (${r.unreadFields.length})`),
        el("ul", { id: "pg-unread" }, r.unreadFields.map((f) => el("li", {}, el("code", {}, f)))),
        fieldsPanel(r.fields, r.unreadFields),
        el("h2", {}, "Trace"),
        el(
          "div",
          { id: "pg-trace", class: "trace" },
          r.trace
            ? el("pre", {}, JSON.stringify(r.trace, null, 2))
            : "No trace for this run.",
        ),
      );
    } catch (e) {
      if (mine !== seq) return;
      if (e.body && e.body.diagnostics) {
        output.textContent = "";
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
    }
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
    timer = setTimeout(run, DEBOUNCE_MS);
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

  pick.addEventListener("change", () => {
    setYaml(mapping().text);
    fillCases();
    run();
  });
  source.addEventListener("change", () => {
    useCase();
    run();
  });
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
      el("label", {}, "Site time zone", zone),
      el("button", { type: "button", id: "pg-golden-run", class: "primary", onclick: runGolden }, "Run golden cases"),
      el("button", { type: "button", id: "pg-reset", onclick: () => { setYaml(mapping().text); run(); } }, "Discard draft"),
      draftState,
    ),
    el(
      "div",
      { class: "play" },
      el("div", { class: "pane" }, el("h2", {}, "Mapping (YAML)"), yamlEditor.wrap, diagnostics),
      el("div", { class: "pane" }, el("h2", {}, "Input"), input, el("h2", {}, "Output"), output, notes),
    ),
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
  fillCases();
  await run();
  return () => clearTimeout(timer);
}
