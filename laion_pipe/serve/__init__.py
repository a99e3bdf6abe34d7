"""`laion-pipe serve RUN`: a local search page over a run's images (clip-retrieval's back + front,
for one run directory). `app.py` is the web API and page, `searcher.py` the index search,
`files.py` the path rules of the files it serves, `exports.py` the URL lists and blocklists.

It listens on 127.0.0.1 unless told otherwise: the page has no authentication and serves the
run's images and captions to whoever can reach it.
"""
from __future__ import annotations

from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def serve_command(out: str, port: int = DEFAULT_PORT) -> str:
    """The command that opens the page on run directory `out` (what the demo prints)."""
    import shlex

    return f"laion-pipe serve {shlex.quote(str(out))}" + ("" if port == DEFAULT_PORT else f" --port {port}")


def main_serve(run_dir: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
    """Check the run directory, then serve until interrupted."""
    import uvicorn
    from rich.console import Console

    from ..config import ConfigError
    from ..schema import STATE_DIR
    from .app import create_app

    console = Console(stderr=True)
    if "://" in run_dir:
        raise ConfigError(f"{run_dir}: serve reads a local run directory (copy or mount it first)")
    path = Path(run_dir)
    if not (path / STATE_DIR).is_dir():
        what = "does not exist" if not path.exists() else f"has no {STATE_DIR}/ (the state every stage writes)"
        raise ConfigError(f"{run_dir} is not a run directory: it {what}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning[/yellow]: listening on {host}: the page has no authentication and shows the run's "
                      "images and captions to anyone who can reach this address")
    app = create_app(str(path))
    try:
        spaces = app.state.searcher.spaces()
        console.print(f"serving {path.resolve()}: " + ", ".join(f"{s.name} ({s.rows:,} pairs)" for s in spaces.values()))
        for sp in spaces.values():  # load the CLIPs now, not on the first query
            app.state.searcher.encoders.get(sp.clip)
    except Exception as e:  # the page still serves the report and says what is missing
        console.print(f"[yellow]warning[/yellow]: {e}")
    shown = f"[{host}]" if ":" in host else host
    console.print(f"open http://{shown}:{port}/  (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
