// Step 5: a job's maps in the viewer (method switcher, comparison of two maps with linked
// cursors), its figures, the report and the downloads.

import { baseName, fileUrl, getJson } from './api.js';
import { $, $$, fill, formatNumber, h, notice } from './dom.js';
import { jobKind } from './jobs.js';
import { on, state } from './state.js';
import { MapViewer, SCHEMES } from './viewer.js';

const viewerA = new MapViewer(document.getElementById('canvas-a'));
const viewerB = new MapViewer(document.getElementById('canvas-b'));
let current = { jobId: null, image: null, map: null, compare: null };
let visible = false;
let loading = Promise.resolve();

/** The job's map records, whatever their status (a failed one shows why in the switcher). */
const mapRecords = (job) => (job.records || []).filter((r) => (r.kind || 'map') === 'map');
const isSigned = () => viewerA.stats && viewerA.stats.signed;

/** The file id of a record's file: its own id when the server gives one, else "out:<job>/<path>". */
function recordFileId(job, record) {
  return record.file || record.file_id || `out:${job.id}/${record.path}`;
}

/** The file id of the scan a record was made from: the record's own when the server gives it,
 * else the job's image with the same name. */
function scanId(job, record) {
  if (record.image_file) return record.image_file;
  const image = record.image;
  const images = job.images || (job.request && job.request.images) || [];
  const name = baseName(image);
  return images.find((id) => baseName(id) === name) || (images.length === 1 ? images[0] : null);
}

function mapLabel(record) {
  return `${record.method} · ${record.target}${record.class_name ? ` (${record.class_name})` : ''}`;
}

function imagesOf(job) {
  const names = [];
  for (const record of mapRecords(job)) if (!names.includes(record.image)) names.push(record.image);
  return names;
}

// -- the selects and the switcher ----------------------------------------------------------

function renderJobSelect() {
  const jobs = [...state.jobs.values()].filter((job) => jobKind(job) === 'explain')
    .sort((a, b) => String(b.created || '').localeCompare(String(a.created || '')));
  const select = $('#result-job');
  fill(select, jobs.length ? jobs.map((job) => h('option', { value: job.id }, `${job.id} — ${job.status}`))
    : h('option', { value: '' }, 'no job yet'));
  if (current.jobId && jobs.some((j) => j.id === current.jobId)) select.value = current.jobId;
  else if (jobs.length && !current.jobId) {
    const firstDone = jobs.find((j) => j.status === 'done') || jobs[0];
    select.value = firstDone.id;
  }
  $('#summary-results').textContent = current.map ? current.map.method : 'view the maps';
  if (visible && !current.jobId && select.value) showJob(select.value);
}

function renderSwitcher(job) {
  const records = mapRecords(job).filter((r) => r.image === current.image);
  const switcher = $('#map-switcher');
  fill(switcher, records.map((record) => {
    const ok = record.status === 'ok';
    return h('button', {
      type: 'button', role: 'radio', class: `map-btn${ok ? '' : ` map-${record.status}`}`,
      'aria-checked': String(Boolean(current.map && current.map.path === record.path)), disabled: !ok,
      title: ok ? `${mapLabel(record)}: ${record.path}` : `${record.status}: ${record.error || ''}`,
      dataset: { method: record.method, target: record.target },
      onclick: () => showMap(record),
    }, mapLabel(record), ok ? null : ` — ${record.status}`);
  }));
  const compare = $('#compare-map');
  const others = records.filter((r) => r.status === 'ok');
  fill(compare, others.map((record) => h('option', { value: record.path }, mapLabel(record))));
  if (current.compare) compare.value = current.compare.path;
}

function renderDownloads(job) {
  const records = mapRecords(job).filter((r) => r.image === current.image && r.status === 'ok');
  fill($('#downloads'), records.length ? [h('h3', {}, 'Download the maps'), h('ul', { class: 'plain download-list' },
    records.map((record) => h('li', {}, h('a', { href: `${fileUrl(recordFileId(job, record))}?download=1`, download: baseName(record.path) }, '⬇ ', baseName(record.path)))))] : null);
}

function renderFigures(job) {
  const figures = (job.outputs || []).filter((o) => o.kind === 'figure' && o.status === 'ok' && (!current.image || o.image === current.image));
  const strip = $('#figure-strip');
  if (!figures.length) {
    fill(strip, h('p', { class: 'muted' }, job.status === 'done' ? 'This job made no figures.' : 'The figures appear here when the job is done.'));
  } else {
    fill(strip, figures.map((figure) => {
      const url = fileUrl(recordFileId(job, figure));
      return h('figure', { class: 'thumb' },
        h('a', { href: url, target: '_blank', rel: 'noopener' }, h('img', { src: url, alt: `${figure.method} ${figure.target}`, loading: 'lazy' })),
        h('figcaption', {}, figure.method === 'compare' ? `All methods · ${figure.target}` : `${figure.method} · ${figure.target}`));
    }));
  }
  const link = $('#report-link');
  if (job.report) {
    link.href = job.report_url || fileUrl(job.report);
    link.hidden = false;
  } else link.hidden = true;
}

// -- the viewers ---------------------------------------------------------------------------

function mapSource(job, record) {
  return { url: fileUrl(recordFileId(job, record)), name: baseName(record.path) };
}

function scanSource(job, record) {
  const id = scanId(job, record);
  return id ? { url: fileUrl(id), name: baseName(id) } : null;
}

/** Queue a viewer load after the ones before it; the viewers' data-state says "loading" until
 * every queued load has ended ("ready", or "error" when the last one failed). */
let pending = 0;
function queue(task) {
  pending += 1;
  $('#viewers').dataset.state = 'loading';
  loading = loading.then(task).then(() => 'ready', (error) => {
    notice($('#results-message'), 'error', error.message);
    return 'error';
  }).then((outcome) => {
    pending -= 1;
    if (!pending) $('#viewers').dataset.state = outcome;
  });
  return loading;
}

async function showMap(record) {
  const job = state.jobs.get(current.jobId);
  if (!job || !record) return;
  current.map = record;
  renderSwitcher(job);
  renderDownloads(job);
  $('#viewer-a-title').textContent = mapLabel(record);
  $('#summary-results').textContent = record.method;
  return queue(async () => {
    let warning;
    try {
      warning = await viewerA.show(scanSource(job, record), mapSource(job, record));
    } catch (error) {
      throw new Error(`Could not show ${record.path}: ${error.message}`);
    }
    notice($('#results-message'), warning ? 'warn' : null, warning);
    syncControls();
    if (!$('#viewer-b').hidden) await showCompare();
  });
}

async function showCompare() {
  const job = state.jobs.get(current.jobId);
  const path = $('#compare-map').value;
  const record = mapRecords(job).find((r) => r.path === path && r.image === current.image);
  if (!record) return;
  current.compare = record;
  viewerB.settings = { ...viewerA.settings };
  viewerB.schemeChosen = viewerA.schemeChosen;
  await viewerB.show(scanSource(job, record), mapSource(job, record));
  viewerA.link(viewerB);
}

async function toggleCompare(on) {
  $('#viewer-b').hidden = !on;
  $('#viewers').classList.toggle('comparing', on);
  if (on) {
    const job = state.jobs.get(current.jobId);
    const others = mapRecords(job || {}).filter((r) => r.image === current.image && r.status === 'ok' && (!current.map || r.path !== current.map.path));
    const same = !current.compare || (current.map && current.compare.path === current.map.path);
    if (others.length && same) $('#compare-map').value = others[0].path;
    queue(showCompare);
  } else {
    viewerA.unlink();
  }
}

function applyAll(changes) {
  viewerA.apply(changes);
  if (!$('#viewer-b').hidden) viewerB.apply(changes);
  syncControls();
}

/** Put the viewer's settings into the controls (and the values they stand for). */
function syncControls() {
  const s = viewerA.settings;
  $('#colormap').value = s.scheme;
  $('#threshold').value = s.threshold;
  $('#saturation').value = s.saturation;
  $('#opacity').value = s.opacity;
  const [low, high] = viewerA.range();
  $('#threshold-value').textContent = formatNumber(low);
  $('#saturation-value').textContent = formatNumber(high);
  $('#threshold-pct').textContent = `${Number(s.threshold).toFixed(1)}th`;
  $('#saturation-pct').textContent = `${Number(s.saturation).toFixed(1)}th`;
  $('#opacity-value').textContent = `${Math.round(100 * s.opacity)} %`;
  for (const button of $$('#view-mode button')) {
    button.setAttribute('aria-pressed', String(!viewerA.is2D && button.dataset.view === s.view));
    button.disabled = viewerA.is2D;
    button.title = viewerA.is2D ? 'A 2D image has one plane' : '';
  }
  $('#viewers').dataset.signed = String(Boolean(isSigned()));
}

function showLocation(location) {
  if (!location || !location.mm) return;
  const mm = Array.from(location.mm).slice(0, 3).map((v) => v.toFixed(1)).join(', ');
  const values = (location.values || []).map((v, i) => `${i === 0 && viewerA.overlayIndex > 0 ? 'scan' : current.map ? current.map.method : 'map'} ${formatNumber(v.value)}`);
  $('#viewer-location').textContent = `Cursor at ${mm} mm · ${values.join(' · ')}`;
}

// -- choosing a job and an image ------------------------------------------------------------

async function showJob(id) {
  if (!id) return;
  let job = state.jobs.get(id);
  if (!job || !job.records) {
    try {
      job = await getJson(`/api/jobs/${encodeURIComponent(id)}`);
      state.jobs.set(id, { ...(state.jobs.get(id) || {}), ...job });
      job = state.jobs.get(id);
    } catch (error) {
      notice($('#results-message'), 'error', `Job ${id}: ${error.message}`);
      return;
    }
  }
  const changedJob = current.jobId !== id;
  current.jobId = id;
  $('#result-job').value = id;
  const images = imagesOf(job);
  fill($('#result-image'), images.length ? images.map((image) => h('option', { value: image }, baseName(image))) : h('option', { value: '' }, 'no map yet'));
  if (changedJob || !images.includes(current.image)) current.image = images[0] || null;
  if (current.image) $('#result-image').value = current.image;
  renderFigures(job);
  if (!images.length) {
    notice($('#results-message'), 'info', job.status === 'done' ? 'This job wrote no map (see its log in step 4).' : 'No map yet: they appear here as the job writes them.');
    renderSwitcher(job);
    return;
  }
  notice($('#results-message'), null);
  const records = mapRecords(job).filter((r) => r.image === current.image && r.status === 'ok');
  const keep = !changedJob && current.map && records.find((r) => r.path === current.map.path);
  if (keep) {
    renderSwitcher(job);
    renderDownloads(job);
  } else if (visible && records.length) {
    await showMap(records[0]);
  } else {
    current.map = null;
    renderSwitcher(job);
    renderDownloads(job);
  }
}

function initControls() {
  fill($('#colormap'), Object.entries(SCHEMES).map(([key, scheme]) => h('option', { value: key }, scheme.label)));
  $('#colormap').addEventListener('change', (e) => {
    viewerA.schemeChosen = true;
    viewerB.schemeChosen = true;
    applyAll({ scheme: e.target.value });
  });
  $('#threshold').addEventListener('input', (e) => {
    const threshold = Number(e.target.value);
    applyAll({ threshold, saturation: Math.max(threshold + 0.1, viewerA.settings.saturation) });
  });
  $('#saturation').addEventListener('input', (e) => {
    const saturation = Number(e.target.value);
    applyAll({ saturation, threshold: Math.min(saturation - 0.1, viewerA.settings.threshold) });
  });
  $('#opacity').addEventListener('input', (e) => applyAll({ opacity: Number(e.target.value) }));
  for (const button of $$('#view-mode button')) button.addEventListener('click', () => applyAll({ view: button.dataset.view }));
  $('#reset-view').addEventListener('click', () => { viewerA.resetView(); if (!$('#viewer-b').hidden) viewerB.resetView(); });
  $('#compare-toggle').addEventListener('change', (e) => toggleCompare(e.target.checked));
  $('#compare-map').addEventListener('change', () => queue(showCompare));
  $('#result-job').addEventListener('change', (e) => showJob(e.target.value));
  $('#result-image').addEventListener('change', (e) => {
    current.image = e.target.value;
    current.map = null;
    showJob(current.jobId);
  });
  viewerA.onLocation = showLocation;
  syncControls();
}

export function initResults() {
  initControls();
  on('jobs', renderJobSelect);
  on('show-job', (id) => {
    if (id !== current.jobId) current = { jobId: id, image: null, map: null, compare: null };
    if (visible) showJob(id);
  });
  on('job', (job) => {
    if (job.id === current.jobId) showJob(job.id);
    else if (!current.jobId && jobKind(job) === 'explain' && visible) showJob(job.id);
  });
  on('step', (step) => {
    visible = step === 'results';
    if (visible) showJob(current.jobId || $('#result-job').value);
  });
}
