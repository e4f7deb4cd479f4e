// One order's timeline: every feed message sent for an appointment (mapping version,
// MSH-10, each destination's ACK or error) and every result received for it (its MSH-10,
// the outbox attempts, QUBS's answer or why it stopped), newest first. Refreshed while shown.
import { api } from "./api.js";
import { ago, el, flash, show, table } from "./dom.js";

const REFRESH_MS = 5000;

function detail(step) {
  if (step.deliveries) {
    if (!step.deliveries.length) return "no destination takes this domain";
    return step.deliveries.map((d) =>
      el("div", {}, `${d.destination}: ${d.state}, ${d.attempts} attempt(s)${d.ackCode ? `, ACK ${d.ackCode}` : ""}${d.lastError ? ` — ${d.lastError}` : ""}`));
  }
  const r = step.result;
  if (r.state === "submitted") return `QUBS report ${r.reportGuid || "(no id)"}`;
  const reason = r.lastError ? `${r.errorKind ? `${r.errorKind}: ` : ""}${r.lastError}` : "waiting for its next attempt";
  return `${reason}${r.qubsRequestId ? ` (QUBS requestId ${r.qubsRequestId})` : ""}`;
}

export async function render(main, session, args) {
  const [domainArg, idArg] = args;
  const domain = el("select", { id: "tl-domain" }, session.domains.map((d) => el("option", { value: d }, d)));
  if (domainArg) domain.value = domainArg;
  const id = el("input", { id: "tl-id", size: 16, placeholder: "appointment id", value: idArg || "" });
  const steps = el("div", { id: "tl-steps" });

  async function load() {
    if (!id.value.trim()) return;
    const params = new URLSearchParams({ domain: domain.value, id: id.value.trim() });
    const t = await api("GET", `timeline?${params}`);
    show(
      steps,
      t.feedEnabled ? "" : el("p", { class: "help" }, "The order feed is off: only results are shown."),
      table(
        ["When", "Step", "What", "Outcome"],
        t.steps,
        (s) => [ago(s.at), s.step, s.what, el("span", { class: s.ok ? "ok" : "bad" }, detail(s))],
        `Nothing recorded for ${t.appointmentId} in ${t.domain}.`,
      ),
    );
  }

  show(
    main,
    el("h1", {}, "Order timeline"),
    el(
      "form",
      {
        class: "toolbar",
        onsubmit: (ev) => {
          ev.preventDefault();
          window.location.hash = `#timeline/${encodeURIComponent(domain.value)}/${encodeURIComponent(id.value.trim())}`;
        },
      },
      el("label", {}, "Domain", domain),
      el("label", {}, "Appointment", id),
      el("button", { type: "submit", id: "tl-show" }, "Show"),
    ),
    steps,
  );
  await load();
  const timer = setInterval(() => load().catch((e) => flash(e.message, true)), REFRESH_MS);
  return () => clearInterval(timer);
}
