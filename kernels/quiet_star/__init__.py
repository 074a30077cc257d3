"""Quiet-STaR inside the vLLM engine: a logits processor that runs one thinking step per request.

`math` holds the tensor operations (torch reference), `processor` the per-request state
machine vLLM calls every step, `spec` the per-request arguments that travel in
`SamplingParams.extra_args["quiet_star"]`.
"""

PROCESSOR_FQCN = "kernels.quiet_star.processor:QuietStarLogitsProcessor"
