"""The OpenAI-compatible server: requests, the batching engine over the runtime, the wire shapes,
the routes, the event store. Needs the ``serve`` extra."""
from ..extras import require

require("serve", "steerwatch.serve (the server)")
