// The reader playground (GET / in a browser): ask, watch the answer stream, follow the citations; with an
// account, keep conversations. The session token lives in this tab's sessionStorage and travels as a
// Bearer header (no cookie, so it also works inside the Hugging Face iframe where third-party cookies
// are blocked).
import {
  ApiError,
  confirmButton,
  el,
  formatTime,
  formatWait,
  NETWORK_ERROR,
  request,
  safeUrl,
  setStatus,
  sseEvents,
} from "./common.js";

const TOKEN_KEY = "lectern.session";
const LEVELS = { beginner: "a beginner", intermediate: "an intermediate", pro: "a pro" };
const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  user: null,
  sessionId: null, // the conversation follow-ups go to (signed in only)
  busy: null, // the AbortController of the answer being streamed
  turns: 0,
  waitUntil: 0,
  waitTimer: null,
};

function authHeaders() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

function forgetToken() {
  state.token = null;
  state.user = null;
  state.sessionId = null;
  sessionStorage.removeItem(TOKEN_KEY);
}

// ---- messages for people ------------------------------------------------------------------------

function describe(error) {
  if (!(error instanceof ApiError)) return NETWORK_ERROR;
  const wait = error.retryAfter ? formatWait(error.retryAfter) : null;
  if (error.status === 429 || error.code === "rate_limited") {
    return `You are asking faster than the limit allows. You can ask again in ${wait || "a minute"}.`;
  }
  if (error.status === 503 || error.code === "upstream_unavailable") {
    return `Lectern cannot answer right now: a service it depends on is unavailable. ${error.detail}${
      wait ? ` Try again in ${wait}.` : ""
    }`;
  }
  return error.detail;
}

function describeStreamError(payload) {
  const detail = typeof payload.detail === "string" ? payload.detail : "The answer failed.";
  if (payload.code === "upstream_unavailable" || payload.code === "llm_unavailable") {
    return `Lectern cannot answer right now: a service it depends on is unavailable. ${detail}`;
  }
  return detail;
}

// ---- account ------------------------------------------------------------------------------------

function renderAccount() {
  const signedIn = Boolean(state.user);
  $("signed-out").hidden = signedIn;
  $("signed-in").hidden = !signedIn;
  $("sessions").hidden = !signedIn;
  $("level-hint").hidden = signedIn;
  if (signedIn) {
    $("user-name").textContent = state.user.name;
    $("user-email").textContent = `(${state.user.email})`;
    $("level").value = state.user.proficiency;
  } else {
    $("session-list").replaceChildren();
  }
}

function showTab(which) {
  const signIn = which === "sign-in";
  $("sign-in-form").hidden = !signIn;
  $("sign-up-form").hidden = signIn;
  $("show-sign-in").setAttribute("aria-pressed", String(signIn));
  $("show-sign-up").setAttribute("aria-pressed", String(!signIn));
  setStatus($("account-status"), "");
}

async function loadAccount() {
  if (state.token) {
    try {
      const body = await request("/api/auth/get-session", { headers: authHeaders() });
      if (body.user) state.user = body.user;
      else forgetToken();
    } catch (error) {
      setStatus($("account-status"), describe(error), "error");
    }
  }
  renderAccount();
  if (state.user) await loadSessions();
}

async function authenticate(form, path, body) {
  const status = $("account-status");
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  setStatus(status, "One moment…");
  try {
    const result = await request(path, { method: "POST", json: body });
    state.token = result.token;
    state.user = result.user;
    sessionStorage.setItem(TOKEN_KEY, result.token);
    form.reset();
    setStatus(status, `Welcome, ${result.user.name}.`, "ok");
    renderAccount();
    newConversation();
    await loadSessions();
  } catch (error) {
    let text = describe(error);
    if (error instanceof ApiError && error.code === "USER_ALREADY_EXISTS") {
      text = "An account with this email already exists: sign in instead.";
    }
    setStatus(status, text, "error");
  } finally {
    button.disabled = false;
  }
}

function signIn(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const email = form.elements.email.value.trim();
  const password = form.elements.password.value;
  if (!email || !password) {
    setStatus($("account-status"), "Enter your email and password.", "error");
    return;
  }
  authenticate(form, "/api/auth/sign-in/email", { email, password });
}

function signUp(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const name = form.elements.name.value.trim();
  const email = form.elements.email.value.trim();
  const password = form.elements.password.value;
  const proficiency = form.elements.proficiency.value;
  if (!name || !email) {
    setStatus($("account-status"), "Enter your name and email.", "error");
    return;
  }
  if (password.length < 8) {
    setStatus($("account-status"), "Choose a password of at least 8 characters.", "error");
    return;
  }
  authenticate(form, "/api/auth/sign-up", { name, email, password, proficiency });
}

async function signOut() {
  try {
    await request("/api/auth/sign-out", { method: "POST", headers: authHeaders() });
    setStatus($("account-status"), "Signed out.", "ok");
  } catch (error) {
    setStatus($("account-status"), `Signed out here, but the server said: ${describe(error)}`, "error");
  }
  forgetToken();
  renderAccount();
  newConversation();
}

async function changeLevel(event) {
  const level = event.currentTarget.value;
  try {
    await request("/api/auth/profile/update", { method: "POST", json: { proficiency: level }, headers: authHeaders() });
    state.user.proficiency = level;
    setStatus($("account-status"), `Answers will now be written for ${LEVELS[level] || level} reader.`, "ok");
  } catch (error) {
    event.currentTarget.value = state.user.proficiency;
    setStatus($("account-status"), describe(error), "error");
  }
}

/** A 401 on a signed-in call: the session ended elsewhere (expired, signed out). */
function sessionEnded(error) {
  if (!(error instanceof ApiError) || error.status !== 401 || !state.user) return false;
  forgetToken();
  renderAccount();
  setStatus($("account-status"), "Your session has ended: sign in again.", "error");
  return true;
}

// ---- conversations ------------------------------------------------------------------------------

async function loadSessions() {
  if (!state.user) return;
  const status = $("sessions-status");
  try {
    const body = await request("/api/chat/sessions?limit=50", { headers: authHeaders() });
    $("session-list").replaceChildren(...body.sessions.map(sessionItem));
    setStatus(status, body.sessions.length ? "" : "No conversations yet: ask a question.");
  } catch (error) {
    if (!sessionEnded(error)) setStatus(status, describe(error), "error");
  }
}

function sessionItem(session) {
  const current = session.id === state.sessionId;
  const open = el(
    "button",
    { type: "button", class: "session-open", "aria-current": current ? "true" : null },
    el("span", { class: "session-title" }, session.title),
    el("span", { class: "hint" }, `${session.message_count} messages · ${formatTime(session.updated_at)}`),
  );
  open.addEventListener("click", () => openSession(session.id));
  const remove = confirmButton("Delete", () => deleteSession(session.id), { armedLabel: "Confirm delete" });
  return el("li", { "data-session-id": session.id }, open, remove);
}

async function openSession(id) {
  if (state.busy) return;
  const status = $("sessions-status");
  try {
    const body = await request(`/api/chat/sessions/${encodeURIComponent(id)}`, { headers: authHeaders() });
    state.sessionId = body.session.id;
    $("messages").replaceChildren();
    for (const message of body.messages) {
      if (message.role === "user") addQuestion(message.content);
      else {
        const view = addAnswer();
        view.setCitations(message.citations || []);
        view.finish(message.content);
      }
    }
    showConversation(body.session.title);
    setStatus(status, "");
    await loadSessions();
    $("question").focus();
  } catch (error) {
    if (sessionEnded(error)) return;
    setStatus(status, error instanceof ApiError && error.status === 404 ? "That conversation no longer exists." : describe(error), "error");
    await loadSessions();
  }
}

async function deleteSession(id) {
  const status = $("sessions-status");
  try {
    await request(`/api/chat/sessions/${encodeURIComponent(id)}`, { method: "DELETE", headers: authHeaders() });
    if (state.sessionId === id) newConversation();
    await loadSessions();
    setStatus(status, "Conversation deleted.", "ok");
  } catch (error) {
    if (!sessionEnded(error)) setStatus(status, describe(error), "error");
  }
}

function showConversation(title) {
  $("conversation").textContent = `Conversation “${title}”: follow-up questions continue it.`;
}

function newConversation() {
  if (state.busy) state.busy.abort();
  state.sessionId = null;
  $("messages").replaceChildren();
  $("conversation").textContent = "A new conversation.";
  for (const item of document.querySelectorAll("#session-list [aria-current]")) item.removeAttribute("aria-current");
}

// ---- answers ------------------------------------------------------------------------------------

function addQuestion(text) {
  $("messages").append(el("li", { class: "message question" }, el("p", { class: "who" }, "You"), el("p", { class: "text" }, text)));
}

function citationLabel(citation) {
  const title = citation.title || citation.source || "Source";
  return citation.heading && citation.heading !== title ? `${title} › ${citation.heading}` : title;
}

function citationItem(citation, number, prefix) {
  const href = safeUrl(citation.url);
  const label = citationLabel(citation);
  const link = href
    ? el("a", { href, target: "_blank", rel: "noopener noreferrer", class: "cite-link" }, label)
    : el("span", { class: "cite-link" }, label);
  return el(
    "li",
    { id: `${prefix}-c${number}`, "data-source": citation.source },
    link,
    " ",
    el("span", { class: "source" }, citation.source),
    citation.snippet ? el("details", {}, el("summary", {}, "Passage"), el("p", { class: "snippet" }, citation.snippet)) : null,
  );
}

/** The answer's text as paragraphs and code blocks, `[n]` markers linked to source n. Text only. */
function answerNodes(text, count, prefix) {
  const nodes = [];
  const fence = /```[^\n`]*\n([\s\S]*?)(?:```|$)/g;
  let last = 0;
  let match;
  while ((match = fence.exec(text))) {
    nodes.push(...paragraphs(text.slice(last, match.index), count, prefix));
    nodes.push(el("pre", {}, el("code", {}, match[1].replace(/\n$/, ""))));
    last = fence.lastIndex;
  }
  nodes.push(...paragraphs(text.slice(last), count, prefix));
  return nodes;
}

function paragraphs(text, count, prefix) {
  return text
    .split(/\n{2,}/)
    .map((part) => part.trim())
    .filter(Boolean)
    .map((part) => el("p", {}, ...markers(part, count, prefix)));
}

function markers(text, count, prefix) {
  const parts = [];
  const marker = /\[(\d{1,2})\]/g;
  let last = 0;
  let match;
  while ((match = marker.exec(text))) {
    const number = Number(match[1]);
    if (number < 1 || number > count) continue;
    parts.push(text.slice(last, match.index));
    parts.push(el("a", { href: `#${prefix}-c${number}`, class: "marker", title: `Source ${number}` }, `[${number}]`));
    last = marker.lastIndex;
  }
  parts.push(text.slice(last));
  return parts;
}

const MODES = {
  generative: ["Generative", "Written by the language model from the cited passages."],
  extractive: [
    "Extractive",
    "Quoted from the book: the language model is offline or unavailable, so Lectern shows the best passages.",
  ],
};

function addAnswer() {
  state.turns += 1;
  const prefix = `t${state.turns}`;
  const mode = el("span", { class: "mode", hidden: true });
  const search = el("p", { class: "hint search", hidden: true });
  const body = el("div", { class: "answer-text" }, el("p", { class: "hint" }, "Searching the book…"));
  const notice = el("p", { class: "notice", hidden: true });
  const heading = el("h3", { class: "sources-title", hidden: true }, "Sources");
  const list = el("ol", { class: "citations" });
  const item = el(
    "li",
    { class: "message answer", "data-state": "waiting", id: prefix },
    el("p", { class: "who" }, "Lectern ", mode),
    search,
    body,
    notice,
    heading,
    list,
  );
  $("messages").append(item);
  let citations = [];
  let live = null;

  const view = {
    item,
    setMode(value) {
      const [label, explanation] = MODES[value] || [String(value), ""];
      mode.textContent = label;
      mode.title = explanation;
      mode.dataset.mode = value;
      mode.hidden = false;
      if (value === "extractive") view.note(explanation, "info");
    },
    setSearch(query) {
      search.textContent = `Searched the book for: ${query}`;
      search.hidden = false;
    },
    setCitations(items) {
      citations = Array.isArray(items) ? items : [];
      list.replaceChildren(...citations.map((c, i) => citationItem(c, i + 1, prefix)));
      heading.hidden = citations.length === 0;
    },
    append(text) {
      if (live === null) {
        live = document.createTextNode("");
        body.replaceChildren(el("p", { class: "streaming" }, live));
        item.dataset.state = "streaming";
      }
      live.appendData(text);
    },
    finish(answer) {
      body.replaceChildren(...answerNodes(answer, citations.length, prefix));
      if (citations.length === 0) {
        view.note("The book does not cover this question, so no sources are cited.", "not-covered");
      }
      item.dataset.state = "done";
    },
    note(text, kind) {
      notice.textContent = text;
      notice.dataset.kind = kind;
      notice.hidden = false;
    },
    fail(text) {
      if (live === null) body.replaceChildren();
      view.note(text, "error");
      notice.setAttribute("role", "alert");
      item.dataset.state = "error";
    },
  };
  return view;
}

function setBusy(busy) {
  $("ask").disabled = busy || Date.now() < state.waitUntil;
  $("stop").hidden = !busy;
}

/** After a 429: the Ask button waits out Retry-After, with a countdown. */
function holdAsking(seconds) {
  state.waitUntil = Date.now() + seconds * 1000;
  clearInterval(state.waitTimer);
  const tick = () => {
    const left = (state.waitUntil - Date.now()) / 1000;
    if (left <= 0) {
      clearInterval(state.waitTimer);
      setStatus($("ask-status"), "");
      setBusy(Boolean(state.busy));
      return;
    }
    setStatus($("ask-status"), `Rate limited: you can ask again in ${formatWait(left)}.`, "error");
    $("ask").disabled = true;
  };
  tick();
  state.waitTimer = setInterval(tick, 1000);
}

async function ask(event) {
  event.preventDefault();
  if (state.busy) return;
  const status = $("ask-status");
  const field = $("question");
  const query = field.value.trim();
  if (!query) {
    setStatus(status, "Type a question first.", "error");
    field.focus();
    return;
  }
  if (Date.now() < state.waitUntil) return;
  setStatus(status, "");
  addQuestion(query);
  field.value = "";
  const view = addAnswer();
  const controller = new AbortController();
  state.busy = controller;
  setBusy(true);
  let answer = "";
  let ended = false;
  try {
    const response = await request("/api/chat/stream", {
      method: "POST",
      json: { query, session_id: state.user ? state.sessionId : null },
      headers: { ...authHeaders(), Accept: "text/event-stream" },
      signal: controller.signal,
      raw: true,
    });
    for await (const { event: name, data } of sseEvents(response)) {
      let payload;
      try {
        payload = JSON.parse(data);
      } catch {
        continue;
      }
      if (name === "meta") {
        view.setMode(payload.mode);
        if (payload.search_query) view.setSearch(payload.search_query);
        if (payload.session_id && state.user) state.sessionId = payload.session_id;
      } else if (name === "citations") {
        view.setCitations(payload);
      } else if (name === "delta") {
        const text = typeof payload.text === "string" ? payload.text : "";
        answer += text;
        view.append(text);
      } else if (name === "done") {
        ended = true;
        view.finish(answer);
      } else if (name === "error") {
        ended = true;
        view.fail(describeStreamError(payload));
      }
    }
    if (!ended) view.fail("The answer was cut off before it finished. Please ask again.");
  } catch (error) {
    if (error && error.name === "AbortError") {
      view.fail("Stopped.");
    } else {
      view.fail(describe(error));
      if (error instanceof ApiError && error.status === 429) holdAsking(error.retryAfter || 60);
      if (error instanceof ApiError && error.status === 404 && state.sessionId) {
        state.sessionId = null;
        setStatus(status, "That conversation no longer exists: your next question starts a new one.", "error");
      }
      sessionEnded(error);
    }
  } finally {
    state.busy = null;
    setBusy(false);
  }
  if (state.user) {
    await loadSessions();
    const title = document.querySelector(`#session-list [data-session-id="${CSS.escape(state.sessionId || "")}"] .session-title`);
    if (title) showConversation(title.textContent);
  }
}

// ---- wiring -------------------------------------------------------------------------------------

$("show-sign-in").addEventListener("click", () => showTab("sign-in"));
$("show-sign-up").addEventListener("click", () => showTab("sign-up"));
$("sign-in-form").addEventListener("submit", signIn);
$("sign-up-form").addEventListener("submit", signUp);
$("sign-out").addEventListener("click", signOut);
$("level").addEventListener("change", changeLevel);
$("new-chat").addEventListener("click", () => {
  newConversation();
  $("question").focus();
});
$("ask-form").addEventListener("submit", ask);
$("stop").addEventListener("click", () => state.busy && state.busy.abort());
$("question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    $("ask-form").requestSubmit();
  }
});
loadAccount();
document.documentElement.dataset.ready = "1";
