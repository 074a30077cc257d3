"""thinkscale gateway: an OpenAI-style endpoint that serves one model several reasoning ways."""
