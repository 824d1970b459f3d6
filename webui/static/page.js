// Small page behaviours Gradio has no setting for. Inlined into the page's <head> (webui/app.py _head).
(function () {
  "use strict";

  // A number typed into a slider's box beyond its range is brought back into it before Gradio
  // reads it: Gradio would refuse the whole request with a bare "Error" badge on every output.
  // Capture phase: this runs before Gradio's own listener on the same input.
  function clamp(event) {
    var el = event.target;
    if (!el || el.tagName !== "INPUT" || el.type !== "number") return;
    if (el.min === "" || el.max === "") return;
    var v = parseFloat(el.value), lo = parseFloat(el.min), hi = parseFloat(el.max);
    if (!isFinite(v)) return;
    var fixed = Math.min(hi, Math.max(lo, v));
    if (fixed !== v) el.value = String(fixed);
  }
  ["change", "blur", "keydown"].forEach(function (type) {
    document.addEventListener(type, function (e) {
      if (type !== "keydown" || e.key === "Enter") clamp(e);
    }, true);
  });

  // Variation cards: each holds its first bars as ABC (data-abc); engrave them small once abcjs is here.
  function incipits() {
    if (!window.ABCJS) return;
    document.querySelectorAll(".abc-incipit").forEach(function (el) {
      var abc = el.getAttribute("data-abc") || "";
      if (el.getAttribute("data-drawn") === abc) return;
      el.setAttribute("data-drawn", abc);
      var clean = window.cadenzaScore && window.cadenzaScore.prepare ? window.cadenzaScore.prepare(abc) : abc;
      try {
        // the first bars flow onto as few systems as fit (a line of the ABC is one bar: unwrapped,
        // each bar would be a system of its own)
        window.ABCJS.renderAbc(el, clean, { responsive: "resize", scale: 0.6, paddingtop: 0, paddingbottom: 0,
                                            add_classes: true, staffwidth: 520,
                                            wrap: { minSpacing: 1.8, maxSpacing: 2.7, preferredMeasuresPerLine: 4 } });
      } catch (err) {
        el.textContent = "";
      }
    });
  }
  setInterval(incipits, 700);
})();
