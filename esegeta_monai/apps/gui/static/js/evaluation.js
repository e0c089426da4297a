// Step 6: `esegeta evaluate` on a finished job (POST /api/jobs/{id}/evaluate), as a job of its
// own; its ranking and values as tables, its figures as thumbnails.

import { baseName, fileUrl, getJson, sendJson } from './api.js';
import { $, chip, fill, formatNumber, formatTime, h, notice } from './dom.js';
import { isActive, jobKind } from './jobs.js';
import { emit, on, state } from './state.js';

/** The metrics checked first: cheap, and what a first look needs. */
const CHECKED = new Set(['deletion', 'insertion', 'infidelity', 'sensitivity']);
let METRICS = [];  // the catalogue (GET /api/metrics): name, family, better, cost, summary, needs_label
let BETTER = {};
let shown = null;  // the evaluate job whose tables are shown
const needsLabel = () => METRICS.some((m) => m.needs_label && $(`#metric-${m.name}`) && $(`#metric-${m.name}`).checked);

const explainJobs = () => [...state.jobs.values()].filter((j) => jobKind(j) === 'explain' && j.status === 'done');
const evaluateJobs = () => [...state.jobs.values()].filter((j) => jobKind(j) === 'evaluate')
  .sort((a, b) => String(b.created || '').localeCompare(String(a.created || '')));

function renderJobSelect() {
  const jobs = explainJobs().sort((a, b) => String(b.created || '').localeCompare(String(a.created || '')));
  const select = $('#eval-job');
  const before = select.value;
  fill(select, jobs.length ? jobs.map((job) => h('option', { value: job.id }, `${job.id} — ${(job.methods || []).join(', ')}`))
    : h('option', { value: '' }, 'no finished job yet'));
  if (jobs.some((j) => j.id === before)) select.value = before;
  $('#eval-button').disabled = !jobs.length;
}

function renderEvaluateJobs() {
  const jobs = evaluateJobs();
  fill($('#eval-jobs'), jobs.length ? h('ul', { class: 'plain eval-job-list' }, jobs.map((job) => h('li', {},
    h('button', { type: 'button', class: `file-row${shown === job.id ? ' current' : ''}`, onclick: () => showTables(job.id) },
      chip(job.status), h('span', { class: 'file-name' }, job.id),
      h('span', { class: 'muted small' }, `of ${job.parent || '?'} · ${formatTime(job.created)}`))))) : h('p', { class: 'muted' }, 'None yet.'));
}

// -- labels for localisation ---------------------------------------------------------------

/** A select of the files beside a scan, the likeliest label file chosen. */
async function labelPicker(scanFileId) {
  const cut = scanFileId.lastIndexOf('/');
  const folder = cut >= 0 ? scanFileId.slice(0, cut) : scanFileId.slice(0, scanFileId.indexOf(':') + 1);
  const select = h('select', { dataset: { scan: scanFileId } }, h('option', { value: '' }, 'loading…'));
  getJson(`/api/files?dir=${encodeURIComponent(folder)}`).then((listing) => {
    const files = (listing.entries || []).filter((e) => e.kind === 'file' && e.id !== scanFileId);
    const stem = baseName(scanFileId).replace(/\.(nii\.gz|nii|nrrd|mha|mhd|png|jpe?g)$/i, '');
    const guess = files.find((f) => f.name.startsWith(stem) && /label|seg|mask/i.test(f.name));
    fill(select, h('option', { value: '' }, 'choose the label file'), files.map((f) => h('option', { value: f.id }, f.name)));
    if (guess) select.value = guess.id;
  }).catch((error) => fill(select, h('option', { value: '' }, `cannot list: ${error.message}`)));
  return h('label', { class: 'field' }, h('span', { class: 'field-label' }, `Label for ${baseName(scanFileId)}`), select);
}

async function renderLabels() {
  const box = $('#eval-labels');
  if (!needsLabel()) { fill(box); return; }
  const job = await jobDetail($('#eval-job').value);
  const scans = [...new Set((job.records || []).map((r) => r.image_file).filter(Boolean))];
  fill(box, h('p', { class: 'muted small' }, 'Localisation metrics compare each map with a label of the same scan.'),
    await Promise.all(scans.map(labelPicker)));
}

// -- running and showing -------------------------------------------------------------------

async function jobDetail(id) {
  const job = await getJson(`/api/jobs/${encodeURIComponent(id)}`);
  state.jobs.set(id, { ...(state.jobs.get(id) || {}), ...job });
  return state.jobs.get(id);
}

function number(id) {
  const text = $(id).value.trim();
  return text === '' ? undefined : Number.parseInt(text, 10);
}

async function evaluate() {
  const message = $('#eval-message');
  const jobId = $('#eval-job').value;
  const metrics = METRICS.filter((m) => $(`#metric-${m.name}`).checked).map((m) => m.name);
  if (!metrics.length) { notice(message, 'error', 'Choose at least one metric.'); return; }
  const body = { metrics, samples: number('#eval-samples'), steps: number('#eval-steps'), seed: number('#eval-seed') };
  if (needsLabel()) {
    body.labels = [...document.querySelectorAll('#eval-labels select')].map((s) => s.value);
    if (!body.labels.length || body.labels.some((l) => !l)) { notice(message, 'error', 'Localisation metrics need a label file for every scan.'); return; }
  }
  $('#eval-button').disabled = true;
  try {
    const job = await sendJson('POST', `/api/jobs/${encodeURIComponent(jobId)}/evaluate`, body);
    notice(message, 'ok', `Evaluation ${job.id} started; its tables appear below when it is done.`);
    shown = job.id;
    emit('job-started', job.id);
  } catch (error) {
    notice(message, 'error', error.message);
  } finally {
    $('#eval-button').disabled = false;
  }
}

function rankingTable(ranking) {
  const metrics = Object.keys(ranking || {});
  if (!metrics.length) return h('p', { class: 'muted' }, 'No metric gave a value.');
  return h('table', { class: 'grid' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Metric'), h('th', {}, 'Better'), h('th', {}, 'Methods, best first (mean over the scans)'))),
    h('tbody', {}, metrics.map((metric) => h('tr', {},
      h('th', { scope: 'row' }, metric),
      h('td', { class: 'muted' }, (ranking[metric][0] || {}).better || BETTER[metric] || ''),
      h('td', {}, h('ol', { class: 'ranking' }, ranking[metric].map((entry, i) => h('li', { class: i === 0 ? 'best' : '' },
        h('b', {}, entry.method), ' ', h('span', { class: 'num' }, formatNumber(entry.mean))))))))));
}

function valueTable(rows) {
  const metrics = [...new Set(rows.map((r) => r.metric).filter((m) => m !== 'map'))];
  const keys = [...new Set(rows.map((r) => `${r.image}\u0000${r.method}`))];
  return h('table', { class: 'grid' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Scan'), h('th', {}, 'Method'), metrics.map((m) => h('th', { class: 'num' }, m)))),
    h('tbody', {}, keys.map((key) => {
      const [image, method] = key.split('\u0000');
      const mine = rows.filter((r) => r.image === image && r.method === method);
      const mapFailed = mine.find((r) => r.metric === 'map');
      return h('tr', {}, h('td', {}, baseName(image)), h('th', { scope: 'row' }, method),
        metrics.map((metric) => {
          const row = mine.find((r) => r.metric === metric) || mapFailed;
          if (!row) return h('td', { class: 'num muted' }, '–');
          if (row.status !== 'ok') return h('td', { class: 'cell-failed', title: row.error || '' }, 'failed');
          return h('td', { class: 'num' }, formatNumber(row.value));
        }));
    })));
}

async function showTables(id) {
  shown = id;
  renderEvaluateJobs();
  const where = $('#eval-results');
  let job;
  try {
    job = await jobDetail(id);
  } catch (error) {
    notice(where, 'error', `Evaluation ${id}: ${error.message}`);
    return;
  }
  if (isActive(job)) {
    notice(where, 'info', `Evaluation ${id} is ${job.status}; its tables appear here when it is done.`);
    return;
  }
  if (!job.evaluation) {
    notice(where, job.status === 'done' ? 'warn' : 'error', `Evaluation ${id} is ${job.status} and wrote no table.`,
      job.error ? h('pre', { class: 'log' }, job.error) : job.log_tail ? h('pre', { class: 'log' }, job.log_tail) : null);
    return;
  }
  const figures = (job.files || []).filter((f) => /\.png$/i.test(f.name));
  const tables = (job.files || []).filter((f) => /\.(csv|json)$/i.test(f.name) && !f.name.startsWith('gui_'));
  fill(where,
    h('div', { class: 'panel' }, h('h3', {}, `Ranking · evaluation ${id} of job ${job.parent || ''}`), rankingTable(job.evaluation.ranking)),
    h('div', { class: 'panel' }, h('h3', {}, 'Values per scan and method'), valueTable(job.evaluation.rows || []),
      tables.length ? h('p', { class: 'small' }, 'Download: ', tables.map((f, i) => [i ? ' · ' : '', h('a', { href: `${fileUrl(f.id)}?download=1` }, f.name)])) : null),
    figures.length ? h('div', { class: 'panel' }, h('h3', {}, 'Figures'), h('div', { class: 'figure-strip' }, figures.map((f) => h('figure', { class: 'thumb' },
      h('a', { href: fileUrl(f.id), target: '_blank', rel: 'noopener' }, h('img', { src: fileUrl(f.id), alt: f.name, loading: 'lazy' })),
      h('figcaption', {}, f.name))))) : null);
}

function metricLabel(m) {
  const better = m.better ? `${m.better} is better` : 'descriptive, not ranked';
  return h('label', { class: 'check metric', title: `${m.reference}\ncost: ${m.cost}` },
    h('input', { type: 'checkbox', id: `metric-${m.name}`, checked: CHECKED.has(m.name), onchange: m.needs_label ? renderLabels : null }),
    h('span', {}, h('b', {}, m.name), ` — ${m.summary || m.reference} (${better}${m.needs_label ? '; needs a label per scan' : ''})`));
}

async function initForm() {
  $('#eval-button').addEventListener('click', evaluate);
  $('#eval-job').addEventListener('change', renderLabels);
  try {
    const catalogue = await getJson('/api/metrics');
    METRICS = catalogue.metrics;
    BETTER = Object.fromEntries(METRICS.map((m) => [m.name, m.better]));
    fill($('#metric-list'), h('legend', {}, 'Metrics'), catalogue.families.map((family) => {
      const mine = METRICS.filter((m) => m.family === family);
      return mine.length ? h('div', { class: 'metric-family' }, h('div', { class: 'field-label' }, family), mine.map(metricLabel)) : null;
    }));
  } catch (error) {
    fill($('#metric-list'), h('legend', {}, 'Metrics'), h('p', { class: 'error' }, `cannot list the metrics: ${error.message}`));
  }
}

export function initEvaluation() {
  initForm();
  on('jobs', () => { renderJobSelect(); renderEvaluateJobs(); });
  on('job', (job) => {
    if (job.id === shown && !isActive(job)) showTables(job.id);
  });
  on('show-evaluation', showTables);
  on('show-job', (id) => { $('#eval-job').value = id; });
}
