// The playground's field views and value trace. An input or output is shown as text whose
// fields can be selected (ER7 fields by segment and number, JSON values by path); the run's
// trace says which rule wrote each output field and which input fields each rule read
// (`ruleReads`, from the API), so selecting an output field shows how its value came about
// and selecting an input field shows the output fields it fed. Keyboard: the view is one
// tab stop; arrow keys move between fields, Enter or Space selects.
import { el, show } from "./dom.js";

/** The fields of an ER7 message: one entry per segment line (1-based `line`). */
export function er7Lines(text) {
  return text
    .replace(/\r\n?/g, "\n")
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((raw, i) => {
      const parts = raw.split("|");
      const seg = parts[0];
      // MSH-1 is the field separator itself: the text after it is MSH-2.
      const first = seg === "MSH" ? 2 : 1;
      return {
        line: i + 1,
        seg,
        raw,
        fields: parts.slice(1).map((value, k) => ({ n: k + first, value })),
      };
    });
}

/** `ORC-7.6` → `ORC-7`; `PID-3[2].1` → `PID-3`. */
export function fieldOf(target) {
  const m = /^([A-Z0-9]{3})-(\d+)/.exec(target);
  return m ? `${m[1]}-${m[2]}` : target;
}

/** A JSON path with its list indexes as `[]`: `comments[0].text` → `comments[].text`. */
export function shapeOf(path) {
  return path.replace(/\[\d+\]/g, "[]");
}

/**
 * A selectable view: a `pre` holding text and field spans. `parts` is built with `text()`
 * and `field()`; `onSelect(span)` is called when a field is chosen.
 */
function fieldView(id, label, onSelect) {
  const pre = el("pre", { id, class: "fields", tabindex: "0", role: "group", "aria-label": label });
  const spans = [];
  let current = -1;
  const focusAt = (i) => {
    if (!spans.length) return;
    current = Math.max(0, Math.min(spans.length - 1, i));
    spans.forEach((s, k) => s.setAttribute("tabindex", k === current ? "0" : "-1"));
    spans[current].focus();
  };
  pre.addEventListener("keydown", (ev) => {
    const at = spans.indexOf(document.activeElement);
    const keys = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 };
    if (ev.key in keys) {
      ev.preventDefault();
      focusAt(at < 0 ? 0 : at + keys[ev.key]);
    } else if (ev.key === "Home" || ev.key === "End") {
      ev.preventDefault();
      focusAt(ev.key === "Home" ? 0 : spans.length - 1);
    } else if ((ev.key === "Enter" || ev.key === " ") && at >= 0) {
      ev.preventDefault();
      onSelect(spans[at]);
    }
  });
  pre.addEventListener("focus", (ev) => {
    // Into the view from outside: to the field selected last, or the first.
    if (ev.target === pre && spans.length) focusAt(current < 0 ? 0 : current);
  });
  return {
    pre,
    spans,
    field(text, data, title) {
      const s = el("span", { class: "field", tabindex: "-1", role: "button", title, ...data }, text);
      s.addEventListener("click", () => {
        current = spans.indexOf(s);
        onSelect(s);
      });
      spans.push(s);
      return s;
    },
  };
}

/** An ER7 message as a field view; each non-empty field has `data-field` (`ORC-7`) and `data-line`. */
export function er7View(id, label, text, onSelect, titleOf = (f) => f) {
  const v = fieldView(id, label, onSelect);
  const lines = er7Lines(text);
  for (const l of lines) {
    const row = [l.seg];
    for (const f of l.fields) {
      row.push("|");
      const name = `${l.seg}-${f.n}`;
      if (f.value === "" || (l.seg === "MSH" && f.n === 2)) row.push(f.value);
      else row.push(v.field(f.value, { "data-field": name, "data-line": l.line }, titleOf(name)));
    }
    row.push("\n");
    v.pre.append(...row.map((x) => (typeof x === "string" ? document.createTextNode(x) : x)));
  }
  return v;
}

/**
 * A JSON document as a field view, laid out as `JSON.stringify(value, null, 2)`. Each scalar
 * is a field with `data-path` (`note[0].text`); values inside a contained resource also have
 * `data-alias` (`#patient/name[0].family`), as the trace names them.
 */
export function jsonView(id, label, value, onSelect, { prefix = "", titleOf = (p) => p } = {}) {
  const v = fieldView(id, label, onSelect);
  const out = [];
  const join = (base, key) => (typeof key === "number" ? `${base}[${key}]` : base ? `${base}.${key}` : key);
  const walk = (x, path, alias, indent) => {
    const pad = "  ".repeat(indent);
    if (Array.isArray(x)) {
      if (!x.length) return out.push("[]");
      out.push("[\n");
      x.forEach((item, i) => {
        out.push(`${pad}  `);
        let itemAlias = alias ? `${alias}[${i}]` : null;
        // `contained[i]` with an id is `#id/` in the trace.
        if (path === "contained" && item && typeof item === "object" && typeof item.id === "string") itemAlias = `#${item.id}/`;
        walk(item, join(path, i), itemAlias, indent + 1);
        out.push(i < x.length - 1 ? ",\n" : "\n");
      });
      out.push(`${pad}]`);
    } else if (x && typeof x === "object") {
      const keys = Object.keys(x);
      if (!keys.length) return out.push("{}");
      out.push("{\n");
      keys.forEach((k, i) => {
        out.push(`${pad}  ${JSON.stringify(k)}: `);
        const a = alias === null ? null : alias.endsWith("/") ? `${alias}${k}` : `${alias}.${k}`;
        walk(x[k], join(path, k), a, indent + 1);
        out.push(i < keys.length - 1 ? ",\n" : "\n");
      });
      out.push(`${pad}}`);
    } else {
      const full = prefix + path;
      out.push(v.field(JSON.stringify(x), { "data-path": full, "data-alias": alias || null }, titleOf(full)));
    }
    return null;
  };
  walk(value, "", null, 0);
  v.pre.append(...out.map((x) => (typeof x === "string" ? document.createTextNode(x) : x)));
  return v;
}

/**
 * Whether the input field `field` is `read` or lies inside or around it. Item choices are
 * left out on both sides: `OBX[*]-5` and `OBX[OBX-2 in (TX)]-5` read OBX-5, `OBR-32[1]` is
 * OBR-32, `comments[].text` is a field of `comments`.
 */
export function covers(read, field) {
  const plain = (s) => s.replace(/\[[^\]]*\]/g, "");
  const [r, f] = [plain(read), plain(field)];
  const inside = (a, b) => a.startsWith(`${b}.`);
  return r === f || inside(f, r) || inside(r, f);
}

const quote = (v) => {
  if (v === undefined || v === null) return el("span", { class: "absent" }, "(absent)");
  if (Array.isArray(v)) return el("code", {}, `[${v.map((x) => JSON.stringify(x)).join(", ")}]`);
  return el("code", {}, JSON.stringify(v));
};

function condition(c) {
  return el(
    "li",
    {},
    el("code", {}, c.test),
    c.parts && c.parts.length ? "" : [" — value ", quote(c.value)],
    " → ",
    el("strong", { class: c.result ? "ok" : "bad" }, c.result ? "holds" : "does not hold"),
    c.parts && c.parts.length ? el("ul", {}, c.parts.map(condition)) : "",
  );
}

function steps(list) {
  if (!list || !list.length) return "";
  return el(
    "table",
    { class: "trace-steps" },
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Filter"), el("th", { scope: "col" }, "Result"), el("th", { scope: "col" }, "Table"))),
    el(
      "tbody",
      {},
      list.map((s) =>
        el(
          "tr",
          {},
          el("td", {}, el("code", {}, s.filter)),
          el("td", {}, quote(s.result)),
          el(
            "td",
            {},
            s.table
              ? s.table.hit
                ? el("span", { class: "ok" }, `${s.table.table}: “${s.table.key}” found`)
                : el("span", { class: "warn" }, `${s.table.table}: “${s.table.key}” not found (${s.table.policy})`)
              : "",
          ),
        ),
      ),
    ),
  );
}

function source(s) {
  if (!s) return "";
  if (s.kind === "constant") return el("p", {}, "Constant ", quote(s.value));
  if (s.kind === "alternatives") {
    return el(
      "table",
      { class: "trace-source" },
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Source path"), el("th", { scope: "col" }, "Raw value"), el("th", { scope: "col" }, ""))),
      el(
        "tbody",
        {},
        s.alternatives.map((a, i) =>
          el(
            "tr",
            { class: i === s.won ? "won" : "" },
            el("td", {}, el("code", {}, a.path)),
            el("td", {}, quote(a.raw)),
            el("td", {}, i === s.won ? "← used" : s.won === undefined || i < s.won ? "empty" : "not needed"),
          ),
        ),
      ),
    );
  }
  // Stages: alternatives with their own filters.
  return el(
    "ol",
    { class: "trace-stages" },
    s.stages.map((st, i) =>
      el(
        "li",
        { class: i === s.won ? "won" : "" },
        el("p", {}, i === s.won ? "Alternative used" : st.tried ? "Alternative tried: no value" : "Alternative not tried"),
        source(st.source),
        steps(st.steps),
      ),
    ),
  );
}

const OUTCOME = { written: "written", empty: "no value: nothing written", skipped: "skipped: its `when` did not hold" };

/**
 * One trace entry as a card: the target and value, the rule (a link to its line in the
 * editor), `when`, the source alternatives with their raw values, each filter step with
 * table hits and misses, and the input fields the rule reads.
 */
export function entryCard(f, reads, { jumpTo, selectInput }) {
  const [, line] = /:(\d+):\d+$/.exec(f.rule) || [];
  return el(
    "section",
    { class: "trace-entry", "data-target": f.target },
    el(
      "h3",
      {},
      el("code", {}, f.target),
      f.outcome === "written" ? [" = ", quote(f.value)] : "",
      el("span", { class: `outcome ${f.outcome}` }, ` ${OUTCOME[f.outcome] || f.outcome}`),
    ),
    el(
      "dl",
      {},
      el("dt", {}, "Rule"),
      el(
        "dd",
        {},
        line
          ? el("a", { href: "#playground", class: "trace-rule", onclick: (ev) => { ev.preventDefault(); jumpTo(Number(line)); } }, f.rule)
          : el("code", {}, f.rule),
        f.segment ? ` (segment ${f.segment})` : "",
        f.group ? ` (ORDER_OBSERVATION group ${f.group})` : "",
      ),
      f.when ? [el("dt", {}, "When"), el("dd", {}, el("ul", { class: "trace-when" }, condition(f.when)))] : "",
      f.source ? [el("dt", {}, "Source"), el("dd", {}, source(f.source))] : "",
      f.steps && f.steps.length ? [el("dt", {}, "Filters"), el("dd", {}, steps(f.steps))] : "",
      reads.length
        ? [
          el("dt", {}, "Reads"),
          el(
            "dd",
            {},
            // One link per field, with what the rule does with it.
            [...new Set(reads.map((r) => r.field))].map((field) => {
              const uses = reads.filter((r) => r.field === field).map((r) => (r.use === "decides" ? "decides" : "value"));
              return [
                el("button", { type: "button", class: "link trace-read", onclick: () => selectInput(field) }, field),
                ` (${uses.join(", ")}) `,
              ];
            }),
          ),
        ]
        : "",
    ),
  );
}

/** Fills `panel` with a heading and the cards of `entries` (or a note when there are none). */
export function showEntries(panel, heading, entries, ruleReads, actions, none) {
  show(
    panel,
    el("h3", { class: "trace-heading" }, heading),
    entries.length ? entries.map((f) => entryCard(f, ruleReads[f.rule] || [], actions)) : el("p", { class: "help" }, none),
  );
}
