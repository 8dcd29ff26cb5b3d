// The room's hourly activity as a small SVG bar chart. Drawn by hand: one
// series of at most 24 bars needs ~60 lines, less than any chart library's
// setup, and SVG keeps it crisp, themable from CSS and readable by screen
// readers (a <title> per bar and a summary label).

import { h } from './dom.js';
import { t, lang } from './i18n.js';

const HOUR = 3600 * 1000;

/** hours: [{hour, messages, authors}] from GET /activity; `to` is now. */
export function activityChart(hours, to = Date.now()) {
  const end = Math.floor(to / HOUR) * HOUR;
  const slots = [];
  for (let i = 23; i >= 0; i--) slots.push({ at: end - i * HOUR, messages: 0, authors: 0 });
  for (const x of hours) {
    const at = Date.parse(x.hour);
    const s = slots.find((s) => s.at === at);
    if (s) Object.assign(s, { messages: x.messages, authors: x.authors });
  }
  const total = slots.reduce((n, s) => n + s.messages, 0);
  const max = Math.max(1, ...slots.map((s) => s.messages));
  const W = 240, H = 90, top = 12, base = 72, bw = W / 24;
  const locale = lang === 'ko' ? 'ko-KR' : 'en-GB';
  const hourLabel = (at) => new Date(at).toLocaleTimeString(locale, { hour: '2-digit', minute: '2-digit' });
  const svg = h('svg:svg', {
    viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img',
    'aria-label': total ? `${t('activity')}: ${total}` : t('no_activity'),
  });
  svg.append(h('svg:line', { x1: 0, x2: W, y1: base + 0.5, y2: base + 0.5, class: 'axis' }));
  slots.forEach((s, i) => {
    const bh = s.messages ? Math.max(2, ((base - top) * s.messages) / max) : 0;
    const label = t('messages_per_hour', { n: s.messages, hour: hourLabel(s.at) });
    const bar = h('svg:rect', {
      x: (i * bw + 1.5).toFixed(1), y: (base - bh).toFixed(1), width: (bw - 3).toFixed(1), height: bh.toFixed(1),
      rx: 1.5, class: 'bar',
    }, h('svg:title', {}, label));
    svg.append(bar);
    if (i % 6 === 0 || i === 23) {
      svg.append(h('svg:text', { x: (i * bw + bw / 2).toFixed(1), y: H - 4, class: 'tick', 'text-anchor': 'middle' },
        new Date(s.at).toLocaleTimeString(locale, { hour: '2-digit' })));
    }
  });
  // The scale: a faint line at the tallest bar, labelled with its count.
  svg.append(h('svg:line', { x1: 0, x2: W, y1: top + 0.5, y2: top + 0.5, class: 'guide' }));
  svg.append(h('svg:text', { x: 0, y: top - 3, class: 'tick' }, String(max)));
  return svg;
}

/**
 * A week as a bar chart: `days` is [{day: "YYYY-MM-DD", …}] oldest first
 * (GET /v1/admin/stats), `key` the count drawn, `label` the chart's name.
 * Each bar has a <title> ("{n} on {day}") and the chart a summary label.
 */
export function dailyChart(days, key, label) {
  const locale = lang === 'ko' ? 'ko-KR' : 'en-GB';
  const dayLabel = (d) => new Date(`${d}T00:00:00Z`).toLocaleDateString(locale, { weekday: 'short', timeZone: 'UTC' });
  const total = days.reduce((n, d) => n + (d[key] || 0), 0);
  const max = Math.max(1, ...days.map((d) => d[key] || 0));
  const W = 240, H = 90, top = 12, base = 72, bw = W / days.length;
  const svg = h('svg:svg', {
    viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img',
    'aria-label': `${label}: ${total}`, dataset: { total: String(total) },
  });
  svg.append(h('svg:line', { x1: 0, x2: W, y1: base + 0.5, y2: base + 0.5, class: 'axis' }));
  days.forEach((d, i) => {
    const n = d[key] || 0;
    const bh = n ? Math.max(2, ((base - top) * n) / max) : 0;
    svg.append(h('svg:rect', {
      x: (i * bw + 4).toFixed(1), y: (base - bh).toFixed(1), width: (bw - 8).toFixed(1), height: bh.toFixed(1),
      rx: 2, class: 'bar', dataset: { day: d.day, n: String(n) },
    }, h('svg:title', {}, t('n_on_day', { n, day: d.day }))));
    svg.append(h('svg:text', { x: (i * bw + bw / 2).toFixed(1), y: H - 4, class: 'tick', 'text-anchor': 'middle' }, dayLabel(d.day)));
  });
  svg.append(h('svg:line', { x1: 0, x2: W, y1: top + 0.5, y2: top + 0.5, class: 'guide' }));
  svg.append(h('svg:text', { x: 0, y: top - 3, class: 'tick' }, String(max)));
  return svg;
}
