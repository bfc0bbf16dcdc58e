// The flow detail: summary, timings bar, connection facts, request and response side by side
// (headers in order, query, cookies, body viewers), WebSocket and gRPC messages, copy as curl,
// replay and edit-and-resend.

import {get, post} from "./api.js";
import {h, fill, bytes, ms, clock, statusClass} from "./dom.js";
import {guessView, pairsTable, render, VIEWS} from "./bodyview.js";

export class FlowDetail {
  constructor(node, {onClose, onReplayed}) {
    this.node = node;
    this.onClose = onClose;
    this.onReplayed = onReplayed;
    this.flow = null;
  }

  async show(flowId) {
    this.node.hidden = false;
    fill(this.node, h("p.muted", {}, `loading flow ${flowId}…`));
    try {
      this.flow = await get(`/api/flows/${flowId}`);
    } catch (error) {
      fill(this.node, h("p.error", {role: "alert"}, error.message));
      return;
    }
    this.draw();
  }

  close() {
    this.node.hidden = true;
    this.flow = null;
    fill(this.node);
  }

  draw() {
    const flow = this.flow;
    const title = `${flow.method} ${flow.url}`;
    fill(this.node,
      h("div.detail-head", {},
        h("h2", {id: "detail-title"}, h(`span.badge.${statusClass(flow)}`, {}, flow.error ? "error" : String(flow.status ?? "…")), " ", title),
        h("div.actions", {},
          h("button", {type: "button", onclick: () => this.copyCurl()}, "Copy as curl"),
          h("button", {type: "button", onclick: () => this.replay()}, "Replay"),
          h("button", {type: "button", onclick: () => this.editForm()}, "Edit and resend"),
          h("button", {type: "button", "aria-label": "Close detail", onclick: () => this.onClose()}, "✕"))),
      h("div", {id: "detail-extra"}),
      flow.error ? h("p.error", {}, `Error: ${flow.error}`) : null,
      facts(flow),
      timings(flow),
      h("div.sides", {},
        side("Request", flow.request, flow, true),
        flow.response ? side("Response", flow.response, flow, false)
          : h("section.side", {"aria-label": "Response"}, h("h3", {}, "Response"), h("p.muted", {}, flow.error ? "no response" : "no response yet"))),
      flow.websocket ? websocket(flow) : null,
      flow.grpc ? grpc(flow.grpc) : null);
  }

  extra(...children) { fill(this.node.querySelector("#detail-extra"), children); }

  async copyCurl() {
    let command;
    try {
      command = await get(`/api/flows/${this.flow.id}/curl`);
    } catch (error) {
      this.extra(h("p.error", {role: "alert"}, error.message));
      return;
    }
    let copied = false;
    try { await navigator.clipboard.writeText(command); copied = true; } catch { /* shown below instead */ }
    this.extra(h("p", {role: "status"}, copied ? "Copied to the clipboard:" : "curl command:"),
      h("pre.body", {"aria-label": "curl command"}, command));
  }

  async replay(overrides) {
    this.extra(h("p.muted", {role: "status"}, "replaying…"));
    let result;
    try {
      result = await post(`/api/flows/${this.flow.id}/replay`, overrides || {});
    } catch (error) {
      this.extra(h("p.error", {role: "alert"}, `Replay failed: ${error.message}`));
      return;
    }
    this.onReplayed(result);
    this.flow = result;
    this.draw();
    this.extra(h("p", {role: "status"}, `Replayed as flow ${result.id}.`));
  }

  editForm() {
    const flow = this.flow;
    const text = flow.request.body_encoding === "base64" ? "" : flow.request.body;
    const headers = flow.request.headers.map(([k, v]) => `${k}: ${v}`).join("\n");
    const method = h("input", {name: "method", value: flow.method});
    const url = h("input", {name: "url", value: flow.url});
    const headerBox = h("textarea", {name: "headers", rows: 6});
    headerBox.value = headers;
    const bodyBox = h("textarea", {name: "body", rows: 6});
    bodyBox.value = text;
    const form = h("form.form.edit", {"aria-label": "Edit and resend", onsubmit: (event) => {
      event.preventDefault();
      const pairs = headerBox.value.split("\n").filter((line) => line.includes(":"))
        .map((line) => { const i = line.indexOf(":"); return [line.slice(0, i).trim(), line.slice(i + 1).trim()]; });
      this.replay({method: method.value, url: url.value, headers: pairs, body: bodyBox.value});
    }},
      h("label", {}, "Method ", method), h("label", {}, "URL ", url),
      h("label", {}, "Headers ", headerBox), h("label", {}, "Body ", bodyBox),
      h("button", {type: "submit"}, "Send"));
    this.extra(form);
  }
}

function facts(flow) {
  const rows = [
    ["Client", `${flow.client}:${flow.client_port}`],
    ["Server", [flow.server_ip, flow.port].filter((x) => x).join(" port ")],
    ["Protocol", `${flow.scheme.toUpperCase()} ${flow.http_version || ""}`.trim()],
    ["Kind", flow.kind],
    ["HTTP/2 stream", flow.stream_id ? String(flow.stream_id) : ""],
    ["Sessions", (flow.session_ids || []).join(", ")],
  ];
  for (const [side, facts] of [["client", flow.client_tls], ["origin", flow.server_tls]]) {
    if (!facts) continue;
    rows.push([`TLS with the ${side}`, [facts.version, facts.cipher].filter((x) => x).join(", ")]);
    if (facts.sni) rows.push([`SNI (${side})`, facts.sni]);
    if (facts.alpn) rows.push([`ALPN (${side})`, facts.alpn]);
  }
  return h("details.facts", {}, h("summary", {}, "Connection and TLS"), pairsTable(rows.filter(([, v]) => v !== ""), "Connection and TLS"));
}

function timings(flow) {
  const t = flow.timings;
  const start = Date.parse(t.start);
  const points = [["request sent", t.request_done], ["waiting", t.response_start], ["response", t.end]];
  const end = t.end ? Date.parse(t.end) : null;
  if (end === null) return h("p.muted", {}, "in progress");
  const total = Math.max(1, end - start);
  let previous = start;
  const parts = [];
  for (const [name, iso] of points) {
    if (!iso) continue;
    const at = Date.parse(iso);
    parts.push([name, Math.max(0, at - previous)]);
    previous = at;
  }
  return h("div.timings", {"aria-label": "Timings"},
    h("div.bar", {role: "img", "aria-label": parts.map(([n, d]) => `${n} ${ms(d)}`).join(", ")},
      parts.map(([name, d]) => {
        const segment = h(`span.t-${name.split(" ")[0]}`);
        segment.style.width = `${(d / total) * 100}%`; // through the CSSOM: the policy allows no style attributes
        return segment;
      })),
    h("p.legend", {}, parts.map(([name, d]) => h(`span.t-${name.split(" ")[0]}`, {}, `${name} ${ms(d)}`)), ` total ${ms(flow.duration_ms)}`));
}

function side(title, message, flow, isRequest) {
  const headers = message.headers || [];
  const parts = [h("h3", {}, title, isRequest ? "" : ` ${message.status} ${message.reason || ""}`)];
  parts.push(h("p.muted", {}, `${bytes(message.size)} on the wire`,
    message.stored_size !== message.size ? `, ${bytes(message.stored_size)} stored` : "",
    message.truncated ? " (truncated)" : ""));
  parts.push(pairsTable(headers, "Headers"));
  if (isRequest) {
    const query = flow.path.includes("?") ? [...new URLSearchParams(flow.path.split("?").slice(1).join("?")).entries()] : [];
    parts.push(pairsTable(query, "Query"));
    parts.push(pairsTable(cookiePairs(headers.filter(([k]) => k.toLowerCase() === "cookie").map(([, v]) => v).join("; ")), "Cookies"));
  } else {
    const set = headers.filter(([k]) => k.toLowerCase() === "set-cookie").map(([, v]) => {
      const [pair] = v.split(";");
      const i = pair.indexOf("=");
      return [pair.slice(0, i).trim(), v.slice(i + 1).trim()];
    });
    parts.push(pairsTable(set, "Cookies set"));
  }
  parts.push(body(message, title, flow.id));
  if ((message.trailers || []).length) parts.push(pairsTable(message.trailers, "Trailers"));
  return h("section.side", {"aria-label": title}, parts);
}

function cookiePairs(text) {
  return text.split(";").map((p) => p.trim()).filter((p) => p).map((p) => {
    const i = p.indexOf("=");
    return i < 0 ? [p, ""] : [p.slice(0, i), p.slice(i + 1)];
  });
}

function body(message, title, flowId) {
  const out = h("div.view");
  let view = guessView(message);
  const select = h("select", {"aria-label": `${title} body view`, onchange: () => { view = select.value; fill(out, render(view, message)); }},
    Object.entries(VIEWS).map(([key, name]) => h("option", {value: key, selected: key === view}, name)));
  fill(out, render(view, message));
  const download = h("a", {href: `/api/flows/${flowId}/${title.toLowerCase()}/body`, download: ""}, "Download raw");
  return h("div.bodybox", {},
    h("div.bodybar", {}, h("strong", {}, "Body"), select, download, h("span.muted", {}, decodingNote(message))),
    out);
}

/** What was done to the stored bytes to show them, in words. */
function decodingNote(message) {
  const notes = [];
  if (message.decoded_from) notes.push(`decoded from ${message.decoded_from}: ${bytes(message.stored_size)} stored, ${bytes(message.decoded_size)} shown`);
  if (message.decoded_cut) notes.push("cut at the decoding limit");
  if (message.decoded_partial) notes.push("the stored bytes end early: decoded as far as they go");
  if (message.decode_error) notes.push(`shown as stored: ${message.decode_error}`);
  return notes.join("; ");
}

function websocket(flow) {
  const ws = flow.websocket;
  return h("section.messages", {"aria-label": "WebSocket messages"},
    h("h3", {}, `WebSocket messages (${ws.message_count})`),
    ws.close ? h("p.muted", {}, `closed by ${ws.close.closed_by}, code ${ws.close.code} ${ws.close.reason || ""}`) : h("p.muted", {}, ws.open ? "open" : ""),
    h("table.plain", {}, h("thead", {}, h("tr", {}, ["", "Time", "Type", "Size", "Content"].map((c) => h("th", {}, c)))),
      h("tbody", {}, ws.messages.map((m) => h("tr", {},
        h("td", {}, m.from_client ? "→" : "←"), h("td", {}, m.time), h("td", {}, m.type),
        h("td", {}, bytes(m.size)), h("td", {}, m.omitted ? h("span.muted", {}, "(not stored: responses are not captured)")
          : h("code.wrap", {}, m.encoding === "base64" ? `(base64) ${m.content}` : m.content)))))));
}

function grpc(section) {
  return h("section.messages", {"aria-label": "gRPC messages"},
    h("h3", {}, `gRPC ${section.service}/${section.method}`),
    section.status !== null ? h("p", {}, `grpc-status ${section.status} ${section.status_message || ""}`) : null,
    section.messages.map((m, i) => h("details", {open: i < 4},
      h("summary", {}, `${m.from_client ? "request" : "response"} message ${i + 1}${m.time ? ` at ${clock(m.time)}` : ""}, ${bytes(m.length)}${m.compressed ? ", compressed" : ""}${m.cut ? ", cut" : ""}`),
      h("pre.body", {}, m.fields ? JSON.stringify(m.fields, null, 1) : `(base64) ${m.data}`))));
}
