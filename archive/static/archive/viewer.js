/* The series viewer (archive/series_viewer.html): one server-rendered image per slice.
 *
 * Each slice is the portal's rendered image of an instance or a frame (JPEG, the window and
 * size asked in its URL). Scrolling swaps the image; the next few slices in the scrolling
 * direction are read ahead and kept, so that the wheel does not wait on the network. Zoom and
 * pan transform the displayed image. Every image read is an access the server records and
 * meters; what is kept here is not read again while it stays kept.
 */
(function () {
  "use strict";

  var root = document.querySelector("[data-viewer]");
  var dataNode = document.getElementById("viewer-data");
  if (!root || !dataNode) {
    return;
  }
  var data = JSON.parse(dataNode.textContent);
  var slices = data.slices || [];
  var presets = data.presets || [];
  var count = slices.length;
  if (!count) {
    return;
  }

  var stage = root.querySelector("[data-stage]");
  var canvas = root.querySelector("[data-canvas]");
  var img = root.querySelector("[data-image]");
  var statusNode = root.querySelector("[data-status]");
  var position = root.querySelector("[data-position]");
  var overlay = {};
  root.querySelectorAll("[data-overlay]").forEach(function (node) {
    overlay[node.getAttribute("data-overlay")] = node;
  });

  var KEPT = 64; // images kept in memory (least recently shown dropped first)
  var AHEAD = 4; // slices read ahead in the scrolling direction
  var BEHIND = 2; // and behind it
  var PARALLEL = 3; // reads ahead at once (a browser opens about six per host)
  var WHEEL_STEP = 50; // wheel pixels per slice for trackpads' small steps
  var ZOOM_MIN = 1;
  var ZOOM_MAX = 8;

  var state = { index: 0, preset: presets[0] || { key: "own" }, zoom: 1, x: 0, y: 0, direction: 1 };
  var kept = new Map(); // url -> {image, ready: Promise}
  var shown = 0; // increases with every slice asked, so that a late image never replaces a newer one
  var reading = 0;
  var loadingTimer = null;

  // Images larger than the stage (in device pixels, within 512..2048) are asked at that size:
  // fixed once, so that the URLs, and what is kept, stay the same while the page lives.
  var ratio = window.devicePixelRatio || 1;
  var box = Math.min(2048, Math.max(512, Math.ceil((stage.clientWidth * ratio) / 256) * 256));

  function text(node, value) {
    if (node) {
      node.textContent = value;
    }
  }

  function urlOf(index, preset) {
    var slice = slices[index];
    var params = [];
    if (slice.slide) {
      params.push("viewport=" + data.slideViewport + "," + data.slideViewport);
    } else {
      if (preset.c !== undefined) {
        params.push("window=" + encodeURIComponent(preset.c + "," + preset.w));
      }
      if (slice.c > box || slice.r > box) {
        params.push("viewport=" + box + "," + box);
      }
    }
    return params.length ? slice.u + "?" + params.join("&") : slice.u;
  }

  function read(url) {
    var entry = kept.get(url);
    if (entry) {
      kept.delete(url); // most recently used last
      kept.set(url, entry);
      return entry;
    }
    var image = new Image();
    image.decoding = "async";
    entry = { image: image, done: false, failed: false };
    entry.ready = new Promise(function (resolve, reject) {
      image.onload = function () {
        entry.done = true;
        resolve(image);
      };
      image.onerror = function () {
        entry.done = entry.failed = true;
        kept.delete(url); // asked again next time rather than remembered as broken
        reject(new Error("not loaded"));
      };
    });
    entry.ready.catch(function () {});
    image.src = url;
    kept.set(url, entry);
    while (kept.size > KEPT) {
      kept.delete(kept.keys().next().value);
    }
    return entry;
  }

  function windowLabel(slice) {
    var preset = state.preset;
    if (slice.slide) {
      return "Slide thumbnail";
    }
    if (preset.c !== undefined) {
      return preset.label + " · W " + preset.w + " L " + preset.c;
    }
    if (slice.ww !== null && slice.ww !== undefined && slice.wc !== null) {
      return "Image's own · W " + round(slice.ww) + " L " + round(slice.wc);
    }
    return "Image's own window";
  }

  function round(value) {
    return Math.round(value * 10) / 10;
  }

  function describe() {
    var slice = slices[state.index];
    var label = "Slice " + (state.index + 1) + " / " + count;
    if (slice.f) {
      label += " (frame " + slice.f + ")";
    } else if (slice.n !== null && slice.n !== undefined) {
      label += " (Im " + slice.n + ")";
    }
    text(overlay.slice, label);
    text(overlay.window, windowLabel(slice));
    text(overlay.zoom, state.zoom > 1.001 ? "Zoom " + Math.round(state.zoom * 100) + " %" : "");
    position.value = String(state.index + 1);
    position.setAttribute("aria-valuetext", "Slice " + (state.index + 1) + " of " + count);
    stage.setAttribute(
      "aria-label",
      "Series image, slice " + (state.index + 1) + " of " + count + ", " + windowLabel(slice)
    );
  }

  function setStatus(message) {
    text(statusNode, message);
  }

  function explain(url) {
    // The image did not load: ask why (the answer is the portal's JSON error).
    fetch(url, { credentials: "same-origin", headers: { Accept: "image/jpeg" } })
      .then(function (response) {
        if (response.ok) {
          return null;
        }
        return response.json().then(
          function (body) {
            return (body && body.error && body.error.message) || "The image could not be read.";
          },
          function () {
            return "The image could not be read (" + response.status + ").";
          }
        );
      })
      .then(function (message) {
        if (message) {
          setStatus(message);
        }
      })
      .catch(function () {
        setStatus("The image could not be read: the connection failed.");
      });
  }

  function show(index) {
    state.index = Math.max(0, Math.min(count - 1, index));
    describe();
    var url = urlOf(state.index, state.preset);
    var ticket = ++shown;
    var entry = read(url);
    clearTimeout(loadingTimer);
    if (!entry.done) {
      loadingTimer = setTimeout(function () {
        if (ticket === shown) {
          stage.classList.add("is-loading");
        }
      }, 200);
    }
    entry.ready.then(
      function () {
        if (ticket !== shown) {
          return;
        }
        clearTimeout(loadingTimer);
        stage.classList.remove("is-loading");
        img.src = url; // the image read above: no second request
        img.setAttribute("data-slice", String(state.index + 1));
        img.setAttribute("data-preset", state.preset.key);
        setStatus("");
      },
      function () {
        if (ticket !== shown) {
          return;
        }
        clearTimeout(loadingTimer);
        stage.classList.remove("is-loading");
        setStatus("Slice " + (state.index + 1) + " could not be shown.");
        explain(url);
      }
    );
    readAhead();
  }

  var queue = []; // the slices to read ahead, nearest first

  function readAhead() {
    var ahead = state.direction >= 0 ? 1 : -1;
    var order = [];
    for (var distance = 1; distance <= AHEAD; distance++) {
      order.push(state.index + ahead * distance);
      if (distance <= BEHIND) {
        order.push(state.index - ahead * distance);
      }
    }
    queue = order
      .filter(function (i) {
        return i >= 0 && i < count;
      })
      .map(function (i) {
        return urlOf(i, state.preset);
      });
    pump();
  }

  function pump() {
    while (reading < PARALLEL && queue.length) {
      var url = queue.shift();
      if (kept.has(url)) {
        continue;
      }
      reading += 1;
      read(url)
        .ready.catch(function () {})
        .then(function () {
          reading -= 1;
          pump();
        });
    }
  }

  function step(delta) {
    if (!delta) {
      return;
    }
    state.direction = delta > 0 ? 1 : -1;
    show(state.index + delta);
  }

  // --- window presets ---------------------------------------------------------------------------

  function choose(key) {
    var preset = presets.find(function (p) {
      return p.key === key;
    });
    if (!preset || preset === state.preset) {
      return;
    }
    state.preset = preset;
    root.querySelectorAll("[data-preset]").forEach(function (button) {
      button.setAttribute("aria-pressed", String(button.getAttribute("data-preset") === key));
    });
    show(state.index);
  }

  root.querySelectorAll("[data-preset]").forEach(function (button) {
    button.addEventListener("click", function () {
      choose(button.getAttribute("data-preset"));
    });
  });

  // --- zoom and pan ------------------------------------------------------------------------------

  function place() {
    canvas.style.transform =
      "translate(" + state.x + "px, " + state.y + "px) scale(" + state.zoom + ")";
    text(overlay.zoom, state.zoom > 1.001 ? "Zoom " + Math.round(state.zoom * 100) + " %" : "");
  }

  // Zoom by ``factor`` keeping the point (px, py) of the stage, from its center, where it is.
  function zoomAt(factor, px, py) {
    var zoom = Math.max(ZOOM_MIN, Math.min(ZOOM_MAX, state.zoom * factor));
    var scale = zoom / state.zoom;
    state.x = px - (px - state.x) * scale;
    state.y = py - (py - state.y) * scale;
    state.zoom = zoom;
    if (zoom === 1) {
      state.x = state.y = 0;
    }
    place();
  }

  function fit() {
    state.zoom = 1;
    state.x = state.y = 0;
    place();
  }

  function pan(dx, dy) {
    if (state.zoom <= 1) {
      return;
    }
    state.x += dx;
    state.y += dy;
    place();
  }

  root.querySelectorAll("[data-zoom]").forEach(function (button) {
    button.addEventListener("click", function () {
      var how = button.getAttribute("data-zoom");
      if (how === "in") {
        zoomAt(1.25, 0, 0);
      } else if (how === "out") {
        zoomAt(0.8, 0, 0);
      } else {
        fit();
      }
    });
  });

  function fromCenter(event) {
    var rect = stage.getBoundingClientRect();
    return [event.clientX - rect.left - rect.width / 2, event.clientY - rect.top - rect.height / 2];
  }

  var wheelRest = 0;
  stage.addEventListener(
    "wheel",
    function (event) {
      event.preventDefault();
      var unit = event.deltaMode === 1 ? 33 : event.deltaMode === 2 ? stage.clientHeight : 1;
      var dy = event.deltaY * unit;
      if (event.ctrlKey || event.metaKey) {
        var point = fromCenter(event);
        zoomAt(Math.exp(-dy * 0.002), point[0], point[1]);
        return;
      }
      // A mouse's notch is one slice; a trackpad's small steps add up to one.
      if (Math.abs(dy) >= WHEEL_STEP) {
        wheelRest = 0;
        step(dy > 0 ? 1 : -1);
        return;
      }
      wheelRest += dy;
      if (Math.abs(wheelRest) >= WHEEL_STEP) {
        step(wheelRest > 0 ? 1 : -1);
        wheelRest = 0;
      }
    },
    { passive: false }
  );

  // Drag: pans a zoomed image; on a touch screen, at the fitted size, a vertical drag scrolls
  // through the slices (the page itself scrolls outside the image).
  var drag = null;
  stage.addEventListener("pointerdown", function (event) {
    if (event.button !== 0) {
      return;
    }
    drag = { x: event.clientX, y: event.clientY, rest: 0, touch: event.pointerType === "touch" };
    stage.setPointerCapture(event.pointerId);
    stage.classList.add("is-dragging");
  });
  stage.addEventListener("pointermove", function (event) {
    if (!drag) {
      return;
    }
    var dx = event.clientX - drag.x;
    var dy = event.clientY - drag.y;
    drag.x = event.clientX;
    drag.y = event.clientY;
    if (drag.touch && state.zoom <= 1) {
      drag.rest += dy;
      while (Math.abs(drag.rest) >= 16) {
        step(drag.rest > 0 ? 1 : -1);
        drag.rest -= drag.rest > 0 ? 16 : -16;
      }
      return;
    }
    pan(dx, dy);
  });
  function endDrag() {
    drag = null;
    stage.classList.remove("is-dragging");
  }
  stage.addEventListener("pointerup", endDrag);
  stage.addEventListener("pointercancel", endDrag);
  stage.addEventListener("dblclick", fit);

  // --- keys ----------------------------------------------------------------------------------------

  var PAGE = 10;
  root.addEventListener("keydown", function (event) {
    var target = event.target;
    // The slider moves itself; buttons keep Enter and Space.
    if (target === position || event.altKey || event.metaKey || event.ctrlKey) {
      return;
    }
    var key = event.key;
    var handled = true;
    if (event.shiftKey && key.indexOf("Arrow") === 0) {
      var by = 40;
      pan(
        key === "ArrowLeft" ? by : key === "ArrowRight" ? -by : 0,
        key === "ArrowUp" ? by : key === "ArrowDown" ? -by : 0
      );
    } else if (key === "ArrowDown" || key === "ArrowRight") {
      step(1);
    } else if (key === "ArrowUp" || key === "ArrowLeft") {
      step(-1);
    } else if (key === "PageDown") {
      step(Math.min(PAGE, count - 1 - state.index));
    } else if (key === "PageUp") {
      step(-Math.min(PAGE, state.index));
    } else if (key === "Home") {
      state.direction = 1;
      show(0);
    } else if (key === "End") {
      state.direction = -1;
      show(count - 1);
    } else if (key === "+" || key === "=") {
      zoomAt(1.25, 0, 0);
    } else if (key === "-" || key === "_") {
      zoomAt(0.8, 0, 0);
    } else if (key === "0") {
      fit();
    } else if (/^[1-9]$/.test(key) && presets[Number(key) - 1]) {
      choose(presets[Number(key) - 1].key);
    } else {
      handled = false;
    }
    if (handled) {
      event.preventDefault();
    }
  });

  // --- slider and buttons ----------------------------------------------------------------------

  position.addEventListener("input", function () {
    var index = Number(position.value) - 1;
    state.direction = index >= state.index ? 1 : -1;
    show(index);
  });
  root.querySelectorAll("[data-step]").forEach(function (button) {
    button.addEventListener("click", function () {
      step(Number(button.getAttribute("data-step")));
    });
  });

  text(overlay.patient, data.overlay.patient || "");
  text(overlay.patientId, data.overlay.patientId ? "ID " + data.overlay.patientId : "");
  text(overlay.studyDate, data.overlay.studyDate || "");
  text(overlay.series, data.overlay.series || "");
  place();
  show(0);
})();
