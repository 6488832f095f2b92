// slidemil slide viewer: OpenSeadragon over the slide's Deep Zoom tiles, with the score layers, contour overlays
// and top tiles of /api/<slide>.json. Served by dashboard/viewer_server.py; query: slide, families, cmap,
// blur_tiles, layer (a layer id "family/index" to show first), height (px).
(function () {
  "use strict";
  const q = new URLSearchParams(location.search);
  const slide = q.get("slide");
  const params = new URLSearchParams({families: q.get("families") || "", cmap: q.get("cmap") || "viridis",
                                      blur_tiles: q.get("blur_tiles") || "0"});
  if (q.get("height")) document.documentElement.style.setProperty("--viewer-height", q.get("height") + "px");
  const $ = (id) => document.getElementById(id);
  const overlays = {};  // id -> TiledImage (added on first use)
  let info = null, viewer = null;

  function note(text) { $("note").textContent = text; }

  function addImage(id, url, opacity) {
    if (overlays[id]) { overlays[id].setOpacity(opacity); return; }
    overlays[id] = "pending";
    viewer.addTiledImage({tileSource: {type: "image", url: url, buildPyramid: true}, x: 0, y: 0, width: 1,
                          opacity: opacity,
                          success: (e) => { overlays[id] = e.item; e.item.setOpacity(currentOpacity(id)); },
                          error: (e) => { delete overlays[id]; note("overlay failed: " + url + " " + e.message); }});
  }

  function currentOpacity(id) {
    if (id.startsWith("contour:")) return $("c-" + id.slice(8)).checked ? 1 : 0;
    return $("layer").value === id ? parseFloat($("opacity").value) : 0;
  }

  function refresh() {
    for (const [id, item] of Object.entries(overlays)) if (item !== "pending") item.setOpacity(currentOpacity(id));
    const chosen = info.layers.find((l) => l.id === $("layer").value);
    if (chosen) addImage(chosen.id, chosen.url, parseFloat($("opacity").value));
    for (const c of info.contours) if ($("c-" + c.id).checked) addImage("contour:" + c.id, c.url, 1);
    showLegend(chosen);
    document.querySelectorAll(".top-tile").forEach((el) => { el.style.display = $("tops").checked ? "" : "none"; });
  }

  function showLegend(layer) {
    const box = $("legend");
    if (!layer) { box.hidden = true; return; }
    const lg = layer.legend;
    $("legend-title").textContent = lg.title;
    $("legend-bar").style.background = "linear-gradient(to top, " + lg.colours.join(", ") + ")";
    $("legend-ticks").replaceChildren(...lg.ticks.map((t) => Object.assign(document.createElement("span"), {textContent: t})));
    $("legend-caption").textContent = (lg.relative ? "ranks tiles within this slide only" : "absolute scale, comparable across slides")
      + " · model: " + lg.model;
    box.hidden = false;
  }

  function addTopTiles() {
    const item = viewer.world.getItemAt(0);
    const scale = item.source.dimensions.x / info.slide_width;  // 1 unless the thumbnail stands in for the slide
    for (const t of info.top_tiles) {
      const el = document.createElement("div");
      el.className = "top-tile";
      el.title = "#" + t.rank + " by " + info.top_layer + " (" + info.top_tiles_of + "): score " + t.score.toFixed(3);
      el.appendChild(Object.assign(document.createElement("span"), {textContent: "#" + t.rank}));
      viewer.addOverlay({element: el, location: item.imageToViewportRectangle(t.x * scale, t.y * scale,
                                                                              t.size * scale, t.size * scale)});
    }
  }

  function build() {
    for (const l of info.layers) $("layer").add(new Option(l.label, l.id));
    const first = q.get("layer") && info.layers.some((l) => l.id === q.get("layer")) ? q.get("layer")
      : (info.layers[0] ? info.layers[0].id : "");
    $("layer").value = first;
    for (const c of info.contours) {
      const label = document.createElement("label");
      label.innerHTML = '<input type="checkbox" id="c-' + c.id + '"> <span style="color:' + c.colour + '">&#9632;</span> ';
      label.append(c.name);
      $("contours").appendChild(label);
    }
    viewer = OpenSeadragon({id: "osd", prefixUrl: "../openseadragon/images/", tileSources: info.dzi, drawer: "canvas",
                            showNavigator: true, navigatorPosition: "BOTTOM_RIGHT", maxZoomPixelRatio: 2,
                            animationTime: 0.4, crossOriginPolicy: "Anonymous"});
    window.slidemilViewer = viewer;
    viewer.addOnceHandler("open", () => {
      addTopTiles();
      refresh();
      note(info.slide_id + ": " + info.shows + " · " + info.slide_width + " x " + info.slide_height
           + " level-0 px · scroll to zoom, drag to pan");
      document.body.dataset.ready = "1";
    });
    viewer.addHandler("zoom", (e) => { $("zoom").textContent = "zoom " + e.zoom.toFixed(2) + "x"; });
    viewer.addHandler("open-failed", (e) => note("cannot open the slide: " + e.message));
    for (const id of ["layer", "opacity", "tops"]) $(id).addEventListener("input", refresh);
    $("contours").addEventListener("change", refresh);
  }

  fetch("/api/" + encodeURIComponent(slide) + ".json?" + params)
    .then((r) => r.ok ? r.json() : r.text().then((t) => { throw new Error(t); }))
    .then((body) => { info = body; build(); })
    .catch((e) => note("viewer: " + e.message));
})();
