// Prompt enrichment on the generate page: a style menu and a ✨ button that
// sends the prompt to POST /api/enrich and puts the richer one in its
// place, keeping the original for "Restore original". Without a chat
// endpoint configured the button stays disabled and says how to set one.

import { call } from './api.js';

const el = (id) => document.getElementById(id);
let original = null;

export async function initEnrich({ currentModel }) {
  const button = el('enrich');
  const style = el('enrich-style');
  const note = el('enrich-note');
  button.addEventListener('click', () => enrich(currentModel()));
  el('enrich-restore').addEventListener('click', restore);
  // Editing the prompt by hand makes the kept original stale.
  el('prompt').addEventListener('input', () => { if (original !== null) forget(); });
  let info;
  try {
    info = await call('GET', '/api/enrich/styles');
  } catch (e) {
    button.disabled = true;
    note.textContent = 'Prompt enrichment is unavailable: ' + e.message;
    note.hidden = false;
    return;
  }
  style.textContent = '';
  for (const s of info.styles) {
    const opt = document.createElement('option');
    opt.value = s.name;
    opt.textContent = s.name;
    opt.title = s.description;
    style.append(opt);
  }
  style.value = localStorage.getItem('cyberimage-enrich-style') || info.default;
  if (!style.value) style.value = info.default;
  style.addEventListener('change', () => localStorage.setItem('cyberimage-enrich-style', style.value));
  if (info.configured) {
    button.disabled = false;
    button.title = `Rewrite the prompt in the chosen style (${info.model})`;
  } else {
    button.disabled = true;
    button.title = info.reason || 'Prompt enrichment is not configured';
  }
}

async function enrich(model) {
  const prompt = el('prompt').value.trim();
  const note = el('enrich-note');
  if (!prompt) { el('prompt').focus(); return; }
  const button = el('enrich');
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  note.hidden = true;
  try {
    const out = await call('POST', '/api/enrich', { prompt, style: el('enrich-style').value, model: model || null });
    if (original === null) original = prompt;
    el('prompt').value = out.prompt;
    el('enrich-original').textContent = 'Original: ' + original;
    el('enrich-original').hidden = false;
    el('enrich-restore').hidden = false;
  } catch (e) {
    note.textContent = e.message;
    note.className = 'error';
    note.hidden = false;
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
  }
}

function restore() {
  if (original !== null) el('prompt').value = original;
  forget();
  el('prompt').focus();
}

function forget() {
  original = null;
  el('enrich-original').hidden = true;
  el('enrich-restore').hidden = true;
}
