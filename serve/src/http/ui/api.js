// The page's calls to the ldct API (relative URLs: the page lives at /ui/), the bearer
// token (kept in sessionStorage for this tab only) and errors in words.

const TOKEN_KEY = "ldct.apiToken";
const API = new URL("../", document.baseURI);

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(t) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** An answer of the API that is not a success: status, code, message, Retry-After. */
export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

async function request(path, init = {}) {
  const headers = new Headers(init.headers || {});
  const token = getToken();
  if (token) headers.set("Authorization", `Bearer ${token}`);
  let res;
  try {
    res = await fetch(new URL(path, API), { ...init, headers, cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, "network", `the server cannot be reached (${e.message})`, null);
  }
  if (res.ok) return res;
  let code = `http_${res.status}`;
  let message = res.statusText || `HTTP ${res.status}`;
  try {
    const body = await res.json();
    if (body && body.error && typeof body.error === "object") {
      code = body.error.code || code;
      message = body.error.message || message;
    } else if (body && typeof body.error === "string") {
      message = body.error;
    }
  } catch {
    // Not JSON (a proxy's page): keep the status line.
  }
  const ra = parseFloat(res.headers.get("Retry-After") || "");
  throw new ApiError(res.status, code, message, Number.isFinite(ra) ? ra : null);
}

/** GET /v1/models: {models: [...], device, strength}. */
export async function listModels() {
  return (await request("v1/models")).json();
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** How many times a request refused with 503 (queue full) is sent again. */
export const BUSY_RETRIES = 5;

/**
 * POST /v1/denoise: the body as DICOM or .npy; retries a 503 after its Retry-After up to
 * BUSY_RETRIES times (onBusy(seconds, attempt) is told). Resolves to {bytes, noiseIn,
 * noiseOut, model, version, device, strength, ms}.
 */
export async function denoise(body, kind, model, strength, onBusy = () => {}) {
  const q = new URLSearchParams({ model, strength: String(strength) });
  const type = kind === "npy" ? "application/x-npy" : "application/dicom";
  for (let attempt = 1; ; attempt++) {
    const t0 = performance.now();
    try {
      const res = await request(`v1/denoise?${q}`, {
        method: "POST",
        headers: { "Content-Type": type },
        body,
      });
      const bytes = new Uint8Array(await res.arrayBuffer());
      const num = (h) => {
        const v = parseFloat(res.headers.get(h) || "");
        return Number.isFinite(v) ? v : null;
      };
      return {
        bytes,
        noiseIn: num("x-ldct-noise-in-hu"),
        noiseOut: num("x-ldct-noise-out-hu"),
        model: res.headers.get("x-ldct-model"),
        version: res.headers.get("x-ldct-model-version"),
        device: res.headers.get("x-ldct-device"),
        strength: num("x-ldct-strength"),
        ms: performance.now() - t0,
      };
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 503 || e.code === "shutting_down" || attempt > BUSY_RETRIES) {
        if (e instanceof ApiError && e.status === 503) e.attempts = attempt;
        throw e;
      }
      const wait = Math.min(Math.max(e.retryAfter ?? 1, 0.2), 30);
      onBusy(wait, attempt);
      await sleep(wait * 1000);
    }
  }
}

/** POST /v1/evaluate with parts input and reference: the quality report (JSON). */
export async function evaluate(input, inputKind, reference, referenceKind, model, strength) {
  const form = new FormData();
  const type = (k) => (k === "npy" ? "application/x-npy" : "application/dicom");
  form.append("input", new Blob([input], { type: type(inputKind) }), "input");
  form.append("reference", new Blob([reference], { type: type(referenceKind) }), "reference");
  const q = new URLSearchParams({ model, strength: String(strength) });
  return (await request(`v1/evaluate?${q}`, { method: "POST", body: form })).json();
}

/** What went wrong, in words for the person at the page (not a stack trace). */
export function describe(e) {
  if (!(e instanceof ApiError)) return `Unexpected error in the page: ${e.message || e}`;
  const m = e.message;
  switch (e.code) {
    case "unauthorized":
      return "Wrong or missing access token: the server refused it. Enter the token the server was started with (--api-token).";
    case "invalid_dicom":
      return `Not a DICOM file, or a damaged one: ${m}`;
    case "invalid_npy":
      return `Not a readable .npy array: ${m}`;
    case "unsupported_image":
      if (/transfer syntax/i.test(m)) {
        return `Unsupported transfer syntax (compression): ${m}. Export the series uncompressed, or as JPEG lossless / JPEG 2000 / RLE.`;
      }
      if (/not a CT image/i.test(m)) return `Not a CT image: ${m}. ldct denoises CT slices only.`;
      return `This image cannot be denoised: ${m}`;
    case "unsupported_dtype":
    case "unsupported_shape":
    case "non_finite":
      return `This array cannot be denoised: ${m}`;
    case "queue_full":
      return `Server busy: its queue stayed full after ${e.attempts ?? 1} tries. Try again in a moment.`;
    case "shutting_down":
      return "The server is shutting down. Try again when it is back.";
    case "timeout":
      return `The server took too long: ${m}`;
    case "payload_too_large":
      return `File too large for this server: ${m}`;
    case "unknown_model":
      return `Unknown model: ${m}. Reload the page to see the models the server has now.`;
    case "network":
      return `No answer from the server: ${m}`;
    default:
      return `The server answered ${e.status} (${e.code}): ${m}`;
  }
}
