/* WebAuthn in the portal: registering a security key or passkey, and signing in with one.
   A button carries data-webauthn="register" or "authenticate", data-options-url (POST: the
   options as JSON) and data-verify-url (POST: the browser's answer as JSON, which answers
   {"redirect": url} or {"error": {"message": ...}}). Binary fields travel as base64url. */
(function () {
  "use strict";

  function toBytes(b64url) {
    var b64 = b64url.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    var raw = atob(b64);
    var out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out.buffer;
  }

  function toB64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var raw = "";
    for (var i = 0; i < bytes.length; i++) raw += String.fromCharCode(bytes[i]);
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function csrfToken() {
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify(body || {}),
    }).then(function (response) {
      return response.json().then(function (data) {
        if (!response.ok) {
          var error = new Error((data.error && data.error.message) || "The request failed.");
          error.redirect = data.redirect;
          throw error;
        }
        return data;
      });
    });
  }

  function creationOptions(o) {
    o.challenge = toBytes(o.challenge);
    o.user.id = toBytes(o.user.id);
    (o.excludeCredentials || []).forEach(function (c) { c.id = toBytes(c.id); });
    return { publicKey: o };
  }

  function requestOptions(o) {
    o.challenge = toBytes(o.challenge);
    (o.allowCredentials || []).forEach(function (c) { c.id = toBytes(c.id); });
    return { publicKey: o };
  }

  function registrationJSON(cred) {
    var r = cred.response;
    return {
      id: cred.id,
      rawId: toB64url(cred.rawId),
      type: cred.type,
      response: {
        clientDataJSON: toB64url(r.clientDataJSON),
        attestationObject: toB64url(r.attestationObject),
        transports: r.getTransports ? r.getTransports() : [],
      },
      clientExtensionResults: cred.getClientExtensionResults(),
    };
  }

  function authenticationJSON(cred) {
    var r = cred.response;
    return {
      id: cred.id,
      rawId: toB64url(cred.rawId),
      type: cred.type,
      response: {
        clientDataJSON: toB64url(r.clientDataJSON),
        authenticatorData: toB64url(r.authenticatorData),
        signature: toB64url(r.signature),
        userHandle: r.userHandle ? toB64url(r.userHandle) : null,
      },
      clientExtensionResults: cred.getClientExtensionResults(),
    };
  }

  function showError(button, message) {
    var box = document.querySelector("[data-webauthn-error]");
    if (box) {
      box.textContent = message;
      box.hidden = false;
    }
    button.disabled = false;
  }

  function explain(error) {
    if (error && error.name === "NotAllowedError") {
      return "The browser's request was cancelled or timed out. Try again.";
    }
    if (error && error.name === "InvalidStateError") {
      return "This security key is already registered to your account.";
    }
    if (error && error.name === "SecurityError") {
      return "The browser refused: security keys need the portal opened by its name, not an IP address.";
    }
    return (error && error.message) || "Something went wrong. Try again.";
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-webauthn]");
    if (!button) return;
    event.preventDefault();
    if (!window.PublicKeyCredential || !navigator.credentials) {
      showError(button, "This browser cannot use security keys or passkeys.");
      return;
    }
    button.disabled = true;
    var register = button.getAttribute("data-webauthn") === "register";
    var verifyUrl = button.getAttribute("data-verify-url");
    post(button.getAttribute("data-options-url"))
      .then(function (options) {
        return register
          ? navigator.credentials.create(creationOptions(options))
          : navigator.credentials.get(requestOptions(options));
      })
      .then(function (cred) {
        if (register) {
          var name = document.querySelector("[data-webauthn-form] input[name=name]");
          return post(verifyUrl, { name: name ? name.value : "", credential: registrationJSON(cred) });
        }
        return post(verifyUrl, { credential: authenticationJSON(cred) });
      })
      .then(function (result) {
        window.location.assign(result.redirect);
      })
      .catch(function (error) {
        if (error && error.redirect) {
          window.location.assign(error.redirect);
          return;
        }
        showError(button, explain(error));
      });
  });
})();
