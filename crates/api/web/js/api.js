// Talking to the server: JSON calls with the optional API key, server-sent
// events read over fetch (EventSource cannot send a key), and images loaded
// as blobs when a key is needed to read them.

const KEY_STORAGE = 'cyberimage-api-key';

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || '';
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, 'X-API-Key': key } : extra;
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Asks for a key once at a time; resolves when the user saved one.
let keyPrompt = null;
function askForKey() {
  if (!keyPrompt) {
    keyPrompt = new Promise((resolve) => {
      const dialog = document.getElementById('key-dialog');
      const input = document.getElementById('key-input');
      dialog.addEventListener('close', () => {
        if (input.value) localStorage.setItem(KEY_STORAGE, input.value.trim());
        keyPrompt = null;
        resolve();
      }, { once: true });
      input.value = '';
      dialog.showModal();
    });
  }
  return keyPrompt;
}

export async function call(method, path, body) {
  for (let attempt = 0; ; attempt++) {
    const init = { method, headers: headers(body ? { 'Content-Type': 'application/json' } : {}) };
    if (body) init.body = JSON.stringify(body);
    const resp = await fetch(path, init);
    if (resp.status === 401 && attempt < 3) {
      await askForKey();
      continue;
    }
    const data = resp.status === 204 ? null : await resp.json().catch(() => null);
    if (!resp.ok) {
      const err = data && data.error ? data.error : { code: 'http_' + resp.status, message: resp.statusText };
      throw new ApiError(resp.status, err.code, err.message);
    }
    return data;
  }
}

// Reads `path` as a server-sent event stream, calling onEvent(name, data)
// per event, until the stream ends or `signal` aborts. Reconnects after a
// dropped connection unless the stream ended on its own.
export async function streamEvents(path, onEvent, signal) {
  while (!signal.aborted) {
    let resp;
    try {
      resp = await fetch(path, { headers: headers({ Accept: 'text/event-stream' }), signal });
    } catch (e) {
      if (signal.aborted) return;
      await new Promise((r) => setTimeout(r, 1000));
      continue;
    }
    if (resp.status === 401) { await askForKey(); continue; }
    if (!resp.ok || !resp.body) return;
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value.replace(/\r\n/g, '\n');
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let name = 'message';
          const data = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) name = line.slice(6).trim();
            else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
          }
          if (data.length) onEvent(name, JSON.parse(data.join('\n')));
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

// Sets an <img> source; with a key configured the image is fetched with it
// (the server may keep images private) and shown from a blob URL.
export async function setImage(img, url) {
  if (!apiKey()) {
    img.src = url;
    return;
  }
  const resp = await fetch(url, { headers: headers() });
  if (resp.ok) img.src = URL.createObjectURL(await resp.blob());
}

// Saves a download: a plain link (the browser streams it to disk) without
// a key; with one, fetched with the key and saved from a blob.
export async function saveDownload(url, filename) {
  const a = document.createElement('a');
  a.download = filename;
  if (!apiKey()) {
    a.href = url;
  } else {
    const resp = await fetch(url, { headers: headers() });
    if (!resp.ok) {
      const data = await resp.json().catch(() => null);
      throw new ApiError(resp.status, data?.error?.code || 'http_' + resp.status, data?.error?.message || resp.statusText);
    }
    a.href = URL.createObjectURL(await resp.blob());
  }
  document.body.append(a);
  a.click();
  a.remove();
}
