"""CLI command modules. Each module exposes `register(app: typer.Typer)` and is listed in
`hetero_qwen.cli.COMMAND_MODULES`; keep one command family per module."""
