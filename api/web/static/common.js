// Shared by the reader and the operator pages. Everything that comes from the model, the documents or a
// user is put in the page as text (textContent, text nodes): never as markup.

/** An element with attributes and children (strings become text nodes). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

/** `url` when it is an absolute http(s) URL, else null (a document may carry any `url`). */
export function safeUrl(url) {
  if (typeof url !== "string" || !url) return null;
  try {
    const parsed = new URL(url);
    return parsed.protocol === "https:" || parsed.protocol === "http:" ? parsed.href : null;
  } catch {
    return null;
  }
}

/** A refused or failed request: HTTP status, the envelope's `code` and `detail`, and Retry-After (s). */
export class ApiError extends Error {
  constructor(status, code, detail, retryAfter = null) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

/** The ApiError of a non-2xx response (API.md's envelope: {detail, code, message, request_id}). */
export async function errorFrom(response) {
  let code = `http_${response.status}`;
  let detail = `The request failed (HTTP ${response.status}).`;
  try {
    const body = await response.json();
    if (body && typeof body.detail === "string") detail = body.detail;
    if (body && typeof body.code === "string") code = body.code;
  } catch {
    // Not the envelope (a proxy's error page): keep the generic text.
  }
  const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  return new ApiError(response.status, code, detail, Number.isFinite(retry) ? retry : null);
}

export const NETWORK_ERROR = "The service could not be reached. Check the connection and try again.";

/** fetch() on this origin (no cookies: auth is a header), throwing ApiError for anything but 2xx. */
export async function request(path, { method = "GET", json, form, headers = {}, signal, raw = false } = {}) {
  const all = new Headers(headers);
  if (!all.has("Accept")) all.set("Accept", "application/json");
  let body;
  if (form !== undefined) body = form;
  else if (json !== undefined) {
    all.set("Content-Type", "application/json");
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, headers: all, body, signal, credentials: "omit", cache: "no-store" });
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    throw new ApiError(0, "network_error", NETWORK_ERROR);
  }
  if (!response.ok) throw await errorFrom(response);
  if (raw) return response;
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** Server-Sent Events of a fetch() response, as {event, data} (`: ping` comments skipped). */
export async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const lines = buffer.split("\n");
    buffer = lines.pop();
    for (let line of lines) {
      if (line.endsWith("\r")) line = line.slice(0, -1);
      if (line === "") {
        if (data.length) yield { event: event || "message", data: data.join("\n") };
        event = "";
        data = [];
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "event") event = text;
      else if (field === "data") data.push(text);
    }
  }
  if (data.length) yield { event: event || "message", data: data.join("\n") };
}

/** "12 s", "2 min 5 s". */
export function formatWait(seconds) {
  const s = Math.max(1, Math.ceil(seconds));
  if (s < 60) return `${s} s`;
  const minutes = Math.floor(s / 60);
  return s % 60 ? `${minutes} min ${s % 60} s` : `${minutes} min`;
}

/** A short local date and time for an ISO timestamp ("" when absent). */
export function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

/** Show `text` in a status line; `kind` is "", "error" or "ok". */
export function setStatus(node, text, kind = "") {
  node.textContent = text;
  node.dataset.kind = kind;
  if (kind === "error") node.setAttribute("role", "alert");
  else node.setAttribute("role", "status");
}

/**
 * A delete button that asks again in place (no dialog): the first press arms it for 5 s, the second
 * calls `action`.
 */
export function confirmButton(label, action, { armedLabel = "Press again to delete" } = {}) {
  const button = el("button", { type: "button", class: "danger" }, label);
  let timer = null;
  button.addEventListener("click", async () => {
    if (!button.dataset.armed) {
      button.dataset.armed = "1";
      button.textContent = armedLabel;
      timer = setTimeout(() => {
        delete button.dataset.armed;
        button.textContent = label;
      }, 5000);
      return;
    }
    clearTimeout(timer);
    button.disabled = true;
    try {
      await action();
    } finally {
      button.disabled = false;
      delete button.dataset.armed;
      button.textContent = label;
    }
  });
  return button;
}
