// Step 4: the job list with live progress (server-sent events), status and cancel.

import { getJson, sendJson } from './api.js';
import { $, chip, fill, formatTime, h, notice } from './dom.js';
import { emit, on, state } from './state.js';

const ACTIVE = new Set(['queued', 'running']);
const streams = new Map();  // job id → EventSource
const openLogs = new Set();

export const isActive = (job) => ACTIVE.has(job.status);
export const jobKind = (job) => job.kind || 'explain';

function bundleName(job) {
  if (job.bundle_name) return job.bundle_name;
  const bundle = state.bundles.find((b) => b.id === job.bundle);
  return bundle ? bundle.name : job.bundle || '';
}

function progressBar(job) {
  const p = job.progress || {};
  const total = p.total || 0;
  const done = p.done || 0;
  const failed = p.failed || 0;
  const empty = p.empty || 0;
  const percent = total ? Math.min(100, Math.round((100 * done) / total)) : (job.status === 'done' ? 100 : 0);
  const problems = [failed && `${failed} failed`, empty && `${empty} with an empty target`].filter(Boolean).join(', ');
  const unit = jobKind(job) === 'explain' ? 'maps' : 'steps';
  const label = total ? `${done} of ${total} ${unit}${problems ? ` (${problems})` : ''}` : (isActive(job) ? 'working…' : job.status === 'done' ? 'finished' : '');
  return h('div', { class: 'progress-wrap' },
    h('div', { class: `progress progress-${job.status}`, role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': String(percent) },
      h('div', { class: 'progress-fill', style: `width: ${percent}%` })),
    h('span', { class: 'progress-label' }, label));
}

function jobCard(job) {
  const active = isActive(job);
  const canView = jobKind(job) === 'explain' && (job.status === 'done' || (job.progress && job.progress.done > 0));
  const log = openLogs.has(job.id) ? h('pre', { class: 'log' }, job.log_tail || job.error || 'No log yet.') : null;
  return h('article', { class: `job job-${job.status}`, dataset: { jobId: job.id, status: job.status } },
    h('div', { class: 'job-head' },
      chip(job.status),
      h('span', { class: 'job-id' }, job.id),
      jobKind(job) !== 'explain' ? h('span', { class: 'tag' }, jobKind(job)) : null,
      h('span', { class: 'job-bundle' }, bundleName(job)),
      (job.methods || []).length ? h('span', { class: 'job-methods muted small' }, job.methods.join(', ')) : null,
      h('span', { class: 'muted small job-time' }, formatTime(job.created)),
      h('span', { class: 'job-actions' },
        active ? h('button', { type: 'button', class: 'btn btn-small btn-danger', onclick: () => cancel(job.id) }, 'Cancel') : null,
        h('button', { type: 'button', class: 'btn btn-small', 'aria-expanded': String(openLogs.has(job.id)), onclick: () => toggleLog(job.id) }, openLogs.has(job.id) ? 'Hide log' : 'Log'),
        canView ? h('button', { type: 'button', class: 'btn btn-small btn-primary', onclick: () => { emit('show-job', job.id); emit('goto', 'results'); } }, 'View results') : null,
        jobKind(job) === 'evaluate' && job.status === 'done' ? h('button', { type: 'button', class: 'btn btn-small btn-primary', onclick: () => { emit('show-evaluation', job.id); emit('goto', 'evaluation'); } }, 'View tables') : null)),
    progressBar(job),
    job.error && !isActive(job) && job.status !== 'done' ? h('p', { class: 'job-error' }, job.error) : null,
    log);
}

function render() {
  const jobs = [...state.jobs.values()].sort((a, b) => String(b.created || '').localeCompare(String(a.created || '')));
  const list = $('#job-list');
  if (!jobs.length) fill(list, h('p', { class: 'muted' }, 'No jobs yet. Start one from step 3.'));
  else fill(list, jobs.map(jobCard));
  const running = jobs.filter(isActive).length;
  $('#summary-run').textContent = running ? `${running} running` : jobs.length ? `${jobs.length} job${jobs.length === 1 ? '' : 's'}` : 'start and watch';
  fill($('#activity'), running ? [h('span', { class: 'spinner', 'aria-hidden': 'true' }), `${running} job${running === 1 ? '' : 's'} running`] : '');
  emit('jobs', state.jobs);
}

function update(job) {
  const before = state.jobs.get(job.id);
  state.jobs.set(job.id, { ...(before || {}), ...job });
  render();
  emit('job', state.jobs.get(job.id));
}

async function refreshJob(id) {
  try {
    update(await getJson(`/api/jobs/${encodeURIComponent(id)}`));
  } catch (error) {
    notice($('#jobs-message'), 'error', `Job ${id}: ${error.message}`);
  }
}

/** Follow a job's events until it ends; without events (a proxy, an error) poll instead. */
function follow(id) {
  if (streams.has(id)) return;
  const source = new EventSource(`/api/jobs/${encodeURIComponent(id)}/events`);
  streams.set(id, source);
  const stop = () => { source.close(); streams.delete(id); };
  source.addEventListener('progress', (event) => update(JSON.parse(event.data)));
  source.addEventListener('end', () => { stop(); refreshJob(id); });
  source.addEventListener('error', () => {
    if (source.readyState === EventSource.CLOSED) { stop(); poll(id); }
  });
}

async function poll(id) {
  await refreshJob(id);
  const job = state.jobs.get(id);
  if (job && isActive(job)) setTimeout(() => poll(id), 2000);
}

async function cancel(id) {
  try {
    update(await sendJson('DELETE', `/api/jobs/${encodeURIComponent(id)}`));
  } catch (error) {
    notice($('#jobs-message'), 'error', `Could not cancel job ${id}: ${error.message}`);
  }
}

async function toggleLog(id) {
  if (openLogs.has(id)) openLogs.delete(id);
  else {
    openLogs.add(id);
    await refreshJob(id);
  }
  render();
}

/** Read the job list (and follow the jobs still going). */
export async function loadJobs() {
  try {
    const jobs = await getJson('/api/jobs');
    notice($('#jobs-message'), null);
    for (const job of jobs) {
      state.jobs.set(job.id, { ...(state.jobs.get(job.id) || {}), ...job });
      if (isActive(job)) follow(job.id);
    }
    render();
  } catch (error) {
    notice($('#jobs-message'), 'error', `Could not list the jobs: ${error.message}`);
  }
}

export function initJobs() {
  $('#jobs-refresh').addEventListener('click', loadJobs);
  on('job-started', async (id) => { await refreshJob(id); follow(id); });
  loadJobs();
}
