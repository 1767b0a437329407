// The generate form's hires fix (AUTOMATIC1111's name for it): the picture
// is made at the size set above, enlarged by a factor with an upscaler
// (Lanczos, or a network from GET /api/upscalers), then redrawn at the
// larger size from a strength. Text-to-image only: with a picture to
// start from as well, the form says so instead of sending the job.

import { call } from './api.js';

const el = (id) => document.getElementById(id);

export async function initHires() {
  const toggle = el('hires');
  const sync = () => { el('hires-options').hidden = !toggle.checked; };
  toggle.addEventListener('change', sync);
  sync();
  el('hires-strength').addEventListener('input', () => {
    el('hires-strength-value').textContent = el('hires-strength').value;
  });
  try {
    const listed = (await call('GET', '/api/upscalers')).upscalers;
    for (const u of listed.filter((u) => u.runnable)) {
      const opt = document.createElement('option');
      opt.value = u.name;
      opt.textContent = `${u.name} (×${u.scale})`;
      el('hires-upscaler').append(opt);
    }
  } catch (e) {
    // Lanczos needs no network; the list is a nicety.
  }
}

// The request's `hires` object, or null when the box is unticked.
export function hiresSettings() {
  if (!el('hires').checked) return null;
  const steps = el('hires-steps').value.trim();
  return {
    scale: Number(el('hires-scale').value) || 2,
    strength: Number(el('hires-strength').value),
    steps: steps === '' ? null : Number(steps),
    upscaler: el('hires-upscaler').value,
  };
}
