"""The bottom layer: what every other layer of the gateway shares and nothing here imports.

Settings, errors, the request types every method shares, usage and FLOPs accounting, the
per-request work bound, metrics and request ids. Why a layer of its own: these are the
vocabulary of the request path; keeping them free of imports from above is what lets any
module be imported first (docs/architecture.md, "Layers").
"""
