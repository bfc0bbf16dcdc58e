// Overview charts from /api/sessions/ID/stats: horizontal SVG bars, labels as text nodes.

import {h, svg, bytes, ms} from "./dom.js";

const TOP = 10;
const BAR = 18;
const LABEL = 180;
const WIDTH = 460;

export function barChart(title, rows, value, show) {
  const top = rows.slice(0, TOP);
  const max = Math.max(1, ...top.map(value));
  const height = top.length * (BAR + 4) + 4;
  const chart = svg("svg", {viewBox: `0 0 ${WIDTH} ${Math.max(height, 24)}`, role: "img", "aria-label": title, class: "chart"});
  top.forEach((row, i) => {
    const y = 4 + i * (BAR + 4);
    const width = ((WIDTH - LABEL - 80) * value(row)) / max;
    const label = svg("text", {x: LABEL - 6, y: y + BAR - 5, "text-anchor": "end", class: "label"}, clip(String(row.key || "(none)"), 26));
    label.append(svg("title", {}, String(row.key || "(none)")));
    chart.append(label,
      svg("rect", {x: LABEL, y, width: Math.max(1, width), height: BAR, rx: 2, class: "barfill"}),
      svg("text", {x: LABEL + width + 6, y: y + BAR - 5, class: "value"}, show(value(row))));
  });
  if (!top.length) chart.append(svg("text", {x: 4, y: 16, class: "label"}, "no flows yet"));
  return h("figure.chartbox", {}, h("figcaption", {}, title), chart);
}

function clip(text, n) { return text.length > n ? text.slice(0, n - 1) + "…" : text; }

export function overview(stats) {
  const count = (row) => row.count;
  const size = (row) => row.response_bytes + row.request_bytes;
  const totals = [
    ["Flows", String(stats.flows)],
    ["Sent", bytes(stats.request_bytes)],
    ["Received", bytes(stats.response_bytes)],
    ["Mean duration", stats.flows ? ms(stats.duration_ms / stats.flows) : ""],
    ["Span", ms(stats.span_ms)],
  ];
  const charts = [
    barChart("Flows by host", stats.by_host, count, String),
    barChart("Flows by method", stats.by_method, count, String),
    barChart("Flows by status", stats.by_status_class, count, String),
    barChart("Flows by content type", stats.by_content_type, count, String),
    barChart("Bytes by host", [...stats.by_host].sort((a, b) => size(b) - size(a)), size, bytes),
    barChart("Bytes by content type", [...stats.by_content_type].sort((a, b) => size(b) - size(a)), size, bytes),
  ];
  return {totals: totals.map(([k, v]) => h("div.total", {}, h("span.muted", {}, k), h("strong", {}, v))), charts};
}
