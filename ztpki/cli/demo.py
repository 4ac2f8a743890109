"""`ztpki demo`: a demo PKI on 127.0.0.1 (ztpki/demo/)."""

from __future__ import annotations

from pathlib import Path

import click

from ztpki.cli.admin import GetInstance


def register(main: click.Group, get_instance: GetInstance) -> None:
    @main.command()
    @click.option("--dir", "directory", required=True, type=click.Path(file_okay=False), help="Demo instance directory (created or reused).")
    @click.option("--port", type=int, default=8080, show_default=True)
    @click.option("--tls-port", type=int, help="HTTPS port (EST)  [default: PORT + 1]")
    @click.option("--no-serve", is_flag=True, help="Prepare DIR and demo.json, then exit.")
    def demo(directory: str, port: int, tls_port: int | None, no_serve: bool) -> None:
        """A demo PKI on 127.0.0.1: prints how to try each part with openssl, curl and strongSwan pki."""
        from ztpki.demo.run import run_demo

        run_demo(Path(directory), port=port, tls_port=tls_port, serve=not no_serve)
