"""Typer commands: parse, call a service, render. One module per command or group."""
