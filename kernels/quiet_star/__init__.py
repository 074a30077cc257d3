"""Quiet-STaR inside the vLLM engine: a logits processor that runs one thinking step per request,
and a model plugin that serves a real Quiet-STaR checkpoint with its learned mixing head.

`tensor_ops` holds the tensor operations (torch reference), `processor` the per-request state
machine vLLM calls every step, `spec` the per-request arguments that travel in
`SamplingParams.extra_args["quiet_star"]`; `checkpoint` what a Quiet-STaR checkpoint looks like,
`model` its vLLM model (Mistral + mixing head), `hidden` the hidden-state side channel from the
model to the processor, `plugin` the ModelRegistry registration. Details: docs/quiet_star.md.
"""

PROCESSOR_FQCN = "kernels.quiet_star.processor:QuietStarLogitsProcessor"
PROCESSOR_V2_FQCN = "kernels.quiet_star.processor_v2:QuietStarLogitsProcessorV2"
