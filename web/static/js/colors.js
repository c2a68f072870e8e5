// Colour scales computed in script (not CSS) so that the heatmap on screen and the PNG drawn
// on a canvas use the same colours: a sequential ramp for a statistic, a diverging one for the
// difference of two lenses, and the green–white–red scale of explanation-word salience.

import { clamp } from './util.js';

const dark = window.matchMedia('(prefers-color-scheme: dark)');

export function isDark() {
  return dark.matches;
}

/** Calls `fn` when the colour scheme changes. */
export function onSchemeChange(fn) {
  dark.addEventListener('change', fn);
}

// Stops from "unsure" (0) to "sure" (1): pale to deep blue in light mode, dim to bright in dark.
const SEQ_LIGHT = [[246, 248, 251], [190, 214, 236], [98, 152, 208], [24, 78, 150]];
const SEQ_DARK = [[34, 40, 52], [36, 76, 120], [54, 126, 190], [140, 206, 250]];
// Difference: orange (negative) through neutral to blue (positive).
const DIV_LIGHT = [[196, 92, 28], [246, 248, 251], [24, 96, 170]];
const DIV_DARK = [[222, 128, 60], [40, 46, 58], [96, 170, 240]];

function ramp(stops, t) {
  const x = clamp(Number.isFinite(t) ? t : 0, 0, 1) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2);
  const f = x - i;
  return stops[i].map((a, k) => Math.round(a + (stops[i + 1][k] - a) * f));
}

/** Colour for a score in 0..1 (1 = the lens is sure). */
export function sequential(t) {
  return ramp(isDark() ? SEQ_DARK : SEQ_LIGHT, t);
}

/** Colour for a difference in -1..1. */
export function diverging(t) {
  return ramp(isDark() ? DIV_DARK : DIV_LIGHT, (clamp(Number.isFinite(t) ? t : 0, -1, 1) + 1) / 2);
}

export function css([r, g, b]) {
  return `rgb(${r}, ${g}, ${b})`;
}

/** Whether text on this background should be light. */
export function needsLightText([r, g, b]) {
  const lum = (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
  return lum < 0.55;
}

/**
 * Salience of an explanation word: negative green, zero white, positive red. `lo` and `hi`
 * are the 5th and 95th percentiles of the data, so that a few extreme words do not wash out
 * the rest.
 */
export function salienceColor(v, lo, hi) {
  if (!Number.isFinite(v) || v === 0) return [255, 255, 255];
  if (v > 0) {
    const t = clamp(v / (hi > 0 ? hi : Math.abs(v)), 0, 1);
    return [255, Math.round(255 - 165 * t), Math.round(255 - 175 * t)];
  }
  const t = clamp(v / (lo < 0 ? lo : v), 0, 1);
  return [Math.round(255 - 175 * t), Math.round(255 - 75 * t), Math.round(255 - 160 * t)];
}
