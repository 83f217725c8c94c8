// Starts Swagger UI (swagger-ui-bundle.js, served from /docs/assets) on the OpenAPI document
// whose URL the page names: the page itself holds no script.
"use strict";

window.addEventListener("DOMContentLoaded", () => {
  window.ui = window.SwaggerUIBundle({
    url: document.body.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    // No call to the validator service of swagger.io: the page talks to this service only.
    validatorUrl: null,
    tryItOutEnabled: false,
  });
});
