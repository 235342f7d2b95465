// The SSO login comes back with the session key in the URL fragment, which browsers never
// send to the server: hand it over in a POST (and drop it from the address bar and history).
document.addEventListener("DOMContentLoaded", function () {
  var answer = new URLSearchParams(window.location.hash.slice(1));
  history.replaceState(null, "", window.location.pathname);
  document.getElementById("sso-key").value = answer.get("key") || "";
  document.getElementById("sso-error").value = answer.get("error") || "";
  document.getElementById("sso-error-description").value = answer.get("error_description") || "";
  document.getElementById("sso-return").submit();
});
