"""HTTP layer: OpenAI-style schemas, routes, errors and streaming."""
