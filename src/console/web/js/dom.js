// Small DOM helpers. Text always goes in as text nodes, never as HTML: the console shows
// patient data and values from senders, and none of it may become markup.

/** Creates an element: `el("td", {class: "ok"}, "text", child, ...)`. */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, "");
    else e.setAttribute(k, String(v));
  }
  append(e, children);
  return e;
}

function append(parent, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(parent, c);
    else parent.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** A table with a header row and one row per item (`row(item)` returns the cells). */
export function table(headers, items, row, empty = "Nothing to show.") {
  if (!items.length) return el("p", { class: "help" }, empty);
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, items.map((i) => el("tr", {}, row(i).map((c) => el("td", {}, c))))),
  );
}

/** Shows a message in the page's status line. */
export function flash(message, isError = false) {
  const f = document.getElementById("flash");
  f.textContent = message;
  f.className = isError ? "error" : "";
  f.hidden = false;
}

/** "3 min ago" for an RFC 3339 time, or "—". */
export function ago(time) {
  if (!time) return "—";
  const secs = Math.max(0, (Date.now() - Date.parse(time)) / 1000);
  if (secs < 90) return `${Math.round(secs)} s ago`;
  if (secs < 5400) return `${Math.round(secs / 60)} min ago`;
  if (secs < 172800) return `${Math.round(secs / 3600)} h ago`;
  return `${Math.round(secs / 86400)} d ago`;
}

/** Replaces the children of `node`. */
export function show(node, ...children) {
  node.replaceChildren();
  append(node, children);
}
