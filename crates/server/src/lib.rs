//! The OpenAI-compatible HTTP API (chat, completions, SSE streaming) over the engine.
//! Empty for now: the server issue fills it.
