// One NiiVue viewer: a scan with an attribution map as its overlay, and the display controls
// (colour scheme, threshold and saturation as percentiles of |map|, opacity, view).

const NIIVUE_URL = '/static/vendor/niivue/niivue.js';
let niivue = null;  // the module, imported once when the first viewer opens

/** Colour schemes: a colour map for positive values and, for signed maps, one for negatives. */
export const SCHEMES = {
  warm: { label: 'Warm (red → yellow)', colormap: 'warm' },
  hot: { label: 'Hot', colormap: 'hot' },
  inferno: { label: 'Inferno', colormap: 'inferno' },
  plasma: { label: 'Plasma', colormap: 'plasma' },
  viridis: { label: 'Viridis', colormap: 'viridis' },
  red: { label: 'Red', colormap: 'red' },
  'warm-winter': { label: 'Signed: warm + / winter −', colormap: 'warm', negative: 'winter' },
  'red-blue': { label: 'Signed: red + / blue −', colormap: 'red', negative: 'blue' },
};

export const VIEWS = ['multi', 'axial', 'coronal', 'sagittal', 'render'];
/** Scans NiiVue reads as pictures, without geometry. */
const PICTURE = /\.(png|jpe?g|bmp)$/i;

/** The sorted |values| of a map's non-zero finite voxels (a subsample of very large maps). */
function magnitudes(volume) {
  const data = volume.img;
  const slope = Number.isFinite(volume.hdr.scl_slope) && volume.hdr.scl_slope !== 0 ? volume.hdr.scl_slope : 1;
  const inter = Number.isFinite(volume.hdr.scl_inter) ? volume.hdr.scl_inter : 0;
  const stride = Math.max(1, Math.floor(data.length / 4e6));
  const values = new Float32Array(Math.ceil(data.length / stride));
  let count = 0;
  let negative = 0;
  let peak = 0;
  for (let i = 0; i < data.length; i += stride) {
    const v = data[i] * slope + inter;
    if (!Number.isFinite(v) || v === 0) continue;
    if (v < 0) negative = Math.max(negative, -v);
    peak = Math.max(peak, Math.abs(v));
    values[count++] = Math.abs(v);
  }
  const sorted = values.subarray(0, count).sort();
  // signed when the negative side is more than a rounding error of the positive one
  return { sorted, signed: negative > 1e-3 * peak, peak };
}

function percentile(sorted, p) {
  if (!sorted.length) return 0;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.round((p / 100) * (sorted.length - 1))));
  return sorted[index];
}

export class MapViewer {
  constructor(canvas) {
    this.canvas = canvas;
    this.nv = null;
    this.stats = null;
    this.settings = { scheme: 'warm', threshold: 90, saturation: 99.5, opacity: 0.8, view: 'multi' };
    this.schemeChosen = false;  // until the user picks one: warm for a non-negative map, diverging for a signed one
    this.onLocation = () => {};
    this.is2D = false;
  }

  async open() {
    if (this.nv) return;
    niivue = niivue || await import(NIIVUE_URL);
    this.nv = new niivue.Niivue({
      backColor: [0.06, 0.07, 0.09, 1],
      crosshairColor: [0.25, 0.85, 1, 0.9],
      show3Dcrosshair: true,
      isColorbar: true,
      multiplanarShowRender: niivue.SHOW_RENDER.ALWAYS,
      multiplanarLayout: 2,  // a 2 × 2 grid: three planes and the 3D render
      loadingText: 'loading...',
      logLevel: 'warn',
    });
    await this.nv.attachToCanvas(this.canvas);
    this.nv.onLocationChange = (location) => this.onLocation(location);
  }

  /** Show `map` ({url, name}) over `scan` ({url, name} or null); without a loadable scan
   * the map is shown alone. Returns a warning text or null. */
  async show(scan, map) {
    await this.open();
    const overlay = { url: map.url, name: map.name, colormap: SCHEMES[this.settings.scheme].colormap, opacity: this.settings.opacity };
    let warning = null;
    try {
      if (!scan) throw new Error('no scan');
      await this.nv.loadVolumes([{ url: scan.url, name: scan.name, colormap: 'gray', colorbarVisible: false }, overlay]);
      if (this.nv.volumes.length < 2) throw new Error('the scan could not be read');
    } catch (error) {
      warning = scan ? `The scan ${scan.name} could not be shown (${error.message}); the map is shown alone.` : null;
      await this.nv.loadVolumes([{ url: map.url, name: map.name, colormap: 'gray' }]);
    }
    this.overlayIndex = this.nv.volumes.length - 1;
    const base = this.nv.volumes[0];
    if (this.overlayIndex > 0 && PICTURE.test(scan.name)) warning = this.alignToPicture() || warning;
    this.is2D = base.hdr.dims[3] <= 1;
    this.nv.setCrosshairWidth(this.is2D ? 0.25 : 1);  // one voxel is thick on an enlarged 2D image
    this.stats = magnitudes(this.nv.volumes[this.overlayIndex]);
    if (!this.schemeChosen) this.settings.scheme = this.stats.signed ? 'warm-winter' : 'warm';
    this.apply();
    this.nv.createOnLocationChange();  // the cursor's values, of the new volumes
    return warning;
  }

  /** A picture (PNG, JPEG) has no geometry: NiiVue gives it its own affine (centred, rows
   * downwards), the map has the reader's (identity). Both index pixels as (column, row), so the
   * map is shown on the picture's affine; returns a warning when their sizes differ. */
  alignToPicture() {
    const [picture, map] = [this.nv.volumes[0].hdr.dims, this.nv.volumes[this.overlayIndex].hdr.dims];
    if (picture[1] !== map[1] || picture[2] !== map[2]) {
      return `The map (${map[1]} × ${map[2]}) does not have the picture's size (${picture[1]} × ${picture[2]}): it may not line up.`;
    }
    this.nv.setVolumeAffine(this.overlayIndex, this.nv.getVolumeAffine(0));
    return null;
  }

  /** The overlay's cal_min and cal_max from the threshold and saturation percentiles. */
  range() {
    if (!this.stats) return [0, 0];
    const low = percentile(this.stats.sorted, this.settings.threshold);
    let high = percentile(this.stats.sorted, this.settings.saturation);
    if (!(high > low)) high = low + Math.max(1e-12, 1e-6 * this.stats.peak);
    return [low, high];
  }

  /** Apply the settings (any subset may have changed). */
  apply(changes = {}) {
    Object.assign(this.settings, changes);
    if (!this.nv || !this.stats) return;
    const volume = this.nv.volumes[this.overlayIndex];
    const scheme = SCHEMES[this.settings.scheme] || SCHEMES.warm;
    const alone = this.overlayIndex === 0;
    const [low, high] = this.range();
    volume.colormap = scheme.colormap;
    volume.colormapNegative = this.stats.signed && scheme.negative ? scheme.negative : '';
    volume.cal_min = low;
    volume.cal_max = high;
    volume.opacity = alone ? 1 : this.settings.opacity;
    this.nv.updateGLVolume();
    this.setView(this.settings.view);
  }

  setView(view) {
    this.settings.view = view;
    if (!this.nv) return;
    const types = niivue.SLICE_TYPE;
    const sliceType = this.is2D ? types.AXIAL : {
      multi: types.MULTIPLANAR, axial: types.AXIAL, coronal: types.CORONAL, sagittal: types.SAGITTAL, render: types.RENDER,
    }[view];
    this.nv.setSliceType(sliceType ?? types.MULTIPLANAR);
  }

  resetView() {
    if (!this.nv) return;
    this.nv.scene.crosshairPos = [0.5, 0.5, 0.5];
    this.nv.setRenderAzimuthElevation(110, 10);
    this.nv.scene.pan2Dxyzmm = [0, 0, 0, 1];
    this.nv.scene.volScaleMultiplier = 1;
    this.nv.drawScene();
    this.nv.createOnLocationChange();
  }

  /** Stop sending this viewer's cursor to others. */
  unlink() {
    if (this.nv) this.nv.broadcastTo([], { '2d': true, '3d': true });
  }

  /** Link the cursors (and 3D view) of two viewers both ways. */
  link(other) {
    if (!this.nv || !other.nv) return;
    this.nv.broadcastTo([other.nv], { '2d': true, '3d': true });
    other.nv.broadcastTo([this.nv], { '2d': true, '3d': true });
  }
}
