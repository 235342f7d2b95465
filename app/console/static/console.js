// Loading states: a submitted form's button says it is working (and cannot be pressed twice).
// Served from this origin like htmx: the pages' CSP allows no inline script.
document.addEventListener("submit", function (event) {
  var button = event.target.querySelector("button[type=submit]");
  if (button && event.target.method.toLowerCase() === "post") {
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    button.textContent = "Working…";
  }
});
