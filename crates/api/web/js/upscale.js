// Upscaling from the gallery's image dialog: pick an upscaler (the data
// dir's upscalers/ files and the built-in one, from /api/upscalers) and a
// factor, then POST /api/upscale and follow the job (its steps are tiles)
// until the larger picture is in the gallery; "Open" shows it.

import { call } from './api.js';

const el = (id) => document.getElementById(id);
let loaded = false;
let following = 0; // a newer request stops an older one's polling

async function loadUpscalers() {
  if (loaded) return;
  const select = el('upscale-model');
  try {
    const data = await call('GET', '/api/upscalers');
    select.replaceChildren();
    for (const u of data.upscalers) {
      const opt = document.createElement('option');
      opt.value = u.name;
      opt.disabled = !u.runnable;
      opt.textContent = u.runnable ? `${u.name} (×${u.scale}${u.builtin ? ', built in' : ''})` : `${u.name} (cannot run: ${u.error})`;
      if (u.default) opt.selected = true;
      select.append(opt);
    }
    loaded = true;
  } catch (e) {
    el('upscale-status').textContent = 'Could not list the upscalers: ' + e.message;
  }
}

/// Prepares the controls for the image the dialog shows.
export function showFor(img, { opened }) {
  el('upscale-status').textContent = '';
  el('upscale-open').hidden = true;
  el('upscale-go').disabled = false;
  el('upscale-go').onclick = () => start(img, opened);
  loadUpscalers();
}

async function start(img, opened) {
  const mine = ++following;
  const status = el('upscale-status');
  el('upscale-go').disabled = true;
  el('upscale-open').hidden = true;
  let job;
  try {
    job = await call('POST', '/api/upscale', {
      image_id: img.id,
      upscaler: el('upscale-model').value || undefined,
      scale: Number(el('upscale-factor').value),
    });
  } catch (e) {
    status.textContent = 'Could not upscale: ' + e.message;
    el('upscale-go').disabled = false;
    return;
  }
  status.textContent = `Upscaling to ${job.width}×${job.height}…`;
  for (;;) {
    await new Promise((r) => setTimeout(r, 400));
    if (mine !== following) return;
    let s;
    try {
      s = await call('GET', `/api/status/${job.job_id}`);
    } catch (e) {
      status.textContent = 'Lost the upscaling job: ' + e.message;
      break;
    }
    if (s.status === 'completed') {
      const out = s.images[0];
      status.textContent = `Upscaled to ${job.width}×${job.height}; it is in the gallery.`;
      el('upscale-open').hidden = false;
      el('upscale-open').onclick = () => opened(out.id);
      break;
    }
    if (s.status === 'failed' || s.status === 'cancelled') {
      status.textContent = `Upscaling ${s.status}: ${s.error || s.message}`;
      break;
    }
    const p = s.progress || {};
    status.textContent = p.total_steps ? `Upscaling: tile ${p.step} of ${p.total_steps}` : 'Upscaling: waiting in the queue';
  }
  el('upscale-go').disabled = false;
}
