"""Tools the assistant can call: the operator's HTTP tools (definitions, their calls) and the built-in
follow-ups; `loop` runs a model's tool calls round after round."""
