"""The ``flash-vstream serve`` command: load a model, serve the web page of :mod:`flash_vstream.serve.app`.

    flash-vstream serve [--model M] [--host 127.0.0.1] [--port 8000] [--max-sessions 4] [--max-upload-mb 8]
        [--fps 1] [--frame-side 448] [--max-new-tokens 32] [--idle-minutes 10] [--device D] [--dtype T] ...

It binds to 127.0.0.1 (this machine only) unless ``--host`` says otherwise. Only the standard library is imported
until the command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

__all__ = ["add_serve_command"]


def add_serve_command(subparsers, *, add_model_arguments: Callable, model_options: Callable) -> None:
    """Register ``serve`` on the main command's subparsers.

    Args:
        subparsers: the main parser's subparsers.
        add_model_arguments: the main command's ``add_model_arguments(parser)`` (``--device``, ``--dtype``, ...).
        model_options: the main command's ``model_options(args) -> (family, options)``.
    """
    p = subparsers.add_parser("serve", help="a local web page: play a video or the webcam into a model's memory and "
                                            "ask questions about it as it plays")
    p.add_argument("--model", default=None, help="checkpoint directory or Hub id (default: the built-in demo model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-sessions", type=int, default=4, help="most browser tabs streaming at once (default 4)")
    p.add_argument("--max-upload-mb", type=float, default=8.0, help="most megabytes of one uploaded frame (default 8)")
    p.add_argument("--fps", type=float, default=1.0,
                   help="frames per second of video time sent to the memory (default 1, what the released models saw)")
    p.add_argument("--frame-side", type=int, default=448, help="longer side of the frames the page sends (default 448)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="generation budget of an answer (default 32)")
    p.add_argument("--idle-minutes", type=float, default=10.0,
                   help="a tab silent this long loses its session when another tab needs one (default 10)")
    add_model_arguments(p)
    p.set_defaults(func=run_serve, model_options=model_options)


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from flash_vstream.serve.app import ServeConfig, create_app
    except ImportError as err:
        print(f'flash-vstream serve: error: the web page needs FastAPI and uvicorn ({err.name} is missing): '
              'pip install "flash-vstream[serve]"', file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.model is None:
        from flash_vstream.data.demo import demo_model_dir, describe_default

        args.model = str(demo_model_dir())
        print(describe_default(), file=sys.stderr)
    config = ServeConfig(max_sessions=args.max_sessions, max_upload_mb=args.max_upload_mb, fps=args.fps,
                         frame_side=args.frame_side, max_new_tokens=args.max_new_tokens,
                         idle_seconds=args.idle_minutes * 60, model_name=str(args.model))
    from flash_vstream.inference.pipeline import load_model

    family, options = args.model_options(args)
    vs = load_model(args.model, device=args.device, dtype=args.dtype, family=family, **options)
    print(f"serving {args.model} on http://{args.host}:{args.port}/ (Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(create_app(vs, config), host=args.host, port=args.port, log_level="warning")
    return 0
