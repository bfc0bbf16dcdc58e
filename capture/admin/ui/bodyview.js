// Body viewers: JSON (pretty, collapsible), text, form fields, image, hex. Captured bytes are
// shown as text nodes; an image is drawn from the stored bytes (a blob: URL), never its origin.

import {h} from "./dom.js";

const HEX_LIMIT = 64 * 1024;

export function bodyBytes(message) {
  if (message.body_encoding === "base64") {
    const raw = atob(message.body);
    const out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }
  return new TextEncoder().encode(message.body);
}

export function header(message, name) {
  const wanted = name.toLowerCase();
  const pair = (message.headers || []).find(([key]) => key.toLowerCase() === wanted);
  return pair ? pair[1] : "";
}

/** The viewer that fits the content type (and the content, for JSON without the right type). */
export function guessView(message) {
  const type = header(message, "content-type").toLowerCase();
  if (type.startsWith("image/")) return "image";
  if (type.includes("json")) return "json";
  if (type.includes("x-www-form-urlencoded")) return "form";
  // Length-prefixed protobuf: binary however it decodes; the gRPC section below reads it.
  if (type.startsWith("application/grpc") || type.includes("protobuf")) return "hex";
  if (message.body_encoding === "base64") return "hex";
  const start = message.body.trimStart()[0];
  if (start === "{" || start === "[") { try { JSON.parse(message.body); return "json"; } catch { /* text */ } }
  return "text";
}

export const VIEWS = {json: "JSON", text: "Text", form: "Form", image: "Image", hex: "Hex"};

export function render(view, message) {
  const data = bodyBytes(message);
  if (!data.length) return h("p.muted", {}, "no body");
  switch (view) {
    case "json": return jsonView(message, data);
    case "form": return formView(data);
    case "image": return imageView(message, data);
    case "hex": return hexView(data);
    default: return h("pre.body", {}, new TextDecoder("utf-8", {fatal: false}).decode(data));
  }
}

function jsonView(message, data) {
  let value;
  try {
    value = JSON.parse(new TextDecoder().decode(data));
  } catch (error) {
    return h("div", {}, h("p.error", {}, `not valid JSON: ${error.message}`), h("pre.body", {}, new TextDecoder().decode(data)));
  }
  return h("div.json", {}, jsonNode(value, null, 0));
}

function jsonNode(value, key, depth) {
  const label = key === null ? [] : [h("span.k", {}, JSON.stringify(key)), ": "];
  if (value !== null && typeof value === "object") {
    const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
    const [open, close] = Array.isArray(value) ? ["[", "]"] : ["{", "}"];
    const details = h("details", {open: depth < 2},
      h("summary", {}, label, open, h("span.muted", {}, ` ${entries.length} ${Array.isArray(value) ? "items" : "keys"} `), close),
      h("div.indent", {}, entries.map(([k, v]) => jsonNode(v, Array.isArray(value) ? null : k, depth + 1))));
    return details;
  }
  const kind = value === null ? "null" : typeof value;
  return h("div.leaf", {}, label, h(`span.v-${kind}`, {}, JSON.stringify(value)));
}

function formView(data) {
  const params = new URLSearchParams(new TextDecoder().decode(data));
  return pairsTable([...params.entries()], "Form fields");
}

function imageView(message, data) {
  const type = header(message, "content-type").split(";")[0].trim() || "application/octet-stream";
  const url = URL.createObjectURL(new Blob([data], {type}));
  return h("img.preview", {src: url, alt: "captured image", onload: () => URL.revokeObjectURL(url)});
}

function hexView(data) {
  const lines = [];
  const shown = Math.min(data.length, HEX_LIMIT);
  for (let offset = 0; offset < shown; offset += 16) {
    const chunk = data.subarray(offset, Math.min(offset + 16, shown));
    const hex = Array.from(chunk, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const text = Array.from(chunk, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${offset.toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  ${text}`);
  }
  if (data.length > shown) lines.push(`… ${data.length - shown} more bytes (download raw to see them)`);
  return h("pre.body.hex", {}, lines.join("\n"));
}

export function pairsTable(pairs, caption) {
  if (!pairs.length) return h("p.muted", {}, `${caption}: none`);
  return h("table.pairs", {},
    h("caption", {}, caption),
    h("tbody", {}, pairs.map(([k, v]) => h("tr", {}, h("th", {scope: "row"}, k), h("td", {}, v)))));
}
