// Swagger UI over the app's own OpenAPI document; served from this origin, nothing from a CDN.
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
