// The operator console (/admin): load documents, follow ingestion jobs, list and delete documents, and
// watch readiness, circuit breakers and a few metrics. The admin key is typed here and kept in this tab's
// sessionStorage only; it travels as the X-API-Key header, never in a URL, a cookie or a log line.
import { ApiError, confirmButton, el, formatTime, NETWORK_ERROR, request, setStatus } from "./common.js";

const KEY = "lectern.adminKey";
const REFRESH_MS = 5000;
const JOB_POLL_MS = 1000;
const $ = (id) => document.getElementById(id);

const state = { key: null, jobId: null, jobTimer: null, healthTimer: null };

const REFUSED =
  "That admin key was refused (401). Check the ADMIN_API_KEY of this deployment and enter it again.";

function describe(error) {
  if (!(error instanceof ApiError)) return NETWORK_ERROR;
  const wait = error.retryAfter ? ` Try again in ${error.retryAfter} s.` : "";
  return `${error.detail}${wait}`;
}

/** A request with the admin key; a 401 locks the console again (the key was wrong or rotated). */
async function admin(path, options = {}) {
  try {
    return await request(path, { ...options, headers: { ...(options.headers || {}), "X-API-Key": state.key } });
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) lock(REFUSED);
    throw error;
  }
}

// ---- the key ------------------------------------------------------------------------------------

function lock(message) {
  state.key = null;
  sessionStorage.removeItem(KEY);
  clearTimeout(state.healthTimer);
  clearTimeout(state.jobTimer);
  state.healthTimer = state.jobTimer = null;
  $("console").hidden = true;
  $("key-section").hidden = false;
  setStatus($("key-status"), message, message ? "error" : "");
  $("admin-key").focus();
}

async function unlock(key) {
  state.key = key;
  setStatus($("key-status"), "Checking the key…");
  let jobs;
  try {
    jobs = await admin("/api/ingest/jobs?limit=10");
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) {
      state.key = null;
      setStatus($("key-status"), describe(error), "error");
    }
    return;
  }
  sessionStorage.setItem(KEY, key);
  setStatus($("key-status"), "");
  $("key-section").hidden = true;
  $("console").hidden = false;
  renderJobs(jobs.jobs);
  const running = jobs.jobs.find((job) => job.status === "queued" || job.status === "running");
  if (running) watchJob(running.job_id);
  await Promise.all([loadDocuments(), refreshHealth()]);
}

// ---- loading documents and following jobs -------------------------------------------------------

async function upload(event) {
  event.preventDefault();
  const files = $("files").files;
  const status = $("load-status");
  if (!files.length) {
    setStatus(status, "Choose one or more .md, .mdx or .txt files, or one .zip.", "error");
    return;
  }
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  setStatus(status, `Uploading ${files.length} file${files.length === 1 ? "" : "s"}…`);
  try {
    const job = await admin("/api/ingest/files", { method: "POST", form });
    setStatus(status, `Queued job ${job.job_id} with ${job.documents} document${job.documents === 1 ? "" : "s"}.`, "ok");
    $("upload-form").reset();
    watchJob(job.job_id);
  } catch (error) {
    if (state.key) setStatus(status, describe(error), "error");
  }
}

async function ingestDocsDir() {
  const status = $("load-status");
  setStatus(status, "Queuing DOCS_DIR…");
  try {
    const job = await admin("/ingest", { method: "POST" });
    setStatus(status, `Queued job ${job.job_id} with ${job.documents} documents from DOCS_DIR.`, "ok");
    watchJob(job.job_id);
  } catch (error) {
    if (state.key) setStatus(status, describe(error), "error");
  }
}

function watchJob(jobId) {
  state.jobId = jobId;
  clearTimeout(state.jobTimer);
  pollJob();
}

async function pollJob() {
  const jobId = state.jobId;
  if (!jobId || !state.key) return;
  let job;
  try {
    job = await admin(`/api/ingest/jobs/${encodeURIComponent(jobId)}`);
  } catch (error) {
    if (state.key) setStatus($("load-status"), describe(error), "error");
    return;
  }
  if (jobId !== state.jobId) return;
  renderJob(job);
  if (job.status === "queued" || job.status === "running") {
    state.jobTimer = setTimeout(pollJob, JOB_POLL_MS);
  } else {
    await Promise.all([loadJobs(), loadDocuments()]);
  }
}

function renderJob(job) {
  $("job").hidden = false;
  $("job").dataset.status = job.status;
  $("job-id").textContent = job.job_id;
  const badge = $("job-status");
  badge.textContent = job.status;
  badge.dataset.kind = job.status;
  const total = Math.max(job.documents_total, 1);
  $("job-progress").max = total;
  $("job-progress").value = job.documents_done;
  const skipped = job.documents_skipped ? `, ${job.documents_skipped} unchanged (skipped)` : "";
  $("job-counts").textContent =
    `${job.documents_done} of ${job.documents_total} documents done${skipped}; ` +
    `${job.chunks_upserted} chunks written; ${job.errors.length} error${job.errors.length === 1 ? "" : "s"}.`;
  $("job-errors").replaceChildren(
    ...job.errors.map((e) => el("li", {}, el("code", {}, e.source || "job"), ": ", e.message || "")),
  );
}

async function loadJobs() {
  try {
    renderJobs((await admin("/api/ingest/jobs?limit=10")).jobs);
  } catch {
    // The next refresh tries again; a 401 already locked the console.
  }
}

function renderJobs(jobs) {
  $("jobs-table").tBodies[0].replaceChildren(
    ...jobs.map((job) => {
      const open = el("button", { type: "button", class: "link" }, job.job_id.slice(0, 12));
      open.addEventListener("click", () => watchJob(job.job_id));
      return el(
        "tr",
        {},
        el("td", {}, open),
        el("td", {}, el("span", { class: "badge", "data-kind": job.status }, job.status)),
        el("td", {}, `${job.documents_done}/${job.documents_total}`),
        el("td", {}, String(job.chunks_upserted)),
        el("td", {}, formatTime(job.created_at)),
      );
    }),
  );
}

// ---- documents ----------------------------------------------------------------------------------

async function loadDocuments() {
  const status = $("docs-status");
  let body;
  try {
    body = await admin("/api/documents");
  } catch (error) {
    if (state.key) setStatus(status, describe(error), "error");
    return;
  }
  $("docs-total").textContent = `(${body.total})`;
  $("docs-table").tBodies[0].replaceChildren(...body.documents.map(documentRow));
  setStatus(status, body.total ? "" : "No documents yet: upload some or ingest DOCS_DIR.");
}

function documentRow(doc) {
  const path = doc.source.split("/").map(encodeURIComponent).join("/");
  const remove = confirmButton("Delete", async () => {
    let message = "";
    let kind = "ok";
    try {
      const result = await admin(`/api/documents/${path}`, { method: "DELETE" });
      message = `Deleted ${result.deleted} (${result.chunks} chunks).`;
    } catch (error) {
      if (!state.key) return;
      message = describe(error);
      kind = "error";
    }
    await loadDocuments();
    setStatus($("docs-status"), message, kind);
  });
  return el(
    "tr",
    { "data-source": doc.source },
    el("td", {}, el("code", {}, doc.source)),
    el("td", {}, doc.title || ""),
    el("td", {}, String(doc.chunks)),
    el("td", {}, formatTime(doc.ingested_at)),
    el("td", {}, remove),
  );
}

// ---- health, circuits, metrics ------------------------------------------------------------------

async function refreshHealth() {
  clearTimeout(state.healthTimer);
  if (!state.key) return;
  if (!document.hidden) {
    const results = await Promise.allSettled([loadReadiness(), loadCircuits(), loadMetrics()]);
    const failed = results.filter((r) => r.status === "rejected").map((r) => describe(r.reason));
    setStatus($("health-status"), failed.length ? failed.join(" ") : "", failed.length ? "error" : "");
    $("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  }
  if (state.key) state.healthTimer = setTimeout(refreshHealth, REFRESH_MS);
}

async function loadReadiness() {
  // 503 carries the report too (status "unavailable"), so read the body whatever the status.
  let response;
  try {
    response = await fetch("/health/ready", { credentials: "omit", cache: "no-store", headers: { Accept: "application/json" } });
  } catch {
    throw new ApiError(0, "network_error", NETWORK_ERROR);
  }
  const report = await response.json().catch(() => ({}));
  if (!report.checks) throw new ApiError(response.status, report.code || "error", report.detail || "Readiness is unknown.");
  const badge = $("ready-status");
  badge.textContent = report.status;
  badge.dataset.kind = report.status;
  $("ready-table").tBodies[0].replaceChildren(
    ...Object.entries(report.checks).map(([name, check]) =>
      el(
        "tr",
        {},
        el("th", { scope: "row" }, name),
        el("td", {}, el("span", { class: "badge", "data-kind": check.status }, check.status)),
        el("td", {}, check.latency_ms === undefined || check.latency_ms === null ? "" : `${check.latency_ms} ms`),
        el("td", {}, check.detail || ""),
      ),
    ),
  );
}

async function loadCircuits() {
  const circuits = await request("/health/circuits");
  $("circuits-table").tBodies[0].replaceChildren(
    ...Object.entries(circuits)
      .filter(([, c]) => c && typeof c === "object" && "state" in c)
      .map(([name, c]) =>
        el(
          "tr",
          {},
          el("th", { scope: "row" }, name),
          el("td", {}, el("span", { class: "badge", "data-kind": c.state }, c.state)),
          el("td", {}, `${c.failure_count}/${c.failure_threshold}`),
          el("td", {}, c.last_error || ""),
          el(
            "td",
            {},
            el(
              "ul",
              { class: "plain" },
              ...(c.processes || []).map((p) =>
                el("li", {}, `${p.role} ${p.pid}: `, el("span", { class: "badge", "data-kind": p.state }, p.state), ` (${p.failure_count} failures)`),
              ),
            ),
          ),
        ),
      ),
  );
}

/** Prometheus text -> [{name, labels, value}] (comments and malformed lines skipped). */
function parseMetrics(text) {
  const samples = [];
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const raw of text.split("\n")) {
    if (!raw || raw.startsWith("#")) continue;
    const match = line.exec(raw);
    if (!match) continue;
    const labels = {};
    for (const [, name, value] of (match[2] || "").matchAll(label)) labels[name] = value;
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

function total(samples, name, where = () => true) {
  return samples.filter((s) => s.name === name && where(s.labels)).reduce((sum, s) => sum + (Number.isFinite(s.value) ? s.value : 0), 0);
}

const CHAT_ROUTES = new Set(["/chat", "/api/chat/stream", "/v1/chat/completions"]);

async function loadMetrics() {
  const samples = parseMetrics(await request("/metrics", { headers: { Accept: "text/plain" } }));
  const requests = total(samples, "lectern_http_requests_total");
  const seconds = total(samples, "lectern_http_request_duration_seconds_sum");
  const count = total(samples, "lectern_http_request_duration_seconds_count");
  const rows = [
    ["Requests served", requests],
    ["Questions answered (chat routes)", total(samples, "lectern_http_requests_total", (l) => CHAT_ROUTES.has(l.route) && l.status === "200")],
    ["Server errors (5xx)", total(samples, "lectern_http_requests_total", (l) => String(l.status).startsWith("5"))],
    ["Rate limited (429)", total(samples, "lectern_http_requests_total", (l) => l.status === "429")],
    ["Mean response time", count ? `${((seconds / count) * 1000).toFixed(1)} ms` : "–"],
    ["Ingestion jobs succeeded / failed", `${total(samples, "lectern_jobs_total", (l) => l.status === "success" || l.status === "succeeded")} / ${total(samples, "lectern_jobs_total", (l) => l.status === "failure" || l.status === "failed")}`],
    ["Calls refused by an open breaker", total(samples, "lectern_circuit_rejected_total")],
    ["Upstream retries", total(samples, "lectern_upstream_retries_total")],
    ["Worker restarts by the watchdog", total(samples, "lectern_watchdog_restarts_total")],
  ];
  $("metrics").replaceChildren(
    ...rows.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, typeof value === "number" ? value.toLocaleString() : value)]),
  );
}

// ---- wiring -------------------------------------------------------------------------------------

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const field = $("admin-key");
  const key = field.value.trim();
  field.value = "";
  if (!key) {
    setStatus($("key-status"), "Enter the admin key.", "error");
    return;
  }
  unlock(key);
});
$("forget-key").addEventListener("click", () => lock(""));
$("upload-form").addEventListener("submit", upload);
$("ingest-docs-dir").addEventListener("click", ingestDocsDir);
$("refresh-docs").addEventListener("click", loadDocuments);
document.addEventListener("visibilitychange", () => {
  if (!document.hidden && state.key) refreshHealth();
});

const saved = sessionStorage.getItem(KEY);
if (saved) unlock(saved);
else $("admin-key").focus();
document.documentElement.dataset.ready = "1";
