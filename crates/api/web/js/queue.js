// The queue page: pending and running jobs with live progress and cancel
// buttons, and recent failures with their reasons.

import { call } from './api.js';

const el = (id) => document.getElementById(id);
let visible = false;
let timer = null;

export function init({ onJobEvent }) {
  onJobEvent((ev) => {
    if (!visible) return;
    const row = el('queue-active').querySelector(`[data-job-id="${ev.job_id}"]`);
    if (row && !['completed', 'failed', 'cancelled'].includes(ev.status)) {
      setProgress(row, ev.progress);
      row.querySelector('.status').textContent = ev.status;
    } else {
      clearTimeout(timer);
      timer = setTimeout(refresh, 150);
    }
  });
}

export function enter() {
  visible = true;
  refresh();
}

export function leave() {
  visible = false;
}

function setProgress(row, p) {
  const pct = p.total_steps ? Math.round((100 * p.step) / p.total_steps) : 0;
  const bar = row.querySelector('.progress');
  bar.firstElementChild.style.width = pct + '%';
  bar.setAttribute('aria-valuenow', String(pct));
  row.querySelector('.step').textContent = p.generating ? `step ${p.step}/${p.total_steps}` : (p.loading_model ? 'loading model' : '');
}

function jobRow(job, failed) {
  const row = document.createElement('div');
  row.className = 'qjob';
  row.dataset.jobId = job.job_id;
  row.innerHTML = `<div><div class="prompt"></div><div class="hint"><span class="model"></span> · <span class="status"></span> <span class="step"></span></div></div>`;
  row.querySelector('.prompt').textContent = job.prompt;
  row.querySelector('.model').textContent = job.model;
  row.querySelector('.status').textContent = job.status;
  if (failed) {
    const err = document.createElement('p');
    err.className = 'error';
    err.textContent = job.error || 'failed';
    row.append(err);
    return row;
  }
  const cancel = document.createElement('button');
  cancel.className = 'danger cancel';
  cancel.textContent = 'Cancel';
  cancel.addEventListener('click', async () => {
    cancel.disabled = true;
    try {
      await call('POST', `/api/cancel/${job.job_id}`);
    } catch (e) {
      if (e.status !== 409) { cancel.disabled = false; alert('Could not cancel: ' + e.message); return; }
    }
    refresh();
  });
  row.append(cancel);
  const bar = document.createElement('div');
  bar.className = 'progress';
  bar.setAttribute('role', 'progressbar');
  bar.innerHTML = '<div></div>';
  row.append(bar);
  setProgress(row, job.progress);
  return row;
}

async function refresh() {
  let q;
  try {
    q = await call('GET', '/api/queue');
  } catch (e) {
    el('queue-idle').textContent = 'Could not load the queue: ' + e.message;
    return;
  }
  const active = el('queue-active');
  active.textContent = '';
  for (const job of q.jobs) active.append(jobRow(job, false));
  el('queue-idle').hidden = q.jobs.length > 0;
  const failed = el('queue-failed');
  failed.textContent = '';
  for (const job of q.recent_failures) failed.append(jobRow(job, true));
  el('queue-nofail').hidden = q.recent_failures.length > 0;
}
