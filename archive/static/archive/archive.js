// Strata archive pages: the upload drop area and the live progress of an ingest job.
// No library: fetch, File.slice and a few DOM updates.
(function () {
  "use strict";

  var PARALLEL = 3;
  var RETRIES = 5;

  function csrfToken(root) {
    var input = (root || document).querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function sleep(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  function bytesLabel(value) {
    var units = [["TiB", 1099511627776], ["GiB", 1073741824], ["MiB", 1048576], ["KiB", 1024]];
    for (var i = 0; i < units.length; i++) {
      if (value >= units[i][1]) {
        var n = value / units[i][1];
        return (n < 100 ? n.toFixed(1) : Math.round(n)) + " " + units[i][0];
      }
    }
    return value + " B";
  }

  function durationLabel(seconds) {
    if (!isFinite(seconds)) return "—";
    seconds = Math.round(seconds);
    if (seconds < 60) return seconds + " s";
    var minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min " + String(seconds % 60).padStart(2, "0") + " s";
    return Math.floor(minutes / 60) + " h " + String(minutes % 60).padStart(2, "0") + " min";
  }

  function randomId() {
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  async function post(url, body, root, contentType) {
    var headers = { "X-CSRFToken": csrfToken(root), "Accept": "application/json" };
    if (contentType) headers["Content-Type"] = contentType;
    var response = await fetch(url, {
      method: "POST", body: body, headers: headers, credentials: "same-origin",
    });
    var data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    return { ok: response.ok, status: response.status, data: data };
  }

  function errorMessage(result) {
    if (result && result.data && result.data.error) return result.data.error.message;
    if (result && result.status === 403) return "Your role may not send images.";
    return "The server answered " + (result ? result.status : "nothing") + ".";
  }

  // --- collecting files: inputs, dropped files and dropped folders ---------------------------

  function readAllEntries(reader) {
    return new Promise(function (resolve, reject) {
      var all = [];
      (function next() {
        reader.readEntries(function (entries) {
          if (!entries.length) return resolve(all);
          all = all.concat(Array.prototype.slice.call(entries));
          next();
        }, reject);
      })();
    });
  }

  async function walk(entry, path, out) {
    if (entry.isFile) {
      var file = await new Promise(function (resolve, reject) { entry.file(resolve, reject); });
      out.push({ file: file, path: path + file.name });
    } else if (entry.isDirectory) {
      var entries = await readAllEntries(entry.createReader());
      for (var i = 0; i < entries.length; i++) await walk(entries[i], path + entry.name + "/", out);
    }
  }

  async function droppedFiles(dataTransfer) {
    var out = [];
    var items = dataTransfer.items ? Array.prototype.slice.call(dataTransfer.items) : [];
    var entries = items.map(function (item) {
      return item.kind === "file" && item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
    });
    if (entries.length && entries.every(Boolean)) {
      for (var i = 0; i < entries.length; i++) await walk(entries[i], "", out);
      return out;
    }
    Array.prototype.forEach.call(dataTransfer.files, function (f) { out.push({ file: f, path: f.name }); });
    return out;
  }

  function inputFiles(input) {
    return Array.prototype.map.call(input.files, function (f) {
      return { file: f, path: f.webkitRelativePath || f.name };
    });
  }

  // --- the uploader ----------------------------------------------------------------------------

  function Uploader(form) {
    this.form = form;
    this.chunk = parseInt(form.getAttribute("data-chunk-bytes"), 10) || 8388608;
    this.status = form.querySelector("[data-upload-status]");
    this.bar = form.querySelector("[data-upload-bar]");
    this.progress = form.querySelector("[data-upload-progress]");
    this.title = form.querySelector("[data-upload-title]");
    this.figures = form.querySelector("[data-upload-figures]");
    this.detail = form.querySelector("[data-upload-detail]");
    this.rate = form.querySelector("[data-upload-rate]");
    this.errors = form.querySelector("[data-upload-errors]");
    this.busy = false;
  }

  Uploader.prototype.show = function () {
    var percent = this.totalBytes ? Math.floor((this.sentBytes * 100) / this.totalBytes) : 100;
    this.bar.style.width = percent + "%";
    this.progress.setAttribute("aria-valuenow", String(percent));
    this.figures.textContent = this.doneFiles + " of " + this.items.length + " files · " +
      bytesLabel(this.sentBytes) + " of " + bytesLabel(this.totalBytes);
    var seconds = (Date.now() - this.started) / 1000;
    if (seconds > 1 && this.sentBytes) {
      var rate = this.sentBytes / seconds;
      this.rate.textContent = bytesLabel(rate) + "/s · " +
        durationLabel((this.totalBytes - this.sentBytes) / rate) + " left";
    }
  };

  Uploader.prototype.fail = function (path, message) {
    var li = document.createElement("li");
    li.textContent = path + ": " + message;
    this.errors.appendChild(li);
    this.errors.hidden = false;
  };

  Uploader.prototype.sendFile = async function (item) {
    var id = randomId();
    var size = item.file.size;
    var offset = 0;
    var attempts = 0;
    for (;;) {
      var end = Math.min(offset + this.chunk, size);
      var final = end >= size;
      var query = new URLSearchParams({
        upload: id, name: item.path, offset: String(offset), size: String(size), final: final ? "1" : "0",
      });
      var result = null;
      try {
        result = await post(this.job.upload_url + "?" + query.toString(), item.file.slice(offset, end),
          this.form, "application/octet-stream");
      } catch (networkError) {
        result = null;
      }
      if (result && result.ok) {
        this.sentBytes += end - offset;
        offset = end;
        attempts = 0;
        this.show();
        if (final) return true;
        continue;
      }
      var fields = result && result.data && result.data.error ? result.data.error.fields || {} : {};
      if (result && (result.status === 409 || result.status === 400) && fields.offset) {
        // The server has a different amount of this file: continue from there.
        var have = parseInt(fields.offset[0], 10);
        if (!isNaN(have) && have !== offset && attempts < RETRIES) {
          this.sentBytes += have - offset;
          offset = have;
          attempts += 1;
          continue;
        }
      }
      var retriable = !result || result.status >= 500 || result.status === 429;
      attempts += 1;
      if (!retriable || attempts > RETRIES) {
        this.fail(item.path, errorMessage(result));
        this.sentBytes += size - offset;
        return false;
      }
      this.detail.textContent = "Connection trouble; retrying " + item.path + "…";
      await sleep(1000 * attempts);
    }
  };

  Uploader.prototype.start = async function (items) {
    if (this.busy || !items.length) return;
    this.busy = true;
    this.items = items;
    this.totalBytes = items.reduce(function (sum, item) { return sum + item.file.size; }, 0);
    this.sentBytes = 0;
    this.doneFiles = 0;
    this.started = Date.now();
    this.errors.innerHTML = "";
    this.errors.hidden = true;
    this.status.hidden = false;
    this.bar.className = "progress-bar";
    this.form.classList.add("is-busy");
    this.title.textContent = "Uploading " + items.length + " file" + (items.length === 1 ? "" : "s") + "…";
    var leave = function (event) { event.preventDefault(); event.returnValue = ""; };
    window.addEventListener("beforeunload", leave);
    try {
      var created = await post(this.form.getAttribute("data-create-url"), null, this.form);
      if (!created.ok) throw new Error(errorMessage(created));
      this.job = created.data;
      this.show();
      var queue = items.slice();
      var self = this;
      var sent = 0;
      var workers = [];
      for (var w = 0; w < Math.min(PARALLEL, queue.length); w++) {
        workers.push((async function () {
          while (queue.length) {
            var item = queue.shift();
            self.detail.textContent = item.path;
            if (await self.sendFile(item)) sent += 1;
            self.doneFiles += 1;
            self.show();
          }
        })());
      }
      await Promise.all(workers);
      if (!sent) throw new Error("No file could be uploaded.");
      this.title.textContent = "Upload complete; starting the ingest…";
      this.detail.textContent = "";
      var finished = await post(this.job.finish_url, null, this.form);
      if (!finished.ok) throw new Error(errorMessage(finished));
      this.bar.className = "progress-bar is-done";
      window.removeEventListener("beforeunload", leave);
      window.location.assign(this.job.job_url);
    } catch (error) {
      window.removeEventListener("beforeunload", leave);
      this.title.textContent = "Upload failed";
      this.bar.className = "progress-bar is-failed";
      this.fail("Upload", error.message);
      this.form.classList.remove("is-busy");
      this.busy = false;
    }
  };

  function setUpUploader(form) {
    var uploader = new Uploader(form);
    form.addEventListener("submit", function (event) { event.preventDefault(); });
    form.querySelectorAll("[data-upload-input]").forEach(function (input) {
      input.addEventListener("change", function () {
        var items = inputFiles(input);
        input.value = "";
        uploader.start(items);
      });
    });
    ["dragenter", "dragover"].forEach(function (type) {
      form.addEventListener(type, function (event) {
        event.preventDefault();
        form.classList.add("is-over");
      });
    });
    ["dragleave", "dragend"].forEach(function (type) {
      form.addEventListener(type, function (event) {
        if (!form.contains(event.relatedTarget)) form.classList.remove("is-over");
      });
    });
    form.addEventListener("drop", function (event) {
      event.preventDefault();
      form.classList.remove("is-over");
      droppedFiles(event.dataTransfer).then(function (items) { uploader.start(items); });
    });
  }

  // --- job progress ------------------------------------------------------------------------------

  function setUpProgress(box) {
    var url = box.getAttribute("data-progress-url");
    if (box.getAttribute("data-finished") === "1") return;
    var bar = box.querySelector("[data-progress-bar]");
    var badge = box.querySelector("[data-badge]");
    var delay = 1000;

    function render(data) {
      box.querySelectorAll("[data-field]").forEach(function (node) {
        var value = data[node.getAttribute("data-field")];
        node.textContent = value === null || value === undefined ? "?" : value;
      });
      box.querySelectorAll("[data-label]").forEach(function (node) {
        node.textContent = data.labels[node.getAttribute("data-label")];
      });
      badge.className = "badge badge-" + (data.badge || data.phase);
      if (data.percent === null) {
        bar.className = "progress-bar is-indeterminate";
        bar.style.width = "";
      } else {
        bar.className = "progress-bar" + (data.state === "done" ? " is-done" : data.state === "failed" ? " is-failed" : "");
        bar.style.width = data.percent + "%";
        bar.parentNode.setAttribute("aria-valuenow", String(data.percent));
      }
      var error = box.querySelector("[data-job-error]");
      if (error) error.hidden = !data.error;
    }

    async function poll() {
      try {
        var response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
        if (response.ok) {
          var data = await response.json();
          render(data);
          if (data.finished) {
            // The failure list is rendered by the server: show it once the job has ended.
            window.location.reload();
            return;
          }
          delay = 1000;
        } else {
          delay = Math.min(delay * 2, 15000);
        }
      } catch (e) {
        delay = Math.min(delay * 2, 15000);
      }
      setTimeout(poll, delay);
    }
    setTimeout(poll, delay);
  }

  document.querySelectorAll("form[data-uploader]").forEach(setUpUploader);
  document.querySelectorAll("[data-job-progress]").forEach(setUpProgress);
})();
