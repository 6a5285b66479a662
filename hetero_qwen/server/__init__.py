"""`hetero-qwen serve`: an OpenAI-compatible HTTP server over one Engine.

app.py (routes, auth, body limit) -> requests.py (validation) -> worker.py (FIFO queue, one
generation at a time) -> generation.py (prompt cache + Engine.generate + reply parsing) ->
responses.py (JSON bodies and stream chunks). The web libraries are imported only here, so the rest
of hetero_qwen runs without the `serve` extra.
"""
