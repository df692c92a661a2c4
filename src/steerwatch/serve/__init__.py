"""steerwatch serve: an OpenAI-compatible server that deploys a steering policy and watches every response."""
