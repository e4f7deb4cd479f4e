// The audit log: who changed what, and when.
import { api } from "./api.js";
import { el, show, table } from "./dom.js";

export async function render(main) {
  const { entries } = await api("GET", "audit?limit=200");
  show(
    main,
    el("h1", {}, "Audit log"),
    el("p", { class: "help" }, "Every sign-in, retry, purge and resend made through the console, newest first."),
    table(
      ["When", "Who", "Via", "Action", "Target", "Detail", "Outcome"],
      entries,
      (e) => [new Date(e.atMs).toISOString(), e.user, e.via, e.action, e.target, e.detail, e.outcome],
      "No changes recorded yet.",
    ),
  );
}
