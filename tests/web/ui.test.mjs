// End-to-end tests of the web UI: the real binary, the real engine (the
// built-in trained shapes-64 model, the default on a fresh machine, and the
// random-weight tiny SD 1.5 one), headless Debian Chromium driven
// by playwright-core. Screenshots go to tests/web/artifacts/.
//
// usage: node tests/web/ui.test.mjs path/to/cyberimage
// Prints "N passed, M failed"; exits non-zero on any failure.

import { execFileSync, spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const binary = resolve(process.argv[2] || 'target/debug/cyberimage');
const artifacts = join(here, 'artifacts');
mkdirSync(artifacts, { recursive: true });
const TINY = 'tiny-sd15-random';
const results = { passed: 0, failed: 0 };

function check(name, condition, detail = '') {
  if (condition) {
    results.passed++;
    console.log(`PASS ${name}`);
  } else {
    results.failed++;
    console.log(`FAIL ${name} ${detail}`);
  }
}

// A STAND-IN OpenAI-compatible chat server for prompt enrichment (no real
// chat model can be downloaded here): it records each request and answers
// as Ollama's /v1/chat/completions does.
function startChatStandIn() {
  const seen = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      const request = JSON.parse(body || '{}');
      seen.push(request);
      const system = request.messages?.[0]?.content || '';
      const subject = (request.messages?.[1]?.content || '').replace('Rewrite this image prompt: ', '');
      res.setHeader('content-type', 'application/json');
      if (subject.includes('fail')) {
        res.statusCode = 500;
        res.end(JSON.stringify({ error: { message: 'stand-in model crashed' } }));
        return;
      }
      const extra = system.includes('anime') ? 'cel shading, vivid palette' : 'neon glow';
      res.end(JSON.stringify({ choices: [{ message: { role: 'assistant', content: `${subject}, ${extra}` } }] }));
    });
  });
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => ok({ server, seen, port: server.address().port })));
}

function startServer(dataDir, env = {}) {
  return new Promise((resolveStart, reject) => {
    const proc = spawn(binary, ['serve', '--bind', '127.0.0.1:0', '--data-dir', dataDir], {
      stdio: ['ignore', 'pipe', 'ignore'],
      env: { ...process.env, RUST_LOG: 'warn', ...env },
    });
    let out = '';
    proc.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/listening on (http:\/\/\S+)/);
      if (m) resolveStart({ proc, base: m[1] });
    });
    proc.on('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
}

async function main() {
  const dataDir = mkdtempSync(join(tmpdir(), 'cyberimage-web-'));
  // A LoRA for the tiny SD 1.5 model in the data dir's loras/ folder.
  mkdirSync(join(dataDir, 'loras'));
  copyFileSync(join(here, '..', '..', 'fixtures', 'tiny', 'tiny-sd15', 'loras', 'tiny-kohya.safetensors'),
    join(dataDir, 'loras', 'tiny-kohya.safetensors'));
  const chat = await startChatStandIn();
  const { proc, base } = await startServer(dataDir, {
    CYBERIMAGE_ENRICH__ENDPOINT: `http://127.0.0.1:${chat.port}/v1`,
    CYBERIMAGE_ENRICH__MODEL: 'stand-in-chat',
  });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const consoleErrors = [];
  try {
    const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    page.on('console', (msg) => { if (msg.type() === 'error') consoleErrors.push(msg.text()); });
    page.on('pageerror', (err) => consoleErrors.push(String(err)));
    // Which requests failed, so a console error names its URL.
    const failedResponses = [];
    page.on('response', (r) => { if (r.status() >= 400) failedResponses.push(`${r.status()} ${r.url()}`); });

    // Generate: the server's default model is preselected; pick the tiny one.
    await page.goto(base + '/');
    await page.waitForSelector('#model option', { state: 'attached' });
    const defaultModel = await page.$eval('#model', (s) => s.value);
    const serverDefault = (await (await fetch(base + '/api/models')).json()).default;
    check('generate page preselects the server default model', defaultModel === serverDefault, defaultModel);
    // A fresh machine: flux-1 has no weights, so the default is the first
    // model that can run, the trained shapes-64, and it draws the prompt.
    check('a fresh machine defaults to the trained shapes-64', serverDefault === 'shapes-64', serverDefault);
    await page.fill('#prompt', 'a red circle on a white background');
    await page.fill('#seed', '7');
    await page.click('#generate-button');
    const circleCard = page.locator('.job').first();
    await circleCard.locator('img.result-image').waitFor({ timeout: 120_000 });
    await page.screenshot({ path: join(artifacts, '0-red-circle-default-model.png'), fullPage: true });
    // Read the picture's pixels back: the red ones form a round blob on a
    // white ground (its area fills about pi/4 of its bounding box).
    const circle = await circleCard.locator('img.result-image').evaluate(async (el) => {
      await el.decode();
      const c = document.createElement('canvas');
      c.width = el.naturalWidth; c.height = el.naturalHeight;
      const g = c.getContext('2d');
      g.drawImage(el, 0, 0);
      const d = g.getImageData(0, 0, c.width, c.height).data;
      let red = 0, white = 0, x0 = 1e9, x1 = -1, y0 = 1e9, y1 = -1;
      for (let i = 0; i < d.length; i += 4) {
        const [r, gr, b] = [d[i], d[i + 1], d[i + 2]];
        const p = i / 4, x = p % c.width, y = Math.floor(p / c.width);
        if (r > 150 && gr < 90 && b < 90) {
          red++; x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
        } else if (r > 200 && gr > 200 && b > 200) white++;
      }
      const box = (x1 - x0 + 1) * (y1 - y0 + 1);
      return { red, white, fill: red / box, aspect: (x1 - x0 + 1) / (y1 - y0 + 1), total: d.length / 4 };
    });
    check('"a red circle on a white background" shows a red circle on white',
      circle.red > 40 && circle.white > circle.total / 2 && circle.fill > 0.6 && circle.fill < 0.92
      && circle.aspect > 0.75 && circle.aspect < 1.33, JSON.stringify(circle));
    // A model without weights here is marked, with the reason.
    await page.selectOption('#model', 'flux-1');
    const note = await page.textContent('#model-unavailable');
    check('a model that cannot run here is marked, with the reason',
      await page.isVisible('#model-unavailable') && note.includes('cannot run here')
      && (await page.$eval('#model', (s) => s.selectedOptions[0].textContent)).includes('not on this machine'), note);
    await page.selectOption('#model', TINY);
    check('a model that can run shows no warning', await page.isHidden('#model-unavailable'));
    check('model defaults fill the form', (await page.inputValue('#width')) === '64');
    const prompt = `neon koi pond ${Date.now()}`;
    await page.fill('#prompt', prompt);
    await page.fill('#steps', '60');
    await page.fill('#seed', '4242');
    await page.click('#generate-button');
    const card = page.locator('.job').first();
    // Watch the bar advance: sample its width while the job runs.
    const widths = new Set();
    let previewSeen = false;
    const deadline = Date.now() + 120_000;
    while (Date.now() < deadline) {
      const w = await card.locator('.progress').getAttribute('aria-valuenow');
      widths.add(Number(w));
      // A live preview picture shows while the job runs (and goes once done).
      previewSeen ||= await card.locator('img.preview').evaluate((n) => !n.hidden && n.complete && n.naturalWidth === 8);
      if (await card.evaluate((n) => n.classList.contains('completed') || n.classList.contains('failed'))) break;
      await page.waitForTimeout(30);
    }
    const seen = [...widths].filter((w) => w > 0 && w < 100);
    check('progress bar advanced through intermediate values', seen.length >= 2, JSON.stringify([...widths]));
    check('a live preview was shown before the job ended', previewSeen);
    check('the preview goes once the image is there', await card.locator('img.preview').evaluate((n) => n.hidden));
    await page.screenshot({ path: join(artifacts, '1-generate-progress-done.png'), fullPage: true });
    check('job completed', await card.evaluate((n) => n.classList.contains('completed')), await card.innerText());
    const img = card.locator('img.result-image');
    await img.waitFor();
    const natural = await img.evaluate(async (el) => { await el.decode(); return [el.naturalWidth, el.naturalHeight]; });
    check('the generated image is shown', natural[0] === 64 && natural[1] === 64, JSON.stringify(natural));
    check('reuse seed becomes available', !(await page.isDisabled('#reuse-seed')));

    // Gallery: search by prompt, open the modal, download, remix, delete.
    await page.click('nav a[data-page="gallery"]');
    await page.fill('#gallery-search', prompt);
    const tile = page.locator('.tile', { hasText: prompt });
    await tile.waitFor();
    // The gallery already held the red circle: wait for the search's answer
    // to replace the list (the search runs once typing pauses).
    const searched = await page.waitForFunction(() => document.querySelectorAll('.tile').length === 1,
      null, { timeout: 10_000 }).then(() => true, () => false);
    check('search finds the image', searched, String(await page.locator('.tile').count()));
    await page.screenshot({ path: join(artifacts, '2-gallery-search.png'), fullPage: true });
    await tile.click();
    await page.waitForSelector('#image-dialog[open]');
    const meta = await page.textContent('#detail-meta');
    check('modal shows full metadata', meta.includes(prompt) && meta.includes('4242') && meta.includes(TINY) && meta.includes('64 × 64'), meta);
    await page.screenshot({ path: join(artifacts, '3-image-modal.png') });
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#detail-download')]);
    const file = join(artifacts, 'downloaded.png');
    await download.saveAs(file);
    const bytes = readFileSync(file);
    check('download saves the PNG', bytes.subarray(1, 4).toString() === 'PNG' && download.suggestedFilename().endsWith('.png'));
    await page.click('#detail-remix');
    await page.waitForSelector('#page-generate:not([hidden])');
    check('remix opens generate with the same settings',
      (await page.inputValue('#prompt')) === prompt && (await page.inputValue('#seed')) === '4242' && (await page.$eval('#model', (s) => s.value)) === TINY);

    // Image-to-image from the gallery: "Use as input", a strength, a job
    // that runs the kept steps from that picture.
    await page.click('nav a[data-page="gallery"]');
    await page.fill('#gallery-search', prompt);
    await tile.waitFor();
    await tile.click();
    await page.waitForSelector('#image-dialog[open]');
    await page.click('#detail-input');
    await page.waitForSelector('#page-generate:not([hidden])');
    await page.waitForSelector('#init-stage:not([hidden])');
    check('use as input shows the picture and enables the strength', !(await page.isDisabled('#strength')));
    await page.$eval('#strength', (s) => { s.value = '0.5'; s.dispatchEvent(new Event('input')); });
    await page.fill('#prompt', 'an edit of the pond at dawn');
    await page.fill('#steps', '4');
    await page.click('#generate-button');
    const editCard = page.locator('.job', { hasText: 'an edit of the pond at dawn' }).first();
    await editCard.locator('img.result-image').waitFor({ timeout: 120_000 });
    const editId = await editCard.getAttribute('data-job-id');
    const edited = await (await fetch(`${base}/api/status/${editId}`)).json();
    check('the edit ran as image-to-image at the strength chosen',
      edited.settings.strength === 0.5 && edited.settings.init_image?.length === 64 && edited.progress.total_steps === 2,
      JSON.stringify(edited.settings));
    await page.screenshot({ path: join(artifacts, '3b-image-to-image.png'), fullPage: true });
    // Inpainting: paint the right half of the picture with the brush.
    await page.evaluate(() => document.getElementById('mask-canvas').scrollIntoView({ block: 'center' }));
    const box = await page.locator('#mask-canvas').boundingBox();
    await page.mouse.move(box.x + box.width * 0.75, box.y + box.height * 0.1);
    await page.mouse.down();
    for (let y = 0.1; y < 0.95; y += 0.05) await page.mouse.move(box.x + box.width * 0.75, box.y + box.height * y);
    await page.mouse.up();
    await page.fill('#prompt', 'a repainted right side');
    await page.click('#generate-button');
    const maskCard = page.locator('.job', { hasText: 'a repainted right side' }).first();
    await maskCard.locator('img.result-image').waitFor({ timeout: 120_000 });
    const maskJob = await (await fetch(`${base}/api/status/${await maskCard.getAttribute('data-job-id')}`)).json();
    const maskImage = maskJob.images[0];
    check('painting a mask makes an inpainting job', maskJob.status === 'completed' && maskJob.settings.mask_image?.length === 64
      && maskImage.id, JSON.stringify(maskJob.settings));
    check('the mask panel sends its edge blur and keeps the rest exactly',
      maskJob.settings.mask_blur === 4 && maskJob.settings.keep_unmasked === true, JSON.stringify(maskJob.settings));
    await page.screenshot({ path: join(artifacts, '3c-inpainting.png'), fullPage: true });
    // Outpainting: the canvas extended on the right; the model draws it.
    await page.fill('#outpaint-right', '32');
    await page.fill('#prompt', 'the pond goes on to the right');
    await page.click('#generate-button');
    const outCard = page.locator('.job', { hasText: 'the pond goes on to the right' }).first();
    await outCard.locator('img.result-image').waitFor({ timeout: 120_000 });
    const outJob = await (await fetch(`${base}/api/status/${await outCard.getAttribute('data-job-id')}`)).json();
    check('extending the canvas makes an outpainting job on the wider canvas at strength 1',
      outJob.status === 'completed' && outJob.settings.width === maskJob.settings.width + 32
        && outJob.settings.height === maskJob.settings.height && outJob.settings.strength === 1
        && outJob.settings.mask_image?.length === 64, JSON.stringify(outJob.settings));
    await page.fill('#outpaint-right', '0');
    await page.click('#init-clear');
    check('remove clears the input', await page.isDisabled('#strength') && await page.locator('#init-stage').isHidden());
    await page.setInputFiles('#init-file', file);
    await page.waitForSelector('#init-stage:not([hidden])');
    check('an uploaded picture becomes the input', !(await page.isDisabled('#strength')));
    await page.click('#init-clear');

    await page.click('nav a[data-page="gallery"]');
    await page.fill('#gallery-search', prompt);
    await tile.waitFor();
    await tile.click();
    await page.waitForSelector('#image-dialog[open]');
    page.once('dialog', (d) => d.accept());
    await page.click('#detail-delete');
    await page.waitForSelector('#image-dialog:not([open])', { state: 'attached' });
    check('delete removes the tile', (await page.locator('.tile', { hasText: prompt }).count()) === 0);
    const after = await (await fetch(`${base}/api/gallery?q=${encodeURIComponent(prompt)}`)).json();
    check('delete removes the image on the server', after.total === 0, JSON.stringify(after));

    // Gallery work: views (remembered), the search in the URL, the keyboard,
    // multi-select, the selection as a ZIP, batch delete.
    await page.fill('#gallery-search', '');
    await page.waitForFunction(() => document.querySelectorAll('.tile').length >= 3, null, { timeout: 10_000 });
    await page.selectOption('#gallery-view', 'list');
    check('the list view shows each image\'s details', await page.locator('.tile .details').first().isVisible());
    await page.fill('#gallery-search', 'repainted');
    await page.waitForFunction(() => location.search.includes('search=repainted'), null, { timeout: 10_000 });
    await page.reload();
    await page.waitForSelector('.tile');
    check('the search (in the URL) and the view (remembered) survive a reload',
      (await page.inputValue('#gallery-search')) === 'repainted'
      && await page.$eval('#gallery-grid', (g) => g.classList.contains('view-list')));
    await page.screenshot({ path: join(artifacts, '3d-gallery-list.png'), fullPage: true });
    await page.selectOption('#gallery-view', 'grid');
    await page.fill('#gallery-search', '');
    await page.waitForFunction(() => document.querySelectorAll('.tile').length >= 3 && !location.search, null, { timeout: 10_000 });
    await page.evaluate(() => document.activeElement.blur());
    await page.keyboard.press('/');
    check('/ focuses the search', (await page.evaluate(() => document.activeElement.id)) === 'gallery-search');
    await page.evaluate(() => document.activeElement.blur());
    await page.keyboard.press('j');
    await page.keyboard.press('j');
    const focused = await page.evaluate(() => [...document.querySelectorAll('.tile')].indexOf(document.activeElement));
    check('j moves from tile to tile', focused === 1, String(focused));
    // Favourites: mark one in the detail view, then filter by them.
    const favoriteId = await page.locator('.tile').nth(2).getAttribute('data-image-id');
    await page.locator('.tile').nth(2).click();
    await page.waitForSelector('#image-dialog[open]');
    await page.click('#detail-favorite');
    await page.waitForFunction(() => document.getElementById('detail-favorite').getAttribute('aria-pressed') === 'true', null, { timeout: 10_000 });
    await page.keyboard.press('Escape');
    await page.click('#gallery-favorites');
    await page.waitForFunction((id) => {
      const tiles = [...document.querySelectorAll('.tile')];
      return tiles.length === 1 && tiles[0].dataset.imageId === id && location.search.includes('favorites=1');
    }, favoriteId, { timeout: 10_000 }).catch(() => {});
    const favTiles = await page.$$eval('.tile', (ts) => ts.map((t) => [t.dataset.imageId, t.classList.contains('favorite')]));
    check('the favourites filter shows the one marked, starred, with the filter in the URL',
      favTiles.length === 1 && favTiles[0][0] === favoriteId && favTiles[0][1] && page.url().includes('favorites=1'), JSON.stringify(favTiles));
    await page.click('#gallery-favorites');
    await page.waitForFunction(() => document.querySelectorAll('.tile').length >= 3, null, { timeout: 10_000 });
    const tiles = page.locator('.tile');
    const picked = [await tiles.nth(0).getAttribute('data-image-id'), await tiles.nth(1).getAttribute('data-image-id')];
    await tiles.nth(0).click({ modifiers: ['Control'] });
    await tiles.nth(1).click({ modifiers: ['Control'] });
    check('ctrl-click selects without opening the image',
      (await page.textContent('#selection-count')) === '2 selected' && !(await page.locator('#image-dialog').evaluate((d) => d.open)));
    await page.screenshot({ path: join(artifacts, '3e-gallery-selection.png'), fullPage: true });
    const [zipDownload] = await Promise.all([page.waitForEvent('download'), page.click('#selection-download')]);
    const zipFile = join(artifacts, 'selection.zip');
    await zipDownload.saveAs(zipFile);
    // Read back by an independent reader, CRCs checked: Python's zipfile.
    const listing = execFileSync('python3', ['-c',
      'import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nassert z.testzip() is None\nprint("\\n".join(z.namelist()))',
      zipFile]).toString().trim().split('\n');
    check('the ZIP holds the two selected PNGs', listing.length === 2
      && picked.every((id) => listing.some((n) => n.endsWith(id + '.png'))), JSON.stringify(listing));
    page.once('dialog', (d) => d.accept());
    await page.click('#selection-delete');
    await page.waitForFunction((gone) => gone.every((id) => !document.querySelector(`[data-image-id="${id}"]`)), picked, { timeout: 10_000 });
    const statuses = await Promise.all(picked.map((id) => fetch(`${base}/api/image/${id}`).then((r) => r.status)));
    check('batch delete removes the selected images on the server', statuses.every((st) => st === 404), JSON.stringify(statuses));

    // Queue: a long job shows up with progress; cancel it from the page.
    const slow = await (await fetch(base + '/api/generate', {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ prompt: 'a very slow render', model: TINY, settings: { num_inference_steps: 150, width: 512, height: 512 } }),
    })).json();
    await page.click('nav a[data-page="queue"]');
    const row = page.locator(`.qjob[data-job-id="${slow.job_id}"]`);
    await row.waitFor();
    await page.waitForFunction((id) => {
      const r = document.querySelector(`.qjob[data-job-id="${id}"] .progress`);
      return r && Number(r.getAttribute('aria-valuenow')) > 0;
    }, slow.job_id, { timeout: 120_000 });
    await page.screenshot({ path: join(artifacts, '4-queue-running.png'), fullPage: true });
    await row.locator('button.cancel').click();
    await row.waitFor({ state: 'detached' });
    const status = await (await fetch(`${base}/api/status/${slow.job_id}`)).json();
    check('cancel from the queue page cancels the job', status.status === 'cancelled', status.status);

    // Admin: statistics, the job table, and deleting a finished job's record.
    await page.click('nav a[data-page="admin"]');
    await page.waitForSelector('#admin-stats .stat');
    const statLabels = await page.$$eval('#admin-stats .label', (ls) => ls.map((l) => l.textContent));
    check('the admin page shows queue statistics', statLabels.includes('failed') && statLabels.includes('last 24 h'), JSON.stringify(statLabels));
    await page.selectOption('#admin-status', 'cancelled');
    const cancelledRow = page.locator(`#admin-jobs tr[data-job-id="${slow.job_id}"]`);
    await cancelledRow.waitFor({ timeout: 10_000 });
    check('the admin table lists the cancelled job', await cancelledRow.isVisible());
    await page.screenshot({ path: join(artifacts, '4a-admin.png'), fullPage: true });
    await cancelledRow.locator('button.delete').click();
    await cancelledRow.waitFor({ state: 'detached', timeout: 10_000 });
    const gone = await fetch(`${base}/api/jobs/${slow.job_id}`);
    check('Delete removes the job record on the server', gone.status === 404, String(gone.status));

    // The form: no negative prompt for FLUX; "keep prompt" off clears the
    // prompt after submitting; the last model and settings survive a reload.
    await page.click('nav a[data-page="generate"]');
    await page.selectOption('#model', 'tiny-flux-random');
    check('a FLUX model hides the negative prompt, saying why',
      await page.isHidden('#negative-wrap') && await page.isVisible('#negative-hint'));
    await page.selectOption('#model', TINY);
    check('an SD model shows it again', await page.isVisible('#negative-wrap'));
    await page.fill('#steps', '3');
    await page.fill('#guidance', '5.5');
    await page.uncheck('#keep-prompt');
    await page.fill('#prompt', 'remember this form');
    await page.click('#generate-button');
    const cleared = await page.waitForFunction(() => document.getElementById('prompt').value === '', null, { timeout: 10_000 })
      .then(() => true, () => false);
    check('with "keep prompt" off the prompt is cleared after submitting', cleared);
    await page.reload();
    await page.waitForSelector('#model option', { state: 'attached' });
    await page.waitForFunction((tiny) => document.getElementById('model').value === tiny, TINY, { timeout: 10_000 }).catch(() => {});
    const form = { model: await page.inputValue('#model'), steps: await page.inputValue('#steps'),
      guidance: await page.inputValue('#guidance'), keep: await page.isChecked('#keep-prompt') };
    check('the last model and settings are remembered across a reload',
      form.model === TINY && form.steps === '3' && form.guidance === '5.5' && form.keep === false, JSON.stringify(form));
    await page.check('#keep-prompt');
    // The LoRA picker: the file in loras/, added with a weight, in the job.
    await page.waitForSelector('#lora-panel:not([hidden])');
    const optionText = await page.locator('#lora-add option[value="tiny-kohya"]').textContent();
    check('the LoRA picker names the family the LoRA is for', optionText === 'tiny-kohya (SD 1.x/2.x)', optionText);
    await page.selectOption('#lora-add', 'tiny-kohya');
    await page.fill('#lora-list [data-lora="tiny-kohya"] input', '0.8');
    await page.fill('#prompt', 'a fox with a lora');
    await page.click('#generate-button');
    const loraCard = page.locator('.job', { hasText: 'a fox with a lora' }).first();
    await loraCard.locator('img.result-image').waitFor({ timeout: 120_000 });
    const loraJob = await (await fetch(`${base}/api/status/${await loraCard.getAttribute('data-job-id')}`)).json();
    const used = loraJob.settings.loras || [];
    check('the LoRA picker puts the LoRA and its weight in the job',
      loraJob.status === 'completed' && used.length === 1 && used[0].name === 'tiny-kohya' && used[0].weight === 0.8,
      JSON.stringify(loraJob.settings.loras));
    await page.click('#lora-list [data-lora="tiny-kohya"] button');
    check('a LoRA is removed from the form', (await page.locator('#lora-list li').count()) === 0);
    // The hires fix: ticked, the job makes the picture, enlarges it and
    // redraws it at twice the size.
    await page.check('#hires');
    await page.waitForSelector('#hires-options:not([hidden])');
    await page.fill('#hires-scale', '2');
    await page.fill('#prompt', 'a fox made larger');
    await page.click('#generate-button');
    const hiresCard = page.locator('.job', { hasText: 'a fox made larger' }).first();
    await hiresCard.locator('img.result-image').waitFor({ timeout: 120_000 });
    const hiresJob = await (await fetch(`${base}/api/status/${await hiresCard.getAttribute('data-job-id')}`)).json();
    const hires = hiresJob.settings.hires || {};
    check('the hires fix box puts a hires pass at twice the size in the job',
      hiresJob.status === 'completed' && hires.width === 2 * hiresJob.settings.width
        && hires.height === 2 * hiresJob.settings.height && hires.strength === 0.7 && !hires.upscaler
        && hiresJob.images[0].metadata.settings.width === hires.width,
      JSON.stringify([hiresJob.settings, hiresJob.images && hiresJob.images[0]]));
    await page.uncheck('#hires');
    // Recent generations on the home page: remix and delete from there.
    const firstRecent = page.locator('.recent-item').first();
    await firstRecent.waitFor({ timeout: 30_000 });
    const recentId = await firstRecent.getAttribute('data-image-id');
    const recentPrompt = await firstRecent.locator('figcaption').textContent();
    await firstRecent.locator('button.remix').click();
    check('remix from recent generations fills the form', (await page.inputValue('#prompt')) === recentPrompt, recentPrompt);
    page.once('dialog', (d) => d.accept());
    await firstRecent.locator('button.delete').click();
    await page.waitForFunction((id) => !document.querySelector(`.recent-item[data-image-id="${id}"]`), recentId, { timeout: 10_000 });
    const recentGone = await fetch(`${base}/api/image/${recentId}`);
    check('delete from recent generations removes the image', recentGone.status === 404, String(recentGone.status));
    await page.hover('nav a[data-page="queue"]');
    await page.waitForSelector('#queue-popup:not([hidden])');
    await page.waitForFunction((tiny) => document.getElementById('queue-popup').textContent.includes(tiny), TINY, { timeout: 10_000 }).catch(() => {});
    const queueTip = await page.textContent('#queue-popup');
    check('the queue link opens a popup of the last 24 hours by model', /Last 24 h/.test(queueTip || '') && queueTip.includes(TINY), queueTip);
    await page.mouse.move(5, 400);
    await page.waitForSelector('#queue-popup[hidden]', { state: 'attached' });
    check('the queue popup closes when the pointer leaves', await page.locator('#queue-popup').isHidden());

    // Prompt enrichment: the ✨ button with a style, then Restore original.
    await page.click('nav a[data-page="generate"]');
    await page.selectOption('#model', TINY);
    await page.waitForSelector('#enrich:not([disabled])');
    await page.fill('#prompt', 'a koi pond');
    await page.selectOption('#enrich-style', 'anime');
    await page.click('#enrich');
    await page.waitForSelector('#enrich-restore:not([hidden])');
    const enriched = await page.inputValue('#prompt');
    check('enrich puts the richer prompt in the box', enriched === 'a koi pond, cel shading, vivid palette', enriched);
    const asked = chat.seen.at(-1) || {};
    check('enrich asks the configured chat model, in the chosen style, for the selected model',
      asked.model === 'stand-in-chat' && asked.messages?.[0]?.content.includes('anime')
      && asked.messages?.[0]?.content.includes('77 tokens'), JSON.stringify(asked).slice(0, 300));
    check('the original prompt is shown', (await page.textContent('#enrich-original')).includes('a koi pond'));
    await page.screenshot({ path: join(artifacts, '4b-enriched-prompt.png') });
    await page.click('#enrich-restore');
    check('Restore original brings the prompt back',
      (await page.inputValue('#prompt')) === 'a koi pond' && await page.isHidden('#enrich-restore'));
    await page.reload();
    await page.waitForSelector('#enrich:not([disabled])');
    check('the enrichment style is remembered', (await page.inputValue('#enrich-style')) === 'anime');

    // Upscaling from the gallery's dialog: the built-in trained upscaler
    // at x2 on the newest picture, followed to the end, then the new
    // picture opened.
    await page.click('nav a[data-page="gallery"]');
    await page.fill('#gallery-search', '');
    await page.locator('.tile').first().waitFor();
    await page.locator('.tile').first().click();
    await page.waitForSelector('#image-dialog[open]');
    const [sourceSize, sourcePrompt] = await Promise.all([
      page.textContent('#detail-meta dd[data-field="size"]'), page.textContent('#detail-meta dd[data-field="prompt"]')]);
    const [w, h] = sourceSize.split(' × ').map(Number);
    await page.waitForSelector('#upscale-model option[value="upscalerjs-esrgan-medium-x4"]', { state: 'attached' });
    check('the upscaler list offers the built-in one, selected',
      (await page.inputValue('#upscale-model')) === 'upscalerjs-esrgan-medium-x4');
    await page.selectOption('#upscale-factor', '2');
    await page.click('#upscale-go');
    await page.waitForSelector('#upscale-open:not([hidden])', { timeout: 120_000 });
    const upscaleStatus = await page.textContent('#upscale-status');
    check('the upscale is followed to its end', upscaleStatus.includes(`Upscaled to ${2 * w}×${2 * h}`), upscaleStatus);
    await page.click('#upscale-open');
    await page.waitForFunction((size) => document.querySelector('#detail-meta dd[data-field="size"]')?.textContent === size,
      `${2 * w} × ${2 * h}`, { timeout: 10_000 });
    const upMeta = await page.textContent('#detail-meta');
    check('Open shows the upscaled picture with the prompt it kept',
      upMeta.includes('upscalerjs-esrgan-medium-x4') && upMeta.includes(sourcePrompt), upMeta);
    await page.screenshot({ path: join(artifacts, '4c-upscaled.png') });
    await page.keyboard.press('Escape');

    // Mobile width: no horizontal overflow.
    await page.setViewportSize({ width: 390, height: 844 });
    await page.click('nav a[data-page="generate"]');
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check('no horizontal overflow on a phone-sized screen', overflow <= 0, String(overflow));
    await page.screenshot({ path: join(artifacts, '5-mobile.png'), fullPage: true });

    check('no console errors', consoleErrors.length === 0, JSON.stringify({ consoleErrors, failedResponses }));

    // A request the form allows but the server refuses (over the pixel
    // budget) shows the server's reason plainly. Chromium logs the 400
    // itself to the console, so this runs after the console check.
    await page.setViewportSize({ width: 1280, height: 900 });
    await page.selectOption('#model', TINY);
    await page.fill('#prompt', 'too many pixels');
    await page.fill('#width', '2048');
    await page.fill('#height', '2048');
    await page.fill('#num_images', '8');
    await page.click('#generate-button');
    await page.waitForSelector('#generate-error:not([hidden])');
    const reason = await page.textContent('#generate-error');
    check('server errors are shown plainly', /pixel|Mpx|megapixel/i.test(reason), reason);

    // A chat endpoint that fails: its reason is shown, the prompt kept.
    await page.fill('#width', '64');
    await page.fill('#height', '64');
    await page.fill('#num_images', '1');
    await page.fill('#prompt', 'please fail');
    await page.click('#enrich');
    await page.waitForSelector('#enrich-note:not([hidden])');
    const enrichError = await page.textContent('#enrich-note');
    check('an enrichment failure is shown and the prompt kept',
      enrichError.includes('stand-in model crashed') && (await page.inputValue('#prompt')) === 'please fail', enrichError);
  } finally {
    await browser.close();
    proc.kill('SIGTERM');
    chat.server.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
  console.log(`${results.passed} passed, ${results.failed} failed`);
  process.exit(results.failed ? 1 : 0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
