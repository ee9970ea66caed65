"""The shared test-time memory engine: a small network trained online by its own inner loss
(memory architecture, attentional bias, retention, learning rule, chunked training form)."""
