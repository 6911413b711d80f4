// Drives a running Lectern API with the official better-auth client (npm better-auth 1.4.x):
//   signUp.email -> getSession -> signOut -> getSession (signed out) -> signIn.email (wrong password)
//   -> signIn.email -> getSession
// Usage: node better_auth_flow.mjs http://127.0.0.1:PORT [BETTER_AUTH_SECRET]
// With the secret, the cookie the API set is also compared with the one better-call (better-auth's
// server side) would sign for the same token, proving both sides read each other's cookies.
// Prints one JSON line per step ({"step", "ok", ...}) and exits 1 when any step fails.
// Node's fetch keeps no cookies, so the client gets a tiny cookie jar through fetchOptions.customFetchImpl
// (the browser does this itself with credentials: "include").
import { createAuthClient } from "better-auth/client";
import { serializeSignedCookie } from "better-call";

const baseURL = process.argv[2];
const secret = process.argv[3];
if (!baseURL) {
  console.error("usage: node better_auth_flow.mjs <baseURL>");
  process.exit(2);
}

const jar = new Map();

function storeSetCookies(response) {
  for (const line of response.headers.getSetCookie()) {
    const [pair, ...attributes] = line.split(";");
    const eq = pair.indexOf("=");
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    const expired =
      value === "" || value === '""' || attributes.some((a) => /^\s*max-age\s*=\s*0\s*$/i.test(a));
    if (expired) jar.delete(name);
    else jar.set(name, value);
  }
}

async function cookieFetch(input, init = {}) {
  const headers = new Headers(init.headers ?? {});
  if (jar.size > 0) {
    headers.set("cookie", [...jar].map(([k, v]) => `${k}=${v}`).join("; "));
  }
  const response = await fetch(input, { ...init, headers });
  storeSetCookies(response);
  return response;
}

const client = createAuthClient({ baseURL, fetchOptions: { customFetchImpl: cookieFetch } });

const email = `reader-${Date.now()}-${Math.random().toString(16).slice(2, 8)}@example.com`;
const password = "correct horse battery staple";
let failed = false;

function report(step, ok, details = {}) {
  if (!ok) failed = true;
  console.log(JSON.stringify({ step, ok, ...details }));
}

function summary(result) {
  const { data, error } = result;
  return {
    status: error?.status ?? 200,
    code: error?.code ?? null,
    userEmail: data?.user?.email ?? null,
    hasToken: typeof data?.token === "string" && data.token.length >= 32,
    sessionUserId: data?.session?.userId ?? null,
    cookieNames: [...jar.keys()],
  };
}

try {
  const signUp = await client.signUp.email({ email, password, name: "Node Reader", proficiency: "beginner" });
  const s1 = summary(signUp);
  report("signUp.email", !signUp.error && s1.userEmail === email && s1.hasToken && jar.size === 1, {
    ...s1,
    proficiency: signUp.data?.user?.proficiency ?? null,
  });

  const session1 = await client.getSession();
  const s2 = summary(session1);
  report(
    "getSession",
    !session1.error && s2.userEmail === email && s2.sessionUserId === signUp.data?.user?.id,
    s2,
  );

  const signOut = await client.signOut();
  report("signOut", !signOut.error && signOut.data?.success === true && jar.size === 0, {
    status: signOut.error?.status ?? 200,
    cookieNames: [...jar.keys()],
  });

  const session2 = await client.getSession();
  report("getSession (signed out)", !session2.error && session2.data?.user == null, summary(session2));

  const wrong = await client.signIn.email({ email, password: "not the password" });
  report(
    "signIn.email (wrong password)",
    wrong.error?.status === 401 && wrong.error?.code === "INVALID_EMAIL_OR_PASSWORD" && typeof wrong.error?.message === "string",
    summary(wrong),
  );

  const signIn = await client.signIn.email({ email, password });
  const s3 = summary(signIn);
  report(
    "signIn.email",
    !signIn.error && s3.userEmail === email && s3.hasToken && signIn.data?.redirect === false && jar.size === 1,
    s3,
  );

  if (secret) {
    const expected = await serializeSignedCookie("better-auth.session_token", signIn.data.token, secret);
    const actual = `better-auth.session_token=${jar.get("better-auth.session_token")}`;
    report("cookie signed like better-call", actual === expected, { matches: actual === expected });
  }

  const session3 = await client.getSession();
  const s4 = summary(session3);
  report("getSession (signed in again)", !session3.error && s4.userEmail === email, {
    ...s4,
    proficiency: session3.data?.user?.proficiency ?? null,
  });
} catch (error) {
  report("exception", false, { error: String(error?.stack ?? error) });
}

process.exit(failed ? 1 : 0);
