/* Cadenza live score: engraves the ABC the page holds with abcjs and moves a cursor over the notes
 * while the page's audio player plays the same piece.
 *
 * Runs once, after abcjs (window.ABCJS) is loaded; it is inlined into the page's <head>, so it knows
 * nothing of its own URL, and Gradio builds the DOM after it runs: every element is looked up lazily
 * by a poll (POLL_MS) and re-bound when Gradio replaces it. The page provides:
 *   #live-abc textarea   the ABC text (Gradio sets .value without an input event, hence the poll)
 *   #live-score          a box the music is drawn into (it scrolls; the cursor keeps in view); a child with
 *                        class "placeholder" is hidden while music is drawn
 *   #live-score-tools    an empty box for the zoom buttons this script makes
 *   #score-player        a Gradio Audio; its <audio> may sit in a wavesurfer shadow root
 *   #rewrite-bar         a Gradio Number: a click on the music puts the clicked bar's number in it (the bar
 *                        Rewrite starts from), and the bar is marked
 *   #rewrite-to          a Gradio Number: a shift-click puts the last bar of the passage to rewrite in it (a
 *                        plain click empties it: rewrite to the end); the bars between are marked
 * window.cadenzaScore = {render(abc), zoom(f), state(), prepare(abc), choose(bar, last)} is the handle tests and
 * page.js use. Bars are numbered as printed: a pickup is bar 0, the first full bar 1 (engine.api's Rewrite
 * counts so too).
 */
(function () {
  "use strict";
  if (window.cadenzaScore) return; // inlined twice (a page reload of the head only): keep the first

  var POLL_MS = 300;
  var ZOOM_KEY = "cadenza-zoom";
  var ZOOM_MIN = 0.5, ZOOM_MAX = 2.5, ZOOM_STEP = 1.25;
  var PAD = 15; // abcjs's default left and right padding, in svg units
  var FALLBACK_WIDTH = 740;
  var BAR_WIDTH = 260; // svg units a bar of a four-part chorale needs to be read at ease // a box in a hidden tab measures 0 px wide
  var MUSIC21_QPM = 120; // the WAV comes from music21's MIDI, which plays 120 quarters a minute without Q:
  var TAIL_SECONDS = 3; // the WAV rings on after the last note (engine: 1.5 s); more than this = other timing
  var STYLE = [
    "#live-score{overflow:auto;max-height:var(--cadenza-score-height,75vh);position:relative}",
    "#live-score .cadenza-sheet{width:100%}",
    "#live-score.cadenza-drawn>.placeholder{display:none}",
    "#live-score .cadenza-staging{position:absolute;left:0;top:0;visibility:hidden}",
    "#live-score .cadenza-fault{fill:#c92a2a;stroke:#c92a2a}",
    "#live-score .abcjs-playing{fill:#d9480f;stroke:#d9480f}",
    "#live-score .cadenza-cursor{fill:#d9480f;opacity:.45;pointer-events:none}",
    "#live-score .cadenza-chosen{fill:#1c7ed6;stroke:#1c7ed6}",
    "#live-score .abcjs-bar-number{fill:#555;font-size:13px}",
    "#live-score .abcjs-note,#live-score .abcjs-rest{cursor:pointer}",
    "#live-score-tools{display:flex;gap:4px;align-items:center;justify-content:flex-end}",
    "#live-score-tools button{min-width:2.2em;padding:2px 8px;border:1px solid var(--border-color-primary,#ccc);",
    "border-radius:4px;background:var(--button-secondary-background-fill,#f4f4f5);cursor:pointer;font:inherit}",
    "#live-score-tools .cadenza-zoom-label{min-width:3.5em;text-align:center;font-size:90%;opacity:.8}",
  ].join("");

  var st = {
    renders: 0, failures: 0, lastError: null, warnings: [],
    text: null, // the ABC last rendered (after cleaning), or null
    seen: null, // the textarea value last read
    zoom: readZoom(),
    box: null, width: 0, visual: null,
    timings: [], lastMs: 0, charToMs: {},
    audios: [], audio: null, raf: 0, event: -1, highlighted: [], cursor: null,
    busyUntil: 0, redraw: false,
    pickup: false, // the piece starts with a pickup: abcjs counts it bar 1, a printed score bar 0
    chosen: null, // the bar a click chose for Rewrite (as printed), or null
    chosenTo: null, // the passage's last bar, chosen by a shift-click, or null (to the end)
    source: null, // the ABC as given for the drawing shown (before cleaning)
    marks: null, marksText: "", // the musical check's bars at fault (#score-marks), for one text
    faults: 0, // bars drawn as at fault now
  };

  // --- ABC text -----------------------------------------------------------------------------

  /** What abcjs should see: NotaGen's line markers out, an unfinished last token closed off, every
   *  bar numbered (the number Rewrite takes). */
  function clean(abc) {
    var text = String(abc || "").replace(/\r\n?/g, "\n");
    text = text.replace(/\[r:[^\]\n]*\]/g, ""); // [r:3/20]: bars done / bars to go, not music
    if (!/\n$/.test(text)) text = closeLastLine(text); // a piece being written stops anywhere
    if (text.trim() && !/^%%barnumbers/m.test(text)) {
      text = /^X:.*\n/m.test(text) ? text.replace(/^(X:.*\n)/m, "$1%%barnumbers 1\n") : "%%barnumbers 1\n" + text;
    }
    return text;
  }

  /** Cuts the last line back to before an unclosed [..., "..., !...!, {...} (partial ABC). */
  function closeLastLine(text) {
    var start = text.lastIndexOf("\n") + 1;
    var line = text.slice(start);
    var cut = line.length;
    var open = [["[", "]"], ["{", "}"]];
    for (var i = 0; i < open.length; i++) {
      var o = line.lastIndexOf(open[i][0]);
      if (o > line.lastIndexOf(open[i][1])) cut = Math.min(cut, o);
    }
    var marks = ['"', "!"];
    for (var j = 0; j < marks.length; j++) {
      if ((line.split(marks[j]).length - 1) % 2 === 1) cut = Math.min(cut, line.lastIndexOf(marks[j]));
    }
    if (/^[A-Za-z]:/.test(line) || /^%/.test(line)) cut = 0; // a half-written header field or comment
    return text.slice(0, start) + line.slice(0, cut);
  }

  function hasBody(text) {
    return /^K:/m.test(text);
  }

  /** Some notes after the header (a line that is no field, comment or voice line holds a note or rest). */
  function hasMusic(text) {
    var body = text.slice(text.search(/^K:/m)).split("\n").slice(1);
    for (var i = 0; i < body.length; i++) {
      var line = body[i].replace(/\[[A-Za-z]:[^\]]*\]/g, ""); // inline fields ([V:1], [K:D]) are no music
      if (!/^([A-Za-z]:|%)/.test(body[i]) && /[A-Ga-gz]/.test(line)) return true;
    }
    return false;
  }

  // --- engraving ----------------------------------------------------------------------------

  function boxWidth(box) {
    var css = window.getComputedStyle(box);
    var w = box.clientWidth - parseFloat(css.paddingLeft || 0) - parseFloat(css.paddingRight || 0); // no scrollbar
    return w >= 100 ? w : FALLBACK_WIDTH;
  }

  /** Renders `text` into the box; the previous drawing stays if abcjs fails or draws no notes. */
  function draw(text) {
    var box = st.box;
    if (!box || !window.ABCJS) return false;
    var width = boxWidth(box);
    var staging = document.createElement("div");
    staging.className = "cadenza-sheet cadenza-staging";
    box.appendChild(staging);
    var started = performance.now();
    var visual = null, error = null;
    var staffwidth = Math.max(200, Math.round(width / st.zoom - 2 * PAD));
    try {
      var tunes = window.ABCJS.renderAbc(staging, text, {
        responsive: "resize", // the svg fills the box; staffwidth sets the size of the notes (zoom)
        staffwidth: staffwidth,
        // NotaGen writes a bar a line: reflow into lines of about BAR_WIDTH (abcjs packs closer if they fit)
        wrap: { minSpacing: 1.8, maxSpacing: 2.7, preferredMeasuresPerLine: Math.max(2, Math.round(staffwidth / BAR_WIDTH)) },
        add_classes: true,
        clickListener: onNoteClick,
      });
      visual = tunes && tunes[0];
      if (!visual || !staging.querySelector("svg .abcjs-note")) error = "no notes to draw yet";
    } catch (e) {
      error = String((e && e.message) || e);
    }
    var took = performance.now() - started;
    st.busyUntil = Date.now() + Math.min(3000, 2 * took); // a long piece: render less often, not hang the page
    if (error) {
      staging.remove();
      st.failures += 1;
      st.lastError = error;
      return false;
    }
    st.pickup = !!(visual.getPickupLength && visual.getPickupLength() > 0);
    if (st.pickup) renumber(staging);
    var top = box.scrollTop, left = box.scrollLeft;
    var old = box.querySelectorAll(".cadenza-sheet:not(.cadenza-staging)");
    for (var i = 0; i < old.length; i++) old[i].remove();
    staging.classList.remove("cadenza-staging");
    box.classList.add("cadenza-drawn"); // hides the page's .placeholder
    box.scrollTop = top; // live writing re-renders every patch: the reader's place stays
    box.scrollLeft = left;
    st.renders += 1;
    st.lastError = null;
    st.warnings = (visual.warnings || []).slice(0, 20);
    st.text = text;
    st.width = width;
    st.visual = visual;
    st.highlighted = [];
    st.cursor = null;
    st.event = -1;
    buildTimings(visual);
    markChosen();
    markFaults();
    followAudio(false); // a re-render while playing: the cursor back where the music is; the reader's place kept
    return true;
  }

  /** abcjs numbers a pickup bar 1; a printed score (and Rewrite) numbers it 0. */
  function renumber(sheet) {
    var labels = sheet.querySelectorAll(".abcjs-bar-number");
    for (var i = 0; i < labels.length; i++) {
      var n = parseInt(labels[i].textContent, 10);
      var span = labels[i].querySelector("tspan") || labels[i];
      if (!isNaN(n)) span.textContent = String(n - 1);
    }
  }

  // --- choosing a bar -------------------------------------------------------------------------

  /** The printed number of the bar an element of the drawing belongs to (abcjs-mmN: the Nth bar). */
  function barOf(classes) {
    var m = /\babcjs-mm(\d+)\b/.exec(String(classes || ""));
    return m ? parseInt(m[1], 10) + (st.pickup ? 0 : 1) : null;
  }

  /** The notes and rests of bar `bar` (as printed) in the drawing shown. */
  function barElements(box, bar) {
    var mm = bar - (st.pickup ? 0 : 1);
    return box.querySelectorAll(".cadenza-sheet:not(.cadenza-staging) .abcjs-note.abcjs-mm" + mm +
                                ", .cadenza-sheet:not(.cadenza-staging) .abcjs-rest.abcjs-mm" + mm);
  }

  function markChosen() {
    var box = st.box;
    if (!box) return;
    var old = box.querySelectorAll(".cadenza-chosen");
    for (var i = 0; i < old.length; i++) old[i].classList.remove("cadenza-chosen");
    if (st.chosen === null) return;
    var last = st.chosenTo === null ? st.chosen : st.chosenTo;
    for (var bar = st.chosen; bar <= last && bar - st.chosen < 10000; bar++) {
      var els = barElements(box, bar);
      for (var j = 0; j < els.length; j++) els[j].classList.add("cadenza-chosen");
    }
  }

  /** The musical check's bars at fault in red, the reasons on hover; only on the text they were
   * found in (an edit, or another piece, hides them). */
  function markFaults() {
    var box = st.box;
    if (!box) return;
    var old = box.querySelectorAll(".cadenza-fault");
    for (var i = 0; i < old.length; i++) old[i].classList.remove("cadenza-fault");
    var titles = box.querySelectorAll("title.cadenza-fault-why");
    for (var t = 0; t < titles.length; t++) titles[t].remove();
    st.faults = 0;
    var m = st.marks, text = st.source;
    if (!m || !m.bars || typeof text !== "string" || text.length !== m.length || text.slice(-64) !== m.tail) return;
    Object.keys(m.bars).forEach(function (bar) {
      var els = barElements(box, parseInt(bar, 10));
      for (var j = 0; j < els.length; j++) {
        els[j].classList.add("cadenza-fault");
        var why = document.createElementNS("http://www.w3.org/2000/svg", "title");
        why.setAttribute("class", "cadenza-fault-why");
        why.textContent = "bar " + bar + ": " + m.bars[bar].join(", ");
        els[j].appendChild(why);
      }
      if (els.length) st.faults += 1;
    });
  }

  function readMarks() {
    var field = document.querySelector("#score-marks textarea") || document.querySelector("#score-marks input");
    var value = field ? field.value : "";
    if (value === st.marksText) return false;
    st.marksText = value;
    try {
      st.marks = value ? JSON.parse(value) : null;
    } catch (e) {
      st.marks = null;
    }
    return true;
  }

  /** Chooses bar `bar` (as printed) for Rewrite: marked on the score, its number in the page's box.
   * With `last` (a shift-click), the passage runs from the bar chosen before to `bar` (either way round)
   * and only those bars are rewritten; without it the passage runs to the end. */
  function choose(bar, last) {
    if (typeof bar !== "number" || isNaN(bar)) return false;
    if (last && st.chosen !== null) {
      st.chosenTo = Math.max(bar, st.chosen);
      st.chosen = Math.min(bar, st.chosen);
    } else {
      st.chosen = bar;
      st.chosenTo = null;
    }
    markChosen();
    setNumber("#rewrite-bar input", String(st.chosen));
    setNumber("#rewrite-to input", st.chosenTo === null ? "" : String(st.chosenTo));
    return true;
  }

  function setNumber(selector, value) {
    var input = document.querySelector(selector);
    if (!input) return;
    // Gradio's Number takes a value from its input event (set by a script, nothing else fires one)
    var setter = Object.getOwnPropertyDescriptor(window.HTMLInputElement.prototype, "value").set;
    setter.call(input, value);
    input.dispatchEvent(new Event("input", { bubbles: true }));
    input.dispatchEvent(new Event("change", { bubbles: true }));
  }

  /** Removes the drawing: the page emptied the text (a new piece is about to be written). */
  function wipe() {
    clearHighlight();
    var sheets = st.box ? st.box.querySelectorAll(".cadenza-sheet") : [];
    for (var i = 0; i < sheets.length; i++) sheets[i].remove();
    if (st.box) st.box.classList.remove("cadenza-drawn");
    st.text = null;
    st.visual = null;
    st.timings = [];
    st.lastMs = 0;
    st.charToMs = {};
    st.lastError = null;
    st.cursor = null;
    st.chosen = null;
    st.chosenTo = null;
    st.source = null;
    st.faults = 0;
  }

  function render(abc) {
    var text = clean(abc);
    if (!text.trim()) {
      wipe();
      return true;
    }
    if (!hasBody(text) || !hasMusic(text)) {
      // a new piece's header, its music still to come: the piece drawn before is not this one
      wipe();
      st.failures += 1;
      st.lastError = "no music yet: nothing to engrave";
      return false;
    }
    var before = st.source;
    st.source = abc; // what the marks of the musical check are tied to (draw applies them)
    var ok = draw(text);
    if (!ok) st.source = before; // the previous drawing stays, and so do its marks
    return ok;
  }

  // --- zoom ---------------------------------------------------------------------------------

  function clampZoom(f) {
    f = Number(f);
    if (!isFinite(f) || f <= 0) f = 1;
    return Math.round(Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, f)) * 100) / 100;
  }

  function readZoom() {
    try {
      return clampZoom(window.localStorage.getItem(ZOOM_KEY) || 1);
    } catch (e) { // storage blocked (file:// in some browsers, privacy modes): zoom still works
      return 1;
    }
  }

  function setZoom(f) {
    if (f === undefined) return st.zoom;
    st.zoom = clampZoom(f);
    try {
      window.localStorage.setItem(ZOOM_KEY, String(st.zoom));
    } catch (e) { /* not persisted; the page still zooms */ }
    updateZoomLabel();
    if (st.text) draw(st.text);
    return st.zoom;
  }

  function makeTools(tools) {
    if (tools.querySelector(".cadenza-zoom-in")) return;
    var spec = [
      ["cadenza-zoom-out", "\u2212", "Zoom out", function () { setZoom(st.zoom / ZOOM_STEP); }],
      ["cadenza-zoom-label", "", "Zoom", null],
      ["cadenza-zoom-in", "+", "Zoom in", function () { setZoom(st.zoom * ZOOM_STEP); }],
      ["cadenza-zoom-fit", "fit", "Fit the width of the box", function () { setZoom(1); }],
    ];
    for (var i = 0; i < spec.length; i++) {
      var el = document.createElement(spec[i][3] ? "button" : "span");
      el.className = spec[i][0];
      el.textContent = spec[i][1];
      el.title = spec[i][2];
      el.setAttribute("aria-label", spec[i][2]);
      if (spec[i][3]) {
        el.type = "button";
        el.addEventListener("click", spec[i][3]);
      }
      tools.appendChild(el);
    }
    updateZoomLabel();
  }

  function updateZoomLabel() {
    var label = document.querySelector("#live-score-tools .cadenza-zoom-label");
    if (label) label.textContent = Math.round(st.zoom * 100) + "%";
  }

  // --- playback cursor ----------------------------------------------------------------------

  function buildTimings(visual) {
    st.timings = [];
    st.lastMs = 0;
    st.charToMs = {};
    if (!window.ABCJS.TimingCallbacks) return;
    var tempo = visual.metaText && visual.metaText.tempo;
    // without Q: abcjs assumes 180 beats a minute; the WAV was made at music21's 120 quarters
    var qpm = tempo && tempo.bpm ? visual.getBpm() : MUSIC21_QPM * 0.25 / (visual.getBeatLength() || 0.25);
    try {
      var timer = new window.ABCJS.TimingCallbacks(visual, { qpm: qpm });
      var all = timer.noteTimings || [];
      for (var i = 0; i < all.length; i++) {
        if (all[i].type === "event" && all[i].elements && all[i].elements.length) st.timings.push(all[i]);
        st.lastMs = Math.max(st.lastMs, all[i].milliseconds || 0);
      }
    } catch (e) {
      st.lastError = "timing: " + String((e && e.message) || e);
    }
    for (var k = 0; k < st.timings.length; k++) {
      var chars = st.timings[k].startCharArray || [];
      for (var c = 0; c < chars.length; c++) {
        if (!(chars[c] in st.charToMs)) st.charToMs[chars[c]] = st.timings[k].milliseconds;
      }
    }
  }

  /** Score milliseconds per audio second: 1000 when the WAV plays the score's tempo, else stretched. */
  function msPerSecond(audio) {
    var d = audio.duration, score = st.lastMs / 1000;
    if (!isFinite(d) || d <= 0 || score <= 0) return 1000;
    if (d >= score * 0.97 && d <= score + TAIL_SECONDS) return 1000;
    return (st.lastMs / d);
  }

  /** The last event at or before `ms` (binary search over the sorted timings), or -1. */
  function eventAt(ms) {
    var lo = 0, hi = st.timings.length - 1, found = -1;
    while (lo <= hi) {
      var mid = (lo + hi) >> 1;
      if (st.timings[mid].milliseconds <= ms) { found = mid; lo = mid + 1; } else hi = mid - 1;
    }
    return found;
  }

  function clearHighlight() {
    for (var i = 0; i < st.highlighted.length; i++) st.highlighted[i].classList.remove("abcjs-playing");
    st.highlighted = [];
    if (st.cursor) st.cursor.setAttribute("visibility", "hidden");
    st.event = -1;
  }

  function highlight(index, scroll) {
    if (index === st.event) { // the same notes: at most the view to fix (a seek lands after its timeupdate)
      if (scroll && st.cursor && index >= 0) keepInView(st.cursor);
      return;
    }
    clearHighlight();
    st.event = index;
    if (index < 0) return;
    var ev = st.timings[index];
    for (var v = 0; v < ev.elements.length; v++) {
      var group = ev.elements[v] || [];
      for (var e = 0; e < group.length; e++) {
        if (group[e] && group[e].classList) {
          group[e].classList.add("abcjs-playing");
          st.highlighted.push(group[e]);
        }
      }
    }
    moveCursor(ev, scroll);
  }

  function moveCursor(ev, scroll) {
    var svg = st.box && st.box.querySelector(".cadenza-sheet:not(.cadenza-staging) svg");
    if (!svg || ev.left === null || ev.left === undefined) return;
    if (!st.cursor || !svg.contains(st.cursor)) {
      st.cursor = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      st.cursor.setAttribute("class", "cadenza-cursor");
      st.cursor.setAttribute("width", "3");
      svg.appendChild(st.cursor);
    }
    st.cursor.setAttribute("x", String(ev.left - 3));
    st.cursor.setAttribute("y", String(ev.top));
    st.cursor.setAttribute("height", String(ev.height));
    st.cursor.setAttribute("visibility", "visible");
    if (scroll) keepInView(st.cursor);
  }

  /** Scrolls the #live-score box (never the page) so the cursor stays in its upper part. */
  function keepInView(el) {
    var box = st.box;
    if (!box || box.scrollHeight <= box.clientHeight) return;
    var b = box.getBoundingClientRect(), r = el.getBoundingClientRect();
    if (r.top >= b.top && r.bottom <= b.bottom) return;
    box.scrollTop += (r.top - b.top) - Math.min(40, box.clientHeight * 0.1);
  }

  /** Highlights what the audio plays now; `scroll` brings it into the box's view. */
  function followAudio(scroll) {
    var audio = st.audio;
    if (!audio || !st.timings.length) return;
    if (audio.ended) { clearHighlight(); return; }
    if (audio.paused && audio.currentTime === 0) { clearHighlight(); return; }
    highlight(eventAt(audio.currentTime * msPerSecond(audio)), scroll);
  }

  function tick() {
    followAudio(true);
    st.raf = st.audio && !st.audio.paused ? window.requestAnimationFrame(tick) : 0;
  }

  function onAudioEvent(e) {
    if (e.target !== st.audio) {
      // a player that starts (or is moved) is the one the listener hears; another player's
      // housekeeping is not: Gradio's hidden, empty <audio> empties itself while the other plays,
      // and taking it for the one heard cleared the cursor mid-piece
      if (["play", "playing", "seeked"].indexOf(e.type) < 0 || !e.target.currentSrc) return;
      st.audio = e.target;
    }
    if (e.type === "ended" || e.type === "emptied") { clearHighlight(); return; }
    if (e.type === "play" || e.type === "playing") {
      if (!st.raf) st.raf = window.requestAnimationFrame(tick);
      return;
    }
    followAudio(e.type === "seeked" || !e.target.paused); // pause, seeked, timeupdate: one step
  }

  /** Every <audio> inside #score-player, including those in open shadow roots (wavesurfer's). */
  function findAudios(root) {
    var found = [];
    var stack = [root];
    while (stack.length) {
      var node = stack.pop();
      var audios = node.querySelectorAll("audio");
      for (var i = 0; i < audios.length; i++) found.push(audios[i]);
      var all = node.querySelectorAll("*");
      for (var j = 0; j < all.length; j++) if (all[j].shadowRoot) stack.push(all[j].shadowRoot);
    }
    return found;
  }

  function bindAudio() {
    var player = document.getElementById("score-player");
    if (!player) return;
    var audios = findAudios(player);
    for (var i = 0; i < audios.length; i++) {
      var a = audios[i];
      if (a.__cadenzaBound) continue;
      a.__cadenzaBound = true;
      ["play", "playing", "pause", "seeked", "timeupdate", "ended", "emptied"].forEach(function (type) {
        a.addEventListener(type, onAudioEvent);
      });
    }
    st.audios = audios;
    if (st.audio && audios.indexOf(st.audio) < 0) { st.audio = null; clearHighlight(); } // player replaced
    if (!st.audio) { // pick the one with something to play: Gradio also keeps a hidden, empty <audio>
      for (var k = 0; k < audios.length; k++) if (audios[k].currentSrc) { st.audio = audios[k]; break; }
    }
  }

  /** A click on a note chooses its bar for Rewrite and moves the playback there. */
  function onNoteClick(abcelem, tuneNumber, classes, analysis, drag, mouseEvent) {
    var bar = barOf(classes);
    if (bar !== null) choose(bar, !!(mouseEvent && mouseEvent.shiftKey));
    var audio = st.audio;
    if (!audio || !abcelem || !(abcelem.startChar in st.charToMs)) return;
    audio.currentTime = st.charToMs[abcelem.startChar] / msPerSecond(audio);
    followAudio(false); // the note clicked is in view already
  }

  // --- the page -----------------------------------------------------------------------------

  function poll() {
    if (!window.ABCJS) return;
    var tools = document.getElementById("live-score-tools");
    if (tools) makeTools(tools);
    var box = document.getElementById("live-score");
    if (box !== st.box) { // first sight, or Gradio re-mounted the HTML block
      st.box = box;
      st.redraw = true;
    }
    if (!box || Date.now() < st.busyUntil) return bindAudio();
    var field = document.querySelector("#live-abc textarea") || document.querySelector("#live-abc input");
    var marked = readMarks();
    if (field && field.value !== st.seen) {
      st.seen = field.value; // one try per change: text abcjs cannot draw is not retried every tick
      st.redraw = false;
      render(st.seen);
    } else if (st.text) {
      if (marked) markFaults();
      if (Math.abs(boxWidth(box) - st.width) > 24) st.redraw = true; // reflow to the new width
      if (!box.querySelector(".cadenza-sheet:not(.cadenza-staging)")) st.redraw = true; // wiped
      if (st.redraw) {
        st.redraw = false;
        draw(st.text);
      }
    }
    bindAudio();
  }

  function injectStyle() {
    if (document.getElementById("cadenza-score-style")) return;
    var style = document.createElement("style");
    style.id = "cadenza-score-style";
    style.textContent = STYLE;
    (document.head || document.documentElement).appendChild(style);
  }

  injectStyle();
  window.cadenzaScore = {
    render: function (abc) {
      st.box = document.getElementById("live-score");
      return st.box ? render(abc) : false;
    },
    zoom: setZoom,
    state: function () {
      return {
        renders: st.renders, failures: st.failures, lastError: st.lastError, warnings: st.warnings.length,
        zoom: st.zoom, highlighted: st.highlighted.length, event: st.event, events: st.timings.length,
        scoreSeconds: st.lastMs / 1000, audios: st.audios.length, playing: !!(st.audio && !st.audio.paused),
        pickup: st.pickup, chosen: st.chosen, chosenTo: st.chosenTo, faults: st.faults,
      };
    },
    prepare: clean, // the text abcjs is given: markers out, a half-written last token cut (page.js uses it)
    choose: choose,
  };
  window.setInterval(poll, POLL_MS);
  poll();
})();
