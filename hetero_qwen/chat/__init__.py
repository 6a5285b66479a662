"""`hetero-qwen chat`: conversation bookkeeping (conversation.py, prompt_cache.py, transcript.py)
apart from the terminal (repl.py, display.py, line_input.py, commands.py)."""
