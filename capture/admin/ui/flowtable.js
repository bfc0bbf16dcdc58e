// The flow table: fixed-height rows, only the visible ones in the DOM, fetched from the
// server by window, sorted and filtered there. New flows from the live stream are batched
// into one update per animation frame.

import {get} from "./api.js";
import {h, fill, bytes, ms, clock, statusClass} from "./dom.js";

export const ROW_HEIGHT = 24;
const PAGE = 200;
const OVERSCAN = 10;

export const COLUMNS = [
  {key: "id", title: "#", sort: "time"},
  {key: "time", title: "Time", sort: "time", show: (f) => clock(f.time)},
  {key: "client", title: "Client", sort: "client"},
  {key: "method", title: "Method", sort: "method"},
  {key: "host", title: "Host", sort: "host"},
  {key: "path", title: "Path", sort: "path"},
  {key: "status", title: "Status", sort: "status", show: (f) => f.error ? "error" : (f.status ?? "")},
  {key: "content_type", title: "Type", sort: "type"},
  {key: "response_size", title: "Size", sort: "size", show: (f) => bytes(f.response_size)},
  {key: "duration_ms", title: "Duration", sort: "duration", show: (f) => ms(f.duration_ms)},
];

export class FlowTable {
  constructor({grid, head, viewport, spacer, rows, onOpen, onCount, onFilterError}) {
    Object.assign(this, {grid, head, viewport, spacer, rows, onOpen, onCount, onFilterError});
    this.session = null;
    this.filter = "";
    this.sort = "time";
    this.order = "asc";
    this.total = 0;
    this.pages = new Map(); // page number -> array of summaries
    this.loading = new Map(); // page number -> generation it is being loaded for
    this.generation = 0;
    this.selected = -1; // position in the list
    this.follow = true;
    this.pending = [];
    this.frame = 0;
    this.refetchTimer = 0;
    this.drawHead();
    viewport.addEventListener("scroll", () => this.scrolled());
    new ResizeObserver(() => this.draw()).observe(viewport);
    grid.addEventListener("keydown", (event) => this.key(event));
  }

  drawHead() {
    fill(this.head, COLUMNS.map((column) => {
      const sorted = column.key !== "id" && this.sort === column.sort;
      const ariaSort = sorted ? (this.order === "asc" ? "ascending" : "descending") : "none";
      return h(`div.cell.c-${column.key}`, {role: "columnheader", "aria-sort": ariaSort},
        h("button", {type: "button", onclick: () => this.sortBy(column)},
          column.title, sorted ? (this.order === "asc" ? " ▲" : " ▼") : ""));
    }));
  }

  sortBy(column) {
    if (this.sort === column.sort) this.order = this.order === "asc" ? "desc" : "asc";
    else { this.sort = column.sort; this.order = "asc"; }
    this.drawHead();
    this.reload();
  }

  open(session) {
    this.session = session;
    this.selected = -1;
    this.reload();
  }

  setFilter(filter) {
    this.filter = filter;
    this.selected = -1;
    this.reload();
  }

  /** Is the view the plain capture order, where a new flow is simply the next row? */
  get appendable() { return !this.filter && this.sort === "time" && this.order === "asc"; }

  reload() {
    this.generation += 1;
    this.pages.clear();
    this.loading.clear();
    this.pending = [];
    if (this.session === null) { this.setTotal(0); this.draw(); return; }
    this.viewport.scrollTop = 0; // a new filter or order starts at the top (or, following, at the end once loaded)
    this.load(0, true);
  }

  firstVisiblePage() { return Math.floor(this.viewport.scrollTop / ROW_HEIGHT / PAGE); }

  async load(page, first = false) {
    const generation = this.generation;
    if (this.pages.has(page) || this.loading.get(page) === generation) return;
    this.loading.set(page, generation);
    const params = new URLSearchParams({limit: PAGE, offset: page * PAGE, sort: this.sort, order: this.order});
    if (this.filter) params.set("filter", this.filter);
    let result;
    try {
      result = await get(`/api/sessions/${this.session}/flows?${params}`);
    } catch (error) {
      if (generation === this.generation) {
        this.loading.delete(page);
        if (error.status === 400) this.onFilterError(error.message);
        if (first) { this.setTotal(0); this.draw(); }
      }
      return;
    }
    if (generation !== this.generation) return;
    this.loading.delete(page);
    if (first) this.onFilterError("");
    this.pages.set(page, result.flows);
    this.setTotal(result.total);
    if (first && this.follow) this.scrollToEnd();
    this.draw();
  }

  setTotal(total) {
    this.total = total;
    this.spacer.style.height = `${total * ROW_HEIGHT}px`;
    this.grid.setAttribute("aria-rowcount", String(total + 1));
    this.onCount(total);
  }

  flowAt(position) {
    const page = this.pages.get(Math.floor(position / PAGE));
    return page ? page[position % PAGE] : undefined;
  }

  /** A flow from the live stream: queued, drawn at the next animation frame with the others. */
  added(summary) {
    this.pending.push(summary);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    const batch = this.pending;
    this.pending = [];
    if (!batch.length || this.session === null) return;
    if (!this.appendable) { this.refetchSoon(); return; }
    for (const summary of batch) {
      const position = this.total;
      const page = Math.floor(position / PAGE);
      if (this.pages.has(page)) this.pages.get(page)[position % PAGE] = summary;
      else if (position % PAGE === 0) this.pages.set(page, [summary]);
      this.total += 1;
    }
    this.setTotal(this.total);
    if (this.follow) this.scrollToEnd();
    this.draw();
  }

  /** Sorted or filtered views learn their new rows from the server, at most twice a second. */
  refetchSoon() {
    if (this.refetchTimer) return;
    this.refetchTimer = setTimeout(() => {
      this.refetchTimer = 0;
      this.generation += 1;
      this.pages.clear();
      this.loading.clear();
      this.load(this.firstVisiblePage(), true);
    }, 500);
  }

  scrollToEnd() {
    this.viewport.scrollTop = this.viewport.scrollHeight;
  }

  scrolled() {
    const atEnd = this.viewport.scrollTop + this.viewport.clientHeight >= this.viewport.scrollHeight - ROW_HEIGHT;
    if (!atEnd && this.follow && this.total * ROW_HEIGHT > this.viewport.clientHeight) this.onScrolledAway?.();
    this.draw();
  }

  draw() {
    const top = this.viewport.scrollTop;
    const height = this.viewport.clientHeight || 400;
    const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(this.total, Math.ceil((top + height) / ROW_HEIGHT) + OVERSCAN);
    for (let page = Math.floor(first / PAGE); page * PAGE < last; page++) this.load(page);
    this.rows.style.transform = `translateY(${first * ROW_HEIGHT}px)`;
    const made = [];
    for (let position = first; position < last; position++) made.push(this.row(position));
    fill(this.rows, made);
  }

  row(position) {
    const flow = this.flowAt(position);
    const selected = position === this.selected;
    if (!flow) {
      return h("div.row.loading", {role: "row", "aria-rowindex": position + 2},
        h("div.cell", {role: "gridcell"}, "…"));
    }
    return h(`div.row.${statusClass(flow)}`, {
      role: "row", "aria-rowindex": position + 2, "aria-selected": selected ? "true" : "false",
      dataset: {id: flow.id}, onclick: () => this.select(position, true),
    }, COLUMNS.map((column) => h(`div.cell.c-${column.key}`, {role: "gridcell"},
      column.show ? column.show(flow) : (flow[column.key] ?? ""))));
  }

  select(position, openIt) {
    if (position < 0 || position >= this.total) return;
    this.selected = position;
    const top = position * ROW_HEIGHT;
    if (top < this.viewport.scrollTop) this.viewport.scrollTop = top;
    else if (top + ROW_HEIGHT > this.viewport.scrollTop + this.viewport.clientHeight) {
      this.viewport.scrollTop = top + ROW_HEIGHT - this.viewport.clientHeight;
    }
    this.draw();
    const flow = this.flowAt(position);
    if (openIt && flow) this.onOpen(flow.id);
  }

  key(event) {
    const visible = Math.max(1, Math.floor(this.viewport.clientHeight / ROW_HEIGHT) - 1);
    const moves = {ArrowDown: 1, ArrowUp: -1, PageDown: visible, PageUp: -visible};
    if (event.key in moves) {
      event.preventDefault();
      const start = this.selected < 0 ? (moves[event.key] > 0 ? -1 : this.total) : this.selected;
      this.select(Math.min(this.total - 1, Math.max(0, start + moves[event.key])), false);
      this.onScrolledAway?.();
    } else if (event.key === "Home" || event.key === "End") {
      event.preventDefault();
      this.select(event.key === "Home" ? 0 : this.total - 1, false);
    } else if (event.key === "Enter") {
      event.preventDefault();
      this.select(this.selected, true);
    } else if (event.key === "Escape") {
      this.onClose?.();
    }
  }
}
