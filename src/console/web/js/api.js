// The console's JSON API client: every call goes through `api`, which sends the session's
// CSRF token on state changes and sends the browser to the sign-in page when the session
// has ended.

let csrf = null;

/** Remembers the session's CSRF token (from /console/api/session or the sign-in answer). */
export function setCsrf(token) {
  csrf = token;
}

/** An API error: the server's message, with the HTTP status and the whole answer. */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

/** Calls `/console/api/<path>`; resolves to the JSON answer, rejects with an ApiError. */
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    if (csrf) headers["X-CSRF-Token"] = csrf;
  }
  const response = await fetch(`/console/api/${path}`, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let json = null;
  try {
    json = await response.json();
  } catch {
    json = null;
  }
  if (response.status === 401 && path !== "login") {
    window.location.assign("/console/login");
  }
  if (!response.ok) throw new ApiError(response.status, json);
  return json;
}
