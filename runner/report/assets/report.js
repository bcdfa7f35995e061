"use strict";
// onnxcam report: reads the head (run facts, figures) from the page and the entries from report/items-*.js,
// which call onnxcamChunk one after another; only the gallery rows in view are in the document.
(() => {
  const HEAD = JSON.parse(document.getElementById("head").textContent);
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                  "#17becf"];
  const STATUS = ["ok", "error", "no_target"];
  const INFO_WIDTH = 250, HEADER_HEIGHT = 24, OVERSCAN = 3;
  const data = {img: [], low: [], st: [], err: new Map(), w: [], h: [], pc: [], ps: [], tc: [], ts: [], ms: [], m: {},
                rk: [], rs: [], rf: []};  // a segmenter's entries: region kind (predicted | given), share, mask PNG
  const COLUMN_KEYS = ["st", "pc", "ps", "tc", "ts", "ms", ...(HEAD.regions ? ["rk", "rs", "rf"] : [])];
  for (const metric of HEAD.metrics) data.m[metric] = [];
  const curves = new Map();  // chunk number -> {metric: [per entry: curve texts per method, or null]}
  const view = {search: "", cls: "", status: "", sort: "index", descending: false, size: 140, hidden: new Set()};
  let order = new Int32Array(0), rowHeight = 0, rows = new Map(), viewerPosition = -1;

  const $ = (id) => document.getElementById(id);
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }
  const encode = (path) => path.split("/").map(encodeURIComponent).join("/");
  const score = (value) => (value === null || value === undefined ? "–" : value.toFixed(3));
  const label = (number) => (number === null ? "–" : `${HEAD.labels[String(number)] || "?"} (${number})`);
  const percent = (value) => (value === null || value === undefined ? "–" : `${(100 * value).toFixed(1)}%`);
  const region = (i) => `${data.rk[i] || "–"} region, ${percent(data.rs[i])} of the pixels`;
  const figure = (value) => (Math.abs(value) >= 100 ? value.toFixed(1) : Math.abs(value) >= 1 ? value.toFixed(2)
                             : value.toFixed(3));

  // ---- paths: the write stage's names (thumbs/<key>.<method>.<class>.jpg, thumbs/<key>.photo.jpg)
  const stem = (i, method) => `${data.img[i]}.${method}.${data.tc[i]}`;
  function photoSources(i, large) {
    const sources = [];
    const thumb = HEAD.thumbs && encode(`${HEAD.thumbs}/${data.img[i]}${HEAD.photoSuffix}`);
    const base = HEAD.photoBase;
    const original = base && (base.startsWith("file:") ? base + encode(data.img[i]) : encode(base + data.img[i]));
    for (const source of large ? [original, thumb] : [thumb, original]) if (source) sources.push(source);
    return sources;
  }
  function overlaySources(i, method, large) {
    const thumb = HEAD.thumbs && encode(`${HEAD.thumbs}/${stem(i, method)}.jpg`);
    const full = HEAD.overlayExt && encode(`${stem(i, method)}.${HEAD.overlayExt}`);
    return (large ? [full, thumb] : [thumb, full]).filter(Boolean);
  }
  const regionSources = (i) => (data.rf[i] ? [encode(data.rf[i])] : []);
  function picture(sources, width, height, alt) {
    if (!sources.length) {
      return el("div", {className: "blank", textContent: "no picture", style: width ? `width:${width}px;height:${height}px` : ""});
    }
    const image = el("img", {alt, decoding: "async", loading: "lazy"});
    if (width) Object.assign(image.style, {width: `${width}px`, height: `${height}px`});
    let next = 1;
    image.onerror = () => {
      if (next < sources.length) image.src = sources[next++];
      else image.replaceWith(el("div", {className: "blank", textContent: "missing",
                                        style: width ? `width:${width}px;height:${height}px` : ""}));
    };
    image.src = sources[0];
    return image;
  }

  // ---- data: chunks append column by column
  window.onnxcamChunk = (number, chunk) => {
    const offset = data.img.length;
    for (let j = 0; j < chunk.n; j++) {
      data.img.push(chunk.img[j]);
      data.low.push(chunk.img[j].toLowerCase());
      data.w.push(chunk.wh[2 * j]);
      data.h.push(chunk.wh[2 * j + 1]);
    }
    for (const key of COLUMN_KEYS) for (const value of chunk[key]) data[key].push(value);
    for (const [j, reason] of Object.entries(chunk.err)) data.err.set(offset + Number(j), reason);
    for (const metric of HEAD.metrics) {
      const values = chunk.m[metric];
      for (let j = 0; j < chunk.n; j++) data.m[metric].push(values ? values[j] : null);
    }
  };
  window.onnxcamCurves = (number, chunk) => curves.set(number, chunk);
  const chunkName = (kind, number) => `${HEAD.dataDir}/${kind}-${String(number).padStart(5, "0")}.js`;
  function loadScript(source) {
    return new Promise((resolve) => {
      const script = el("script", {src: source});
      script.onload = () => { script.remove(); resolve(true); };
      script.onerror = () => { script.remove(); resolve(false); };
      document.head.append(script);
    });
  }
  async function loadAll() {
    let lastRefresh = 0;
    for (let k = 0; k < HEAD.chunks; k++) {
      $("loading").textContent = `loading ${Math.round(100 * k / HEAD.chunks)}%…`;
      if (!await loadScript(chunkName("items", k))) {
        $("loading").textContent = `${chunkName("items", k)} is missing: rebuild with onnxcam report ${HEAD.title}`;
        return;
      }
      if (k === 0 || k === HEAD.chunks - 1 || performance.now() - lastRefresh > 400) {
        refresh(false);
        lastRefresh = performance.now();
      }
    }
    $("loading").textContent = "";
    document.body.dataset.loaded = "true";
  }

  // ---- filtering and sorting
  function methodValue(metric, i, methodNumber) {
    const values = data.m[metric][i];
    if (!values) return null;
    const at = data.ms[i].indexOf(methodNumber);
    return at < 0 ? null : values[at];
  }
  function sortKey() {
    const sort = view.sort;
    if (sort === "pred") return (i) => data.ps[i];
    if (sort === "target") return (i) => data.ts[i];
    if (sort === "share") return (i) => data.rs[i];
    if (sort.startsWith("metric:")) {
      const [, metric, method] = sort.split(":");
      return (i) => methodValue(metric, i, Number(method));
    }
    return null;
  }
  function refresh(resetScroll) {
    const total = data.img.length, picked = new Int32Array(total);
    const search = view.search.toLowerCase(), cls = view.cls === "" ? null : Number(view.cls);
    const status = view.status === "" ? null : Number(view.status);
    let n = 0;
    for (let i = 0; i < total; i++) {
      if (status !== null && data.st[i] !== status) continue;
      if (cls !== null && data.tc[i] !== cls && (HEAD.regions || data.pc[i] !== cls)) continue;  // segmenter: explained
      if (search && !data.low[i].includes(search)) continue;
      picked[n++] = i;
    }
    order = picked.slice(0, n);
    const key = sortKey(), sign = view.descending ? -1 : 1;
    if (key) {
      const values = new Map();
      for (const i of order) values.set(i, key(i));
      order.sort((a, b) => {
        const x = values.get(a), y = values.get(b);
        if (x === null || x === undefined) return y === null || y === undefined ? a - b : 1;
        if (y === null || y === undefined) return -1;
        return x === y ? a - b : (x < y ? -sign : sign);
      });
    } else if (view.sort === "name") {
      order.sort((a, b) => (data.img[a] === data.img[b] ? a - b : (data.img[a] < data.img[b] ? -sign : sign)));
    } else if (view.descending) {
      order.reverse();
    }
    $("shown").textContent = `${order.length.toLocaleString()} of ${total.toLocaleString()} entries`;
    $("shown").dataset.count = String(order.length);
    layout(resetScroll);
  }

  // ---- the gallery: a fixed row height, only the rows in view in the document
  const pictureColumns = () => (HEAD.regions ? 2 : 1);  // the photo, and a segmenter's region
  const shownMethods = () => HEAD.methods.map((name, number) => ({name, number})).filter((m) => !view.hidden.has(m.name));
  function layout(resetScroll) {
    const gallery = $("gallery"), cell = view.size + 8, methods = shownMethods();
    rowHeight = Math.max(view.size + 10, 86);
    const width = INFO_WIDTH + cell * (pictureColumns() + methods.length);
    $("spacer").style.height = `${order.length * rowHeight}px`;
    $("spacer").style.width = `${width}px`;
    const columns = $("columns");
    columns.replaceChildren(el("div", {textContent: "image", style: `width:${INFO_WIDTH}px`}),
                            el("div", {textContent: "photo", style: `width:${cell}px`}),
                            HEAD.regions ? el("div", {textContent: "region", style: `width:${cell}px`}) : null,
                            ...methods.map((m) => el("div", {textContent: m.name, title: m.name, style: `width:${cell}px`})));
    columns.style.width = `${width}px`;
    for (const row of rows.values()) row.remove();
    rows = new Map();
    if (resetScroll) gallery.scrollTop = 0;
    render();
  }
  function render() {
    const gallery = $("gallery");
    if (!gallery.clientHeight) return;
    const top = Math.max(0, gallery.scrollTop - HEADER_HEIGHT);
    const first = Math.max(0, Math.floor(top / rowHeight) - OVERSCAN);
    const last = Math.min(order.length - 1, Math.ceil((top + gallery.clientHeight) / rowHeight) + OVERSCAN);
    for (const [position, row] of rows) {
      if (position < first || position > last) { row.remove(); rows.delete(position); }
    }
    const methods = shownMethods(), spacer = $("spacer");
    for (let position = first; position <= last; position++) {
      if (rows.has(position)) continue;
      const row = makeRow(order[position], methods);
      row.style.top = `${position * rowHeight}px`;
      row.style.height = `${rowHeight}px`;
      row.onclick = () => openViewer(position);
      rows.set(position, row);
      spacer.append(row);
    }
  }
  function makeRow(i, methods) {
    const size = view.size, status = STATUS[data.st[i]];
    const info = el("div", {className: "info"},
                    el("div", {className: "name", textContent: data.img[i], title: data.img[i]}));
    if (status !== "ok") info.append(el("span", {className: `badge ${status}`, textContent: status.replace("_", " ")}));
    if (status === "error") info.append(el("div", {className: "reason", textContent: data.err.get(i) || ""}));
    if (data.pc[i] !== null) {
      info.append(el("div", {className: "line", title: "predicted (top-1)"},
                     el("span", {className: "muted", textContent: "predicted "}),
                     `${label(data.pc[i])} ${score(data.ps[i])}`));
    }
    if (data.tc[i] !== null) {
      info.append(el("div", {className: "line", title: "explained class"},
                     el("span", {className: "muted", textContent: "explained "}),
                     `${label(data.tc[i])} ${score(data.ts[i])}`));
    }
    if (HEAD.regions && data.tc[i] !== null) {
      info.append(el("div", {className: "line region", title: "the pixels whose mean class score is explained",
                             textContent: region(i)}));
    }
    if (view.sort.startsWith("metric:")) {
      const [, metric, method] = view.sort.split(":");
      const value = methodValue(metric, i, Number(method));
      info.append(el("div", {className: "line"}, el("span", {className: "muted", textContent: `${metric} `}),
                     value === null ? "–" : figure(value)));
    }
    const row = el("div", {className: "row"}, info);
    row.dataset.image = data.img[i];
    row.dataset.target = data.tc[i] === null ? "" : String(data.tc[i]);
    row.append(el("div", {className: "cell"}, data.st[i] === 1 ? el("div", {className: "blank", textContent: "—",
                  style: `width:${size}px;height:${size}px`}) : picture(photoSources(i, false), size, size, "photo")));
    if (HEAD.regions) {
      row.append(el("div", {className: "cell", title: "region"}, data.rf[i] ? picture(regionSources(i), size, size, "region")
        : el("div", {className: "blank", textContent: "—", style: `width:${size}px;height:${size}px`})));
    }
    for (const method of methods) {
      const has = data.ms[i].includes(method.number);
      row.append(el("div", {className: "cell", title: method.name}, has
        ? picture(overlaySources(i, method.name, false), size, size, method.name)
        : el("div", {className: "blank", textContent: "—", style: `width:${size}px;height:${size}px`})));
    }
    return row;
  }

  // ---- the large view of one entry
  async function openViewer(position) {
    if (position < 0 || position >= order.length) return;
    viewerPosition = position;
    const i = order[position], status = STATUS[data.st[i]];
    $("viewer").hidden = false;
    const title = $("viewer-title");
    title.replaceChildren(el("b", {textContent: data.img[i]}), ` · ${position + 1} of ${order.length}`,
                          el("br"), status === "error" ? `error: ${data.err.get(i)}` : "");
    if (data.pc[i] !== null) title.append(`predicted ${label(data.pc[i])} ${score(data.ps[i])}`);
    if (data.tc[i] !== null) title.append(` · explained ${label(data.tc[i])} ${score(data.ts[i])}`);
    if (HEAD.regions && data.tc[i] !== null) title.append(` · ${region(i)}`);
    if (data.w[i]) title.append(` · ${data.w[i]}×${data.h[i]} px`);
    const body = $("viewer-body");
    body.replaceChildren();
    body.scrollTop = 0;
    if (status === "error") return;
    const pictures = el("div", {className: "pictures"});
    const photo = photoSources(i, true);
    pictures.append(el("figure", {className: "picture"}, picture(photo, 0, 0, "photo"),
                       el("figcaption", {}, "photo ", photo.length ? el("a", {href: photo[0], target: "_blank",
                                                                              textContent: "open"}) : null)));
    if (HEAD.regions && data.rf[i]) {
      const card = el("figure", {className: "picture"}, picture(regionSources(i), 0, 0, "region"),
                      el("figcaption", {}, `${region(i)} `, el("a", {href: regionSources(i)[0], target: "_blank",
                                                                     textContent: "open"})));
      card.dataset.region = "true";
      pictures.append(card);
    }
    const methods = data.ms[i].map((number) => HEAD.methods[number]);
    for (const method of methods) {
      const sources = overlaySources(i, method, true);
      const card = el("figure", {className: "picture"}, picture(sources, 0, 0, method),
                      el("figcaption", {}, `${method} `, sources.length ? el("a", {href: sources[0], target: "_blank",
                                                                                   textContent: "open"}) : null));
      card.dataset.method = method;
      pictures.append(card);
    }
    body.append(pictures);
    const metrics = HEAD.metrics.filter((metric) => data.m[metric][i]);
    if (metrics.length) {
      body.append(el("h2", {textContent: "Faithfulness of each method on this image"}),
                  figuresTable(methods, metrics, (method, metric) => {
                    const value = data.m[metric][i][data.ms[i].indexOf(HEAD.methods.indexOf(method))];
                    return value === null ? null : {value, text: figure(value)};
                  }));
    }
    const chunk = Math.floor(i / HEAD.chunkSize);
    if (HEAD.curveChunks.includes(chunk)) {
      if (!curves.has(chunk)) await loadScript(chunkName("curves", chunk));
      if (viewerPosition !== position || !curves.has(chunk)) return;
      const local = i % HEAD.chunkSize, charts = el("div", {className: "charts"});
      for (const metric of HEAD.curves) {
        const texts = (curves.get(chunk)[metric] || [])[local];
        if (!texts) continue;
        const series = methods.map((method, k) => ({name: method, auc: (data.m[metric][i] || [])[k],
                                                    values: texts[k] ? texts[k].split(" ").map(Number) : null}))
          .filter((s) => s.values);
        charts.append(chart(`${metric}: target score on this image`, metric === "deletion"
          ? "fraction of pixels removed" : "fraction of pixels inserted", series,
          (s) => (s.auc === null || s.auc === undefined ? s.name : `${s.name} AUC ${figure(s.auc)}`)));
      }
      body.append(el("h2", {textContent: "Deletion and insertion curves"}), charts);
    }
  }
  function closeViewer() {
    $("viewer").hidden = true;
    viewerPosition = -1;
  }

  // ---- tables and charts
  function figuresTable(methods, metrics, cellOf) {
    const best = {};
    for (const metric of metrics) {
      const values = methods.map((method) => cellOf(method, metric)).filter(Boolean).map((cell) => cell.value);
      const top = HEAD.higherIsBetter[metric] ? Math.max(...values) : Math.min(...values);
      if (values.some((value) => value !== top)) best[metric] = top;  // no winner when all are equal
    }
    const table = el("table", {className: "figures"});
    table.append(el("tr", {}, el("th", {textContent: "method"}), ...metrics.map((metric) => el("th", {
      textContent: `${metric} ${HEAD.higherIsBetter[metric] ? "↑" : "↓"}`,
      title: HEAD.higherIsBetter[metric] ? "higher is better" : "lower is better"}))));
    for (const method of methods) {
      const row = el("tr", {}, el("td", {textContent: method}));
      for (const metric of metrics) {
        const cell = cellOf(method, metric);
        row.append(el("td", {textContent: cell ? cell.text : "–",
                             className: cell && best[metric] === cell.value ? "best" : ""}));
      }
      table.append(row);
    }
    return table;
  }
  function chart(title, xLabel, series, legend) {
    const width = 600, height = 300, left = 46, right = 200, top = 30, bottom = 42;
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "chart");
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    const add = (tag, attributes, text) => {
      const node = document.createElementNS(ns, tag);
      for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
      if (text !== undefined) node.textContent = text;
      svg.append(node);
      return node;
    };
    let highest = 0;
    for (const s of series) for (const v of s.values) highest = Math.max(highest, v);
    const ceiling = highest > 0.5 ? 1 : Math.max(0.1, Math.ceil(highest * 10) / 10);
    const x = (f) => left + f * (width - left - right), y = (v) => height - bottom - v / ceiling * (height - top - bottom);
    for (let k = 0; k <= 4; k++) {
      add("line", {x1: x(k / 4), x2: x(k / 4), y1: y(0), y2: y(ceiling), stroke: "#e6e6e6"});
      add("line", {x1: x(0), x2: x(1), y1: y(k / 4 * ceiling), y2: y(k / 4 * ceiling), stroke: "#e6e6e6"});
      add("text", {x: x(k / 4), y: height - bottom + 15, "text-anchor": "middle"}, (k / 4).toFixed(2));
      add("text", {x: left - 6, y: y(k / 4 * ceiling) + 4, "text-anchor": "end"}, (k / 4 * ceiling).toFixed(2));
    }
    add("rect", {x: x(0), y: y(ceiling), width: x(1) - x(0), height: y(0) - y(ceiling), fill: "none", stroke: "#999"});
    add("text", {x: left, y: 18, class: "title"}, title);
    add("text", {x: (x(0) + x(1)) / 2, y: height - 8, "text-anchor": "middle"}, xLabel);
    series.forEach((s, k) => {
      const color = COLORS[k % COLORS.length];
      const points = s.values.map((v, j) => `${x(j / (s.values.length - 1)).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      add("polyline", {points, fill: "none", stroke: color, "stroke-width": 2});
      add("line", {x1: width - right + 12, x2: width - right + 32, y1: top + 8 + 18 * k, y2: top + 8 + 18 * k,
                   stroke: color, "stroke-width": 2});
      add("text", {x: width - right + 38, y: top + 12 + 18 * k}, legend(s));
    });
    return svg;
  }

  // ---- the header, the faithfulness and errors tabs
  function facts() {
    const run = HEAD.run, counts = HEAD.counts, list = $("facts");
    $("title").textContent = `— ${HEAD.title}`;
    const rate = run.images_per_s !== undefined ? `${run.images} images in ${run.wall_s} s (${run.images_per_s} images/s)`
      + (run.already_done ? `, ${run.already_done} done before` : "") + (run.interrupted ? ", interrupted" : "") : "";
    const items = [
      ["model", [run.model_spec, run.model].filter(Boolean).join(" · ")], ["target layer", run.target_layer],
      ["methods", (run.methods || []).join(", ")], ["targets", run.targets], ["provider", run.provider],
      ["images", `${counts.images} (${counts.ok} ok, ${counts.errors} errors, ${counts.no_target} no target)`],
      ["rows", `${counts.rows} (${counts.entries} image × target)`], ["last run", rate],
      ["finished", (run.finished || "").replace("T", " ").replace("+00:00", " UTC")],
      ["onnxcam", (run.versions || {}).onnxcam],
    ];
    for (const [name, value] of items) {
      if (value) list.append(el("div", {}, el("dt", {textContent: name}), el("dd", {textContent: value, title: value})));
    }
    $("error-count").textContent = counts.errors ? `(${counts.errors})` : "";
  }
  function faithfulnessTab() {
    const tab = $("faithfulness-tab");
    if (!HEAD.metrics.length) {
      tab.append(el("p", {className: "note", textContent: "This folder has no faithfulness figures: add an evaluate "
        + "section to the manifest (average_drop, deletion, insertion, ...) and run it again."}));
      return;
    }
    const methods = Object.keys(HEAD.summary);
    tab.append(el("h2", {textContent: "Mean over every row of index.csv (± sample std, rows)"}),
               figuresTable(methods, HEAD.metrics, (method, metric) => {
                 const [mean, std, count] = HEAD.summary[method][metric] || [];
                 return count ? {value: mean, text: `${figure(mean)} ± ${figure(std)} (${count})`} : null;
               }),
               el("p", {className: "note", textContent: "↑ higher is better, ↓ lower is better; the best method of "
                 + "each column in bold."}));
    const charts = el("div", {className: "charts"});
    for (const metric of HEAD.curves) {
      const series = Object.entries(HEAD.meanCurves[metric]).map(([name, values]) => ({name, values}));
      charts.append(chart(`${metric}: mean target score`, metric === "deletion" ? "fraction of pixels removed"
        : "fraction of pixels inserted", series, (s) => `${s.name} AUC ${figure(HEAD.summary[s.name][metric][0])}`));
    }
    tab.append(el("h2", {textContent: "Mean deletion and insertion curves"}), charts);
  }
  function errorsTab() {
    const tab = $("errors-tab"), counts = HEAD.counts;
    if (!counts.errors) {
      tab.append(el("p", {className: "note", textContent: "No image failed."}));
      return;
    }
    const show = el("button", {className: "link", type: "button",
                               textContent: `show the ${counts.errors} error rows in the gallery`});
    show.onclick = () => {
      $("status-filter").value = "1";
      view.status = "1";
      switchTab("gallery");
      refresh(true);
    };
    tab.append(el("h2", {textContent: `${counts.errors} of ${counts.images} images failed`}), show,
               el("h2", {textContent: "Reasons"}));
    const reasons = el("table", {className: "errors"}, el("tr", {}, el("th", {textContent: "images"}),
                                                         el("th", {textContent: "reason"})));
    for (const [reason, count] of HEAD.reasons) {
      reasons.append(el("tr", {}, el("td", {textContent: count}), el("td", {textContent: reason})));
    }
    const list = el("table", {className: "errors"}, el("tr", {}, el("th", {textContent: "image"}),
                                                      el("th", {textContent: "reason"})));
    for (const [image, reason] of HEAD.errors) {
      list.append(el("tr", {}, el("td", {textContent: image}), el("td", {textContent: reason})));
    }
    const more = counts.errors > HEAD.errors.length ? ` (the first ${HEAD.errors.length}; the gallery lists all)` : "";
    tab.append(reasons, el("h2", {textContent: `Error rows${more}`}), list);
  }

  // ---- controls
  function switchTab(name) {
    for (const button of document.querySelectorAll("#tabs button")) {
      button.classList.toggle("active", button.dataset.tab === name);
    }
    for (const tab of document.querySelectorAll(".tab")) tab.hidden = tab.id !== `${name}-tab`;
    if (name === "gallery") fitGallery();
  }
  function fitGallery() {
    const gallery = $("gallery");
    gallery.style.height = `${Math.max(300, window.innerHeight - gallery.getBoundingClientRect().top - 8)}px`;
    render();
  }
  function controls() {
    const classes = $("class-filter");
    const numbers = Object.keys(HEAD.classCounts).sort((a, b) => HEAD.classCounts[b] - HEAD.classCounts[a]);
    for (const number of numbers) {
      classes.append(el("option", {value: number,
                                   textContent: `${HEAD.labels[number]} (${number}): ${HEAD.classCounts[number]}`}));
    }
    const sort = $("sort");
    for (const [value, text] of [["index", "index order"], ["name", "file name"], ["pred", "predicted score"],
                                 ["target", "explained score"], ...(HEAD.regions ? [["share", "region share"]] : [])]) {
      sort.append(el("option", {value, textContent: text}));
    }
    for (const metric of HEAD.metrics) {
      const group = el("optgroup", {label: `${metric} (${HEAD.higherIsBetter[metric] ? "higher" : "lower"} is better)`});
      HEAD.methods.forEach((method, number) => group.append(el("option", {value: `metric:${metric}:${number}`,
                                                                         textContent: `${metric} · ${method}`})));
      sort.append(group);
    }
    const boxes = $("method-boxes");
    for (const method of HEAD.methods) {
      const box = el("input", {type: "checkbox", checked: true, value: method});
      box.onchange = () => {
        if (box.checked) view.hidden.delete(method); else view.hidden.add(method);
        layout(false);
      };
      boxes.append(el("label", {}, box, ` ${method}`));
    }
    let typing = 0;
    $("search").oninput = (event) => {
      clearTimeout(typing);
      typing = setTimeout(() => { view.search = event.target.value; refresh(true); }, 150);
    };
    $("class-filter").onchange = (event) => { view.cls = event.target.value; refresh(true); };
    $("status-filter").onchange = (event) => { view.status = event.target.value; refresh(true); };
    sort.onchange = (event) => {
      view.sort = event.target.value;
      view.descending = !["index", "name"].includes(view.sort)
        && !(view.sort.startsWith("metric:") && !HEAD.higherIsBetter[view.sort.split(":")[1]]);
      $("direction").textContent = view.descending ? "↓" : "↑";
      refresh(true);
    };
    $("direction").textContent = "↑";
    $("direction").onclick = () => {
      view.descending = !view.descending;
      $("direction").textContent = view.descending ? "↓" : "↑";
      refresh(true);
    };
    $("size").onchange = (event) => { view.size = Number(event.target.value); layout(false); };
    for (const button of document.querySelectorAll("#tabs button")) button.onclick = () => switchTab(button.dataset.tab);
    let frame = 0;
    $("gallery").onscroll = () => {
      if (!frame) frame = requestAnimationFrame(() => { frame = 0; render(); });
    };
    window.onresize = fitGallery;
    $("previous").onclick = () => openViewer(viewerPosition - 1);
    $("next").onclick = () => openViewer(viewerPosition + 1);
    $("close").onclick = closeViewer;
    document.addEventListener("keydown", (event) => {
      if ($("viewer").hidden) return;
      if (event.key === "Escape") closeViewer();
      else if (event.key === "ArrowLeft") openViewer(viewerPosition - 1);
      else if (event.key === "ArrowRight") openViewer(viewerPosition + 1);
    });
  }

  document.title = `onnxcam report — ${HEAD.title}`;
  facts();
  controls();
  faithfulnessTab();
  errorsTab();
  fitGallery();
  refresh(true);
  loadAll();
})();
