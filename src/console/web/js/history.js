// Mapping history: every promotion and rollback made in the console, its diff against the
// text before (or any other version of the same file), and a one-click rollback.
import { api } from "./api.js";
import { el, flash, show, table } from "./dom.js";

function diffView(text) {
  return el(
    "pre",
    { id: "history-diff" },
    text.split("\n").map((l) => el("span", { class: l.startsWith("-") ? "diff-del" : l.startsWith("+") ? "diff-add" : "" }, `${l}\n`)),
  );
}

export async function render(main) {
  const { versions } = await api("GET", "history");
  const detail = el("div", { id: "history-detail" });

  async function open(v) {
    const others = versions.filter((o) => o.file === v.file && o.id !== v.id);
    const against = el(
      "select",
      { id: "history-against" },
      el("option", { value: "" }, "the text before it"),
      others.map((o) => el("option", { value: String(o.id) }, `version ${o.id} (${o.action} by ${o.user})`)),
    );
    const body = el("div");
    async function load() {
      const q = against.value ? `?against=${against.value}` : "";
      const d = await api("GET", `history/${v.id}${q}`);
      show(body, diffView(d.diff));
    }
    against.addEventListener("change", () => load().catch((e) => flash(e.message, true)));
    show(
      detail,
      el("h2", {}, `Version ${v.id}: ${v.file}`),
      el("p", { class: "help" }, `${v.setBefore} → ${v.setAfter}; ${v.golden}`),
      el("div", { class: "toolbar" }, el("label", {}, "Compare with", against)),
      body,
    );
    await load();
  }

  async function rollback(v) {
    if (!window.confirm(`Put ${v.file} back as it was before version ${v.id}?`)) return;
    try {
      const r = await api("POST", `history/${v.id}/rollback`, {});
      flash(`${r.file} rolled back: mapping set ${r.setAfter} (${r.golden}).`);
      await render(main);
    } catch (e) {
      flash(e.message, true);
    }
  }

  show(
    main,
    el("h1", {}, "Mapping history"),
    el("p", { class: "help" }, "Mapping files promoted or rolled back in the console, newest first."),
    table(
      ["Version", "When", "Who", "Action", "File", "Mapping set", "Note", "Golden cases", ""],
      versions,
      (v) => [
        String(v.id),
        new Date(v.atMs).toISOString(),
        v.user,
        v.action,
        v.file,
        v.setAfter,
        v.note || "—",
        v.golden,
        el(
          "span",
          {},
          el("button", { type: "button", class: "history-diff", "data-id": v.id, onclick: () => open(v).catch((e) => flash(e.message, true)) }, "Diff"),
          " ",
          el("button", { type: "button", class: "history-rollback", "data-id": v.id, onclick: () => rollback(v) }, "Roll back"),
        ),
      ],
      "Nothing promoted from the console yet.",
    ),
    detail,
  );
  return null;
}
