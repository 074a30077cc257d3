"""The top layer: the process. Builds the FastAPI app and its services at start-up, checks the
hardware (dtype probe, warm-up), runs uvicorn and the vLLM command line; nothing imports it
(docs/architecture.md, "Layers")."""
