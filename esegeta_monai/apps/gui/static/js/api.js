// The JSON API, as the pages use it: every request carries the token (the cookie is set by the
// first page; the header is sent too), errors become ApiError with the server's message.

const token = document.querySelector('meta[name="esegeta-token"]')?.content || '';

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(extra = {}) {
  return token ? { Authorization: `Bearer ${token}`, ...extra } : extra;
}

async function reply(response, what) {
  const type = response.headers.get('content-type') || '';
  const body = type.includes('json') ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    const message = (body && body.error) || `${what}: HTTP ${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message);
  }
  return body;
}

/** GET a JSON resource, e.g. getJson('/api/methods'). */
export async function getJson(path) {
  return reply(await fetch(path, { headers: headers(), credentials: 'same-origin' }), path);
}

/** Send JSON (POST, DELETE...) and read the JSON reply. */
export async function sendJson(method, path, body) {
  const init = { method, headers: headers(), credentials: 'same-origin' };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  return reply(await fetch(path, init), `${method} ${path}`);
}

/** Upload a File as the raw request body: POST /api/uploads?name=... */
export async function uploadFile(file) {
  const path = `/api/uploads?name=${encodeURIComponent(file.name)}`;
  const response = await fetch(path, {
    method: 'POST',
    headers: headers({ 'Content-Type': 'application/octet-stream' }),
    credentials: 'same-origin',
    body: file,
  });
  return reply(response, `upload of ${file.name}`);
}

/** The URL of a file id ("<root>:<relative path>"): its slashes kept, so that relative links
 * inside served pages (the HTML report) resolve to their neighbours. */
export function fileUrl(id) {
  return '/api/file/' + id.split('/').map(encodeURIComponent).join('/');
}

/** The last part of a file id or path: "0:a/b/scan.nii.gz" → "scan.nii.gz". */
export function baseName(idOrPath) {
  const text = String(idOrPath || '');
  const tail = text.slice(text.indexOf(':') + 1);
  return tail.split('/').filter(Boolean).pop() || text;
}
