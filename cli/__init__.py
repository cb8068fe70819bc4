"""posenc's command-line interface (Typer)."""
