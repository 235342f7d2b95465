// Starts Swagger UI on /docs (Switchboard). Kept out of the page so the page's CSP needs no
// inline script; validatorUrl is null so the page never calls validator.swagger.io.
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-spec-url"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    persistAuthorization: false,
    displayRequestDuration: true,
  });
})();
