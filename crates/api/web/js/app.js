// The page shell: client-side routing between the four pages, and the
// queue badge, fed by the server's global event stream.

import { call, streamEvents } from './api.js';
import * as generate from './generate.js';
import * as gallery from './gallery.js';
import * as queue from './queue.js';
import * as admin from './admin.js';

const pages = { '/': generate, '/gallery': gallery, '/queue': queue, '/admin': admin };
const names = { '/': 'generate', '/gallery': 'gallery', '/queue': 'queue', '/admin': 'admin' };
let current = null;

function show(path) {
  const page = pages[path] ? path : '/';
  for (const [p, name] of Object.entries(names)) {
    document.getElementById('page-' + name).hidden = p !== page;
  }
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.page === names[page]) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (current && current !== pages[page] && current.leave) current.leave();
  current = pages[page];
  current.enter();
  document.title = 'CyberImage · ' + names[page][0].toUpperCase() + names[page].slice(1);
}

export function navigate(path) {
  if (location.pathname !== path) history.pushState(null, '', path);
  show(path);
}

document.addEventListener('click', (e) => {
  const a = e.target.closest('a[data-nav]');
  if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  navigate(a.getAttribute('href'));
});
window.addEventListener('popstate', () => show(location.pathname));

// Listeners of the global job stream, by page.
const jobListeners = new Set();
export function onJobEvent(fn) {
  jobListeners.add(fn);
  return () => jobListeners.delete(fn);
}
// Live previews of running jobs: { job_id, step, preview_url }.
const previewListeners = new Set();
export function onPreview(fn) {
  previewListeners.add(fn);
  return () => previewListeners.delete(fn);
}

async function refreshBadge() {
  try {
    const q = await call('GET', '/api/queue?detailed=true');
    const badge = document.getElementById('queue-badge');
    const n = q.pending + q.processing;
    badge.textContent = String(n);
    badge.hidden = n === 0;
    // The queue link's popup: the last 24 hours by model.
    const lines = Object.entries(q.models || {}).map(([model, c]) => {
      const done = c.completed + c.failed;
      return `${model}: ${c.completed}/${done} succeeded` + (c.pending + c.processing ? `, ${c.pending + c.processing} waiting` : '');
    });
    const popup = document.getElementById('queue-popup');
    popup.replaceChildren();
    const title = document.createElement('h3');
    title.textContent = lines.length ? 'Last 24 h' : 'No jobs in the last 24 h';
    popup.append(title);
    if (lines.length) {
      const list = document.createElement('ul');
      for (const line of lines) {
        const item = document.createElement('li');
        item.textContent = line;
        list.append(item);
      }
      popup.append(list);
    }
  } catch (e) { /* the badge is a nicety */ }
}

// The popup opens on hover and on keyboard focus, and closes with Escape.
function initQueuePopup() {
  const holder = document.querySelector('.queue-nav');
  const popup = document.getElementById('queue-popup');
  const open = () => { refreshBadge(); popup.hidden = false; };
  const close = () => { popup.hidden = true; };
  holder.addEventListener('mouseenter', open);
  holder.addEventListener('mouseleave', close);
  holder.addEventListener('focusin', open);
  holder.addEventListener('focusout', close);
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape') close(); });
}

let badgeTimer = null;
function start() {
  initQueuePopup();
  generate.init({ navigate, onJobEvent, onPreview });
  gallery.init({ navigate });
  queue.init({ onJobEvent });
  admin.init({ onJobEvent });
  show(location.pathname);
  refreshBadge();
  streamEvents('/api/events', (name, data) => {
    if (name === 'preview') {
      for (const fn of previewListeners) fn(data);
      return;
    }
    if (name !== 'job') return;
    for (const fn of jobListeners) fn(data);
    clearTimeout(badgeTimer);
    badgeTimer = setTimeout(refreshBadge, 300);
  }, new AbortController().signal);
}

start();
