// The generate page: the form, model defaults, seed reuse, and one card per
// submitted job with live progress (stage, step bar, ETA) from the event
// stream, then the images.

import { call, setImage } from './api.js';
import { currentInput, initInputPanel, useImage } from './input.js';
import { initEnrich } from './enrich.js';
import { initRecent, refreshRecent } from './recent.js';
import { chosenLoras, initLoras } from './loras.js';
import { hiresSettings, initHires } from './hires.js';

let models = { models: {}, default: '' };
let lastSeed = null;
const cards = new Map(); // job id -> card state
const el = (id) => document.getElementById(id);

export function init({ onJobEvent, onPreview }) {
  el('generate-form').addEventListener('submit', (e) => { e.preventDefault(); submit(); });
  el('prompt').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); submit(); }
  });
  el('model').addEventListener('change', () => { applyModelDefaults(); showAvailability(); });
  el('size-preset').addEventListener('change', () => applyPreset());
  for (const id of ['width', 'height']) {
    el(id).addEventListener('input', () => { el('size-preset').value = 'custom'; });
  }
  el('keep-prompt').addEventListener('change', saveForm);
  el('reuse-seed').addEventListener('click', () => { if (lastSeed !== null) el('seed').value = lastSeed; });
  onJobEvent((ev) => { const card = cards.get(ev.job_id); if (card) update(card, ev); });
  onPreview((ev) => { const card = cards.get(ev.job_id); if (card) showPreview(card, ev); });
  initInputPanel();
  initEnrich({ currentModel: () => el('model').value });
  initRecent({ remix });
  initLoras();
  initHires();
  loadModels();
}

export function enter() {
  const pending = sessionStorage.getItem('cyberimage-remix');
  if (pending) {
    sessionStorage.removeItem('cyberimage-remix');
    remix(JSON.parse(pending));
  }
  const input = sessionStorage.getItem('cyberimage-input');
  if (input) {
    sessionStorage.removeItem('cyberimage-input');
    useImage(JSON.parse(input));
  }
  el('prompt').focus();
  refreshRecent();
}

async function loadModels() {
  try {
    models = await call('GET', '/api/models');
  } catch (e) {
    showError('Could not load the models: ' + e.message);
    return;
  }
  const select = el('model');
  select.textContent = '';
  for (const [key, m] of Object.entries(models.models)) {
    const opt = document.createElement('option');
    opt.value = key;
    // Models whose weights are not on this machine are marked, with the
    // reason in the tooltip and under the picker when chosen.
    opt.textContent = m.available === false ? `${key} (${m.family}) · not on this machine` : `${key} (${m.family})`;
    opt.title = m.available === false && m.unavailable_reason ? m.unavailable_reason : m.description;
    select.append(opt);
  }
  select.value = models.default;
  applyModelDefaults();
  restoreForm();
  showAvailability();
  const remixPending = select.dataset.pending;
  if (remixPending) { delete select.dataset.pending; remix(JSON.parse(remixPending)); }
}

// Says, under the picker, why the chosen model cannot run here.
function showAvailability() {
  const m = models.models[el('model').value];
  const note = el('model-unavailable');
  const missing = m && m.available === false;
  note.textContent = missing ? `This model cannot run here: ${m.unavailable_reason || 'its weights are missing'}` : '';
  note.hidden = !missing;
}

function applyModelDefaults() {
  const m = models.models[el('model').value];
  if (!m || !m.defaults) return;
  el('steps').value = m.defaults.steps;
  el('guidance').value = m.defaults.guidance_scale;
  el('size-preset').value = 'model';
  el('width').value = m.defaults.width;
  el('height').value = m.defaults.height;
  const step = m.family === 'flux-dev' || m.family === 'flux-schnell' || m.family === 'sd3' ? 16 : 8;
  el('width').step = step;
  el('height').step = step;
  applyModelRules(m);
}

// What the model allows: its step range or fixed steps (the field locked),
// and no negative prompt for families that ignore it.
function applyModelRules(m) {
  const steps = el('steps');
  const [min, max] = m.steps_range || [1, 150];
  steps.min = min;
  steps.max = max;
  steps.disabled = Boolean(m.fixed_steps);
  if (m.fixed_steps) steps.value = m.fixed_steps;
  steps.title = m.fixed_steps ? `This model always runs ${m.fixed_steps} steps` : `${min}–${max} steps`;
  const negative = m.negative_prompt !== false;
  el('negative-wrap').hidden = !negative;
  el('negative-hint').hidden = negative;
}

// The last model and settings, kept in this browser; the server's default
// model on a first visit, or when the remembered one is gone.
const FORM_KEY = 'cyberimage-form';
const REMEMBERED = ['steps', 'guidance', 'width', 'height', 'num_images', 'negative_prompt', 'size-preset'];

function saveForm() {
  const saved = { model: el('model').value, keepPrompt: el('keep-prompt').checked };
  for (const id of REMEMBERED) saved[id] = el(id).value;
  localStorage.setItem(FORM_KEY, JSON.stringify(saved));
}

function restoreForm() {
  let saved;
  try { saved = JSON.parse(localStorage.getItem(FORM_KEY) || 'null'); } catch (e) { saved = null; }
  if (!saved) return;
  if (typeof saved.keepPrompt === 'boolean') el('keep-prompt').checked = saved.keepPrompt;
  if (!saved.model || !models.models[saved.model]) return;
  el('model').value = saved.model;
  applyModelDefaults();
  for (const id of REMEMBERED) if (typeof saved[id] === 'string') el(id).value = saved[id];
  applyModelRules(models.models[saved.model]);
}

function applyPreset() {
  const v = el('size-preset').value;
  if (v === 'model') { applyModelDefaults(); return; }
  if (v === 'custom') return;
  const [w, h] = v.split('x');
  el('width').value = w;
  el('height').value = h;
}

// Fills the form from an image's metadata (the gallery's "remix").
export function remix(meta) {
  if (!Object.keys(models.models).length) { el('model').dataset.pending = JSON.stringify(meta); return; }
  if (models.models[meta.model_id]) { el('model').value = meta.model_id; applyModelDefaults(); }
  el('prompt').value = meta.prompt || '';
  el('negative_prompt').value = meta.negative_prompt || '';
  const s = meta.settings || {};
  if (s.num_inference_steps) el('steps').value = s.num_inference_steps;
  if (s.guidance_scale !== undefined) el('guidance').value = s.guidance_scale;
  if (s.width) { el('width').value = s.width; el('height').value = s.height; el('size-preset').value = 'custom'; }
  if (s.seed !== undefined) el('seed').value = s.seed;
}

function showError(message) {
  const p = el('generate-error');
  p.textContent = message;
  p.hidden = !message;
}

function numberOrNull(id) {
  const v = el(id).value.trim();
  return v === '' ? null : Number(v);
}

async function submit() {
  showError('');
  const prompt = el('prompt').value.trim();
  if (!prompt) { showError('Write a prompt first.'); el('prompt').focus(); return; }
  const body = {
    prompt,
    // A family without negative prompts gets none, even one typed earlier.
    negative_prompt: el('negative-wrap').hidden ? null : (el('negative_prompt').value.trim() || null),
    model: el('model').value || null,
    settings: {
      num_inference_steps: numberOrNull('steps'),
      guidance_scale: numberOrNull('guidance'),
      width: numberOrNull('width'),
      height: numberOrNull('height'),
      num_images: numberOrNull('num_images'),
      seed: numberOrNull('seed'),
    },
  };
  const input = currentInput();
  if (input) Object.assign(body.settings, input);
  // An extended canvas is the job's size.
  if (input && input.outpaint) { body.settings.width = null; body.settings.height = null; }
  const hires = hiresSettings();
  if (hires && input) {
    showError('The hires fix redraws a text-to-image picture larger: untick it, or remove the picture to start from.');
    return;
  }
  if (hires) body.settings.hires = hires;
  const loras = chosenLoras();
  if (loras.length) body.loras = loras;
  const button = el('generate-button');
  button.disabled = true;
  try {
    const job = await call('POST', '/api/generate', body);
    addCard(job.job_id, body);
    saveForm();
    if (!el('keep-prompt').checked) {
      el('prompt').value = '';
      el('prompt').dispatchEvent(new Event('input'));
    }
  } catch (e) {
    showError(e.message);
  } finally {
    button.disabled = false;
  }
}

function addCard(jobId, body) {
  const node = document.createElement('article');
  node.className = 'job';
  node.dataset.jobId = jobId;
  node.innerHTML = `<header><span class="model"></span><span class="status">queued</span></header>
    <p class="prompt"></p>
    <div class="progress" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="0"><div></div></div>
    <div class="stage">waiting in the queue…</div>
    <img class="preview" alt="live preview" hidden>
    <p class="error" hidden></p>
    <div class="results"></div>`;
  node.querySelector('.model').textContent = body.model || 'default model';
  node.querySelector('.prompt').textContent = body.prompt;
  el('jobs').prepend(node);
  const card = { id: jobId, node, stepTimes: [], done: false };
  cards.set(jobId, card);
  // The event stream may have missed the start; the status is the truth.
  call('GET', `/api/status/${jobId}`).then((s) => {
    update(card, { job_id: jobId, status: s.status, progress: s.progress, error: s.error });
  }).catch(() => {});
  return card;
}

function stageText(p) {
  if (p.loading_model) return 'loading model…';
  if (p.generating) return `step ${p.step} / ${p.total_steps}`;
  if (p.saving) return 'saving…';
  if (p.preparing) return 'preparing…';
  return '';
}

function update(card, ev) {
  if (card.done) return;
  const p = ev.progress || {};
  const bar = card.node.querySelector('.progress');
  const pct = p.total_steps ? Math.round((100 * p.step) / p.total_steps) : 0;
  bar.firstElementChild.style.width = pct + '%';
  bar.setAttribute('aria-valuenow', String(pct));
  card.node.querySelector('.status').textContent = ev.status;
  let text = stageText(p);
  if (p.generating && p.step > 0) {
    const now = performance.now();
    if (card.stepTimes.length === 0 || card.stepTimes[card.stepTimes.length - 1][0] !== p.step) card.stepTimes.push([p.step, now]);
    const first = card.stepTimes[0];
    if (card.stepTimes.length > 1 && p.step > first[0]) {
      const perStep = (now - first[1]) / (p.step - first[0]);
      text += ` · ETA ${Math.max(0, Math.round((perStep * (p.total_steps - p.step)) / 1000))} s`;
    }
  }
  card.node.querySelector('.stage').textContent = text;
  if (['completed', 'failed', 'cancelled'].includes(ev.status)) finish(card);
}

// The latest rough picture of a running job (latent-sized, scaled up by
// CSS); older ones that arrive late are dropped.
function showPreview(card, ev) {
  if (card.done || (card.previewStep || 0) >= ev.step) return;
  card.previewStep = ev.step;
  const img = card.node.querySelector('.preview');
  setImage(img, ev.preview_url).then(() => { if (!card.done) img.hidden = false; }).catch(() => {});
}

async function finish(card) {
  card.done = true;
  card.node.querySelector('.preview').hidden = true;
  let status;
  try {
    status = await call('GET', `/api/status/${card.id}`);
  } catch (e) {
    status = { status: 'failed', error: e.message };
  }
  card.node.classList.add(status.status);
  card.node.querySelector('.status').textContent = status.status;
  const stage = card.node.querySelector('.stage');
  if (status.status !== 'completed') {
    const err = card.node.querySelector('.error');
    err.textContent = status.error || status.status;
    err.hidden = false;
    stage.textContent = '';
    return;
  }
  card.node.querySelector('.progress').firstElementChild.style.width = '100%';
  stage.textContent = `done · ${status.images.length} image(s)`;
  refreshRecent();
  const results = card.node.querySelector('.results');
  for (const img of status.images) {
    const s = img.metadata.settings;
    const a = document.createElement('a');
    a.href = img.url;
    a.target = '_blank';
    a.rel = 'noopener';
    const pic = document.createElement('img');
    pic.alt = img.metadata.prompt;
    pic.width = s.width;
    pic.height = s.height;
    pic.style.setProperty('--ar', `${s.width} / ${s.height}`);
    pic.className = 'result-image';
    setImage(pic, img.url);
    a.append(pic);
    results.append(a);
    lastSeed = s.seed;
  }
  el('reuse-seed').disabled = lastSeed === null;
}
