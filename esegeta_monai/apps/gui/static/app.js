// The GUI's entry point: the step navigation, then each step's module.

import { $, $$ } from './js/dom.js';
import { emit, on, state } from './js/state.js';
import { initBundles } from './js/bundles.js';
import { initScans } from './js/scans.js';
import { caseMode, casePairs, initCase } from './js/case.js';
import { initMethods } from './js/methods.js';
import { initJobs } from './js/jobs.js';
import { initResults } from './js/results.js';
import { initEvaluation } from './js/evaluation.js';

const STEPS = ['bundle', 'scans', 'methods', 'run', 'results', 'evaluation'];

/** Show one step (its section and its tab), remember it in the URL's hash. Other modules ask
 * for a step with emit('goto', step). */
function showStep(step) {
  if (!STEPS.includes(step)) step = 'bundle';
  for (const section of $$('section.step')) section.hidden = section.dataset.step !== step;
  for (const tab of $$('.step-tab')) {
    const current = tab.dataset.step === step;
    tab.classList.toggle('current', current);
    if (current) tab.setAttribute('aria-current', 'step');
    else tab.removeAttribute('aria-current');
  }
  if (location.hash !== `#${step}`) history.replaceState(null, '', `#${step}`);
  window.scrollTo(0, 0);
  emit('step', step);
}

function markDone() {
  const done = {
    bundle: Boolean(state.bundle),
    scans: caseMode() ? Boolean(casePairs()) : state.scans.length > 0,
    methods: state.chosen.size > 0,
    run: state.jobs.size > 0,
    results: false,
    evaluation: false,
  };
  for (const tab of $$('.step-tab')) tab.classList.toggle('done', Boolean(done[tab.dataset.step]));
}

document.addEventListener('click', (event) => {
  const target = event.target.closest('[data-goto], .step-tab');
  if (!target || target.disabled) return;
  showStep(target.dataset.goto || target.dataset.step);
});

for (const event of ['bundle', 'scans', 'case', 'methods', 'jobs']) on(event, markDone);
on('goto', showStep);

initBundles();
initCase();
initScans();
initMethods();
initJobs();
initResults();
initEvaluation();
showStep(location.hash.slice(1) || 'bundle');
