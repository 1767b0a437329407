// The admin page: queue statistics (totals, the last 24 hours by model,
// mean run time), clear and retry-all actions, and a job table with retry,
// delete and details (with the job's images). Actions need a key with the
// admin scope when the server has keys; the server's refusal is shown.

import { call, setImage } from './api.js';

const el = (id) => document.getElementById(id);
let visible = false;
let timer = null;

export function init({ onJobEvent }) {
  onJobEvent(() => {
    if (!visible) return;
    clearTimeout(timer);
    timer = setTimeout(refresh, 300);
  });
  el('admin-status').addEventListener('change', refresh);
  for (const button of document.querySelectorAll('[data-admin-clear]')) {
    button.addEventListener('click', () => {
      const status = button.dataset.adminClear;
      if (!confirm(`Delete the records of ${status === 'all' ? 'every' : status} job? Running jobs and jobs whose images are in the gallery are kept.`)) return;
      act(() => call('POST', '/api/queue/clear', { status }),
        (r) => `Cleared ${r.deleted} job(s)` + (r.kept_with_images ? `; kept ${r.kept_with_images} with gallery images` : ''));
    });
  }
  el('admin-retry-all').addEventListener('click', () => act(
    () => call('POST', '/api/queue/retry_failed', { force: el('admin-force').checked }),
    (r) => `Retried ${r.retried} job(s)` + (r.exhausted ? `; ${r.exhausted} used up their attempts` : '')
      + (r.over_queue_bound ? `; ${r.over_queue_bound} wait for room` : '')));
}

export function enter() {
  visible = true;
  refresh();
}

export function leave() {
  visible = false;
}

async function act(run, describe) {
  const note = el('admin-note');
  try {
    const result = await run();
    note.textContent = describe(result);
    note.className = 'hint';
  } catch (e) {
    note.textContent = e.message;
    note.className = 'error';
  }
  note.hidden = false;
  refresh();
}

function card(label, value) {
  const div = document.createElement('div');
  div.className = 'stat';
  div.innerHTML = '<span class="value"></span><span class="label"></span>';
  div.querySelector('.value').textContent = String(value);
  div.querySelector('.label').textContent = label;
  return div;
}

async function refresh() {
  let q;
  let list;
  try {
    [q, list] = await Promise.all([
      call('GET', '/api/queue?detailed=true'),
      call('GET', `/api/jobs?status=${encodeURIComponent(el('admin-status').value)}&limit=100`),
    ]);
  } catch (e) {
    el('admin-note').textContent = 'Could not load the queue: ' + e.message;
    el('admin-note').className = 'error';
    el('admin-note').hidden = false;
    return;
  }
  const stats = el('admin-stats');
  stats.textContent = '';
  stats.append(card('pending', q.pending), card('running', q.processing), card('completed', q.completed),
    card('failed', q.failed), card('last 24 h', q.recent_24h.total),
    card('mean time (s)', q.avg_processing_time_seconds), card('failure rate', q.failure_rate + ' %'));
  const models = el('admin-models');
  models.textContent = '';
  for (const [model, c] of Object.entries(q.models || {})) {
    const tr = document.createElement('tr');
    const done = c.completed + c.failed;
    for (const v of [model, c.total, c.completed, c.failed, done ? Math.round((100 * c.completed) / done) + ' %' : '–']) {
      const td = document.createElement('td');
      td.textContent = String(v);
      tr.append(td);
    }
    models.append(tr);
  }
  el('admin-models-empty').hidden = Object.keys(q.models || {}).length > 0;
  const body = el('admin-jobs');
  body.textContent = '';
  for (const job of list.jobs) body.append(jobRow(job));
  el('admin-jobs-empty').hidden = list.jobs.length > 0;
}

function jobRow(job) {
  const tr = document.createElement('tr');
  tr.dataset.jobId = job.job_id;
  const cells = [job.status, job.model, job.prompt, String(job.attempts ?? ''), job.created_at || ''];
  for (const [i, v] of cells.entries()) {
    const td = document.createElement('td');
    td.textContent = v;
    if (i === 2) td.className = 'prompt';
    if (i === 0) td.className = 'status ' + v;
    tr.append(td);
  }
  const actions = document.createElement('td');
  actions.className = 'row';
  const button = (label, cls, fn) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = cls;
    b.textContent = label;
    b.addEventListener('click', fn);
    actions.append(b);
  };
  if (job.status === 'failed') {
    button('Retry', 'ghost retry', () => act(
      () => call('POST', `/api/jobs/${job.job_id}/retry`, { force: el('admin-force').checked }),
      () => `Job ${job.job_id.slice(0, 8)} is back in the queue`));
  }
  button('Details', 'ghost details', () => details(job.job_id));
  if (job.status !== 'processing') {
    button('Delete', 'ghost danger delete', () => act(
      () => call('DELETE', `/api/jobs/${job.job_id}`),
      () => `Deleted job ${job.job_id.slice(0, 8)}`));
  }
  tr.append(actions);
  if (job.error) tr.title = job.error;
  return tr;
}

async function details(id) {
  const dialog = el('admin-dialog');
  let d;
  try {
    d = await call('GET', `/api/jobs/${id}`);
  } catch (e) {
    el('admin-note').textContent = e.message;
    el('admin-note').hidden = false;
    return;
  }
  el('admin-detail-json').textContent = JSON.stringify(d.job, null, 2);
  const images = el('admin-detail-images');
  images.textContent = '';
  for (const img of d.images) {
    const pic = document.createElement('img');
    pic.alt = img.metadata?.prompt || 'generated image';
    images.append(pic);
    setImage(pic, img.thumbnail_url).catch(() => {});
  }
  dialog.showModal();
}
