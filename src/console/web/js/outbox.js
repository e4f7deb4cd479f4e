// The results outbox: search by appointment id (as mapped from the ORU: placer, filler or
// accession number) or message id (MSH-10), filter by state, retry dead letters, purge.
import { api } from "./api.js";
import { ago, el, flash, show, table } from "./dom.js";

const REFRESH_MS = 5000;

export async function render(main, session) {
  const operator = session.roles.includes("operator");
  const q = el("input", { id: "outbox-q", type: "search", size: 28, placeholder: "appointment id, accession or MSH-10" });
  const state = el(
    "select",
    { id: "outbox-state" },
    ["", "pending", "dead", "submitted"].map((s) => el("option", { value: s }, s || "any state")),
  );
  const results = el("div", { id: "outbox-results" });

  async function retry(body) {
    try {
      const r = await api("POST", "outbox/retry", body);
      flash(`${r.requeued} result(s) queued again for QUBS.`);
      await load();
    } catch (e) {
      flash(e.message, true);
    }
  }

  async function load() {
    const params = new URLSearchParams({ limit: "100" });
    if (q.value.trim()) params.set("q", q.value.trim());
    if (state.value) params.set("state", state.value);
    const { entries } = await api("GET", `outbox?${params}`);
    show(
      results,
      table(
        ["Id", "Domain", "Appointment", "Message id", "Status", "State", "Attempts", "Received", "Reason", "QUBS requestId", ""],
        entries,
        (e) => [
          String(e.id),
          e.domain,
          el("a", { href: `#timeline/${encodeURIComponent(e.domain)}/${encodeURIComponent(e.appointmentId)}`, title: "the order's timeline" }, e.appointmentId),
          `${e.source} ${e.sourceId}`,
          e.reportStatus,
          el("span", { class: e.state === "dead" ? "bad" : e.state === "submitted" ? "ok" : "" }, e.state),
          String(e.attempts),
          ago(e.receivedAt),
          e.lastError ? `${e.errorKind ? `${e.errorKind}: ` : ""}${e.lastError}` : "—",
          e.qubsRequestId || "—",
          operator && e.state === "dead"
            ? el("button", { type: "button", class: "retry", "data-id": e.id, onclick: () => retry({ ids: [e.id] }) }, "Retry")
            : "",
        ],
        "No results match.",
      ),
    );
  }

  const search = el(
    "form",
    { class: "toolbar", role: "search", onsubmit: (ev) => { ev.preventDefault(); load().catch((e) => flash(e.message, true)); } },
    el("label", {}, "Find", q),
    el("label", {}, "State", state),
    el("button", { type: "submit", id: "outbox-search" }, "Search"),
    operator ? el("button", { type: "button", id: "retry-all", onclick: () => retry({ allDead: true }) }, "Retry all dead letters") : "",
  );

  const purgeState = el("select", { id: "purge-state" }, ["dead", "submitted"].map((s) => el("option", { value: s }, s)));
  const purgeHours = el("input", { id: "purge-hours", type: "number", min: "0", value: "720", size: 6 });
  const purge = operator
    ? el(
        "form",
        {
          class: "toolbar",
          onsubmit: async (ev) => {
            ev.preventDefault();
            const hours = Number(purgeHours.value);
            if (!window.confirm(`Delete ${purgeState.value} results last changed more than ${hours} h ago?`)) return;
            try {
              const r = await api("POST", "outbox/purge", { state: purgeState.value, olderThanHours: hours });
              flash(`${r.purged} result(s) purged.`);
              await load();
            } catch (e) {
              flash(e.message, true);
            }
          },
        },
        el("label", {}, "Purge", purgeState),
        el("label", {}, "last changed more than (hours)", purgeHours),
        el("button", { type: "submit" }, "Purge"),
      )
    : "";

  show(
    main,
    el("h1", {}, "Results outbox"),
    el("p", { class: "help" }, "Results the bridge received and submits to QUBS, newest first. A dead letter shows why it stopped and the QUBS requestId to quote."),
    search,
    results,
    operator ? [el("h2", {}, "Purge settled results"), purge] : "",
  );
  await load();
  const timer = setInterval(() => load().catch((e) => flash(e.message, true)), REFRESH_MS);
  return () => clearInterval(timer);
}
