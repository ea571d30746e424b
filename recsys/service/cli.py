"""`recsys-serve --run artifacts/<run>`: load a finished run's serving path once, then serve it over HTTP (Uvicorn)."""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recsys-serve", description="Serve a finished run: the web page at /, the API at /docs."
    )
    parser.add_argument(
        "--run", required=True, help="the run folder, e.g. artifacts/default (its chain done up to the served ranker)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    args = parser.parse_args(argv)

    import uvicorn

    import recsys  # noqa: F401  (the Keras environment, before TensorFlow is imported)
    from recsys.service.app import create_app
    from recsys.service.served_run import RunNotServableError, ServedRun

    start = time.perf_counter()
    try:
        served = ServedRun.load(args.run)
    except (RunNotServableError, FileNotFoundError) as error:
        print(f"recsys-serve: {error}", file=sys.stderr)
        return 2
    print(
        f"recsys-serve: run {served.name!r} loaded in {time.perf_counter() - start:.1f} s "
        f"({', '.join(served.loaded)}); open http://{args.host}:{args.port}/",
        flush=True,
    )
    uvicorn.run(create_app(served), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
