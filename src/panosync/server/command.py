"""`panosync serve` (the HTTP API) and `panosync ui` (the web page). Both load the model once,
before they listen (`serve --ray`: its Ray workers do), so a bad --model is an error at the command
line, not in the first request; so are a bad --keep or --min-free, a --host or --port it cannot
listen on and a --state-dir that is a file or cannot be written (one sentence, exit 2, before the
model loads); a state folder already short of the --min-free reserve is a one-line warning. Both
listen on loopback unless told otherwise. With --controlnet they make ControlSync panoramas (the
`control` command's), the ControlNets loaded once like the model; with --lora, the LoRAs likewise
(checked before the model loads), whose weights a request's `lora_scales` may set."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sqlite3
import sys
import tempfile
from pathlib import Path

from .. import settings
from ..command_options import add_model_options
from .retention import DEFAULT_MIN_FREE_BYTES
from .limits import Limits

TOKEN_VARIABLE = "PANOSYNC_TOKEN"


def default_state_dir() -> Path:
    """$XDG_STATE_HOME/panosync/server, ~/.local/state/panosync/server when unset."""
    state_home = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state_home) / "panosync" / "server"


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, f"{settings.DEFAULT_MODEL}; with --controlnet {settings.DEFAULT_CONTROL_MODEL}")
    parser.add_argument("--controlnet", action="append", default=None, metavar="FOLDER_OR_ID",
                        help="make ControlSync panoramas with this diffusers ControlNet (folder or hub id; tiny-random: "
                             "random weights, a smoke test), repeatable: every request then needs a condition")
    parser.add_argument("--view-batch-size", dest="view_batch_size", type=int, default=None,
                        help="views per network call: faster on a GPU, same result")
    parser.add_argument("--max-pixels", dest="max_pixels", type=int, default=Limits.max_pixels,
                        help=f"largest width × height accepted (default {Limits.max_pixels:,})")
    parser.add_argument("--max-side", dest="max_side", type=int, default=Limits.max_side,
                        help=f"longest width or height accepted, in pixels (default {Limits.max_side})")
    parser.add_argument("--max-queue", dest="max_queue", type=int, default=Limits.max_queue,
                        help=f"jobs that may wait to run; more are refused (default {Limits.max_queue})")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: loopback only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--state-dir", dest="state_dir", type=Path, default=None,
                        help=f"folder of the job database and the outputs (default: {default_state_dir()})")
    parser.add_argument("--token", default=None,
                        help=f"bearer token the API asks for (default: ${TOKEN_VARIABLE}; none when unset)")
    parser.add_argument("--max-body-bytes", dest="max_body_bytes", type=int, default=None,
                        help="largest request body accepted (default: 16 KiB of fields and room for images as large "
                             "as --max-pixels, 16 MiB each by default: an image input and its mask, or with "
                             "--controlnet one condition image per ControlNet)")
    parser.add_argument("--keep", default=None, metavar="AGE,SIZE",
                        help="delete finished jobs and their files older than AGE (30m, 12h, 7d, 2w) and/or, oldest "
                             "first, beyond SIZE of their outputs and conditions (500MB, 2GB): 7d, 2GB or 7d,2GB "
                             "(default: keep every job)")
    parser.add_argument("--min-free", dest="min_free", default=None, metavar="SIZE",
                        help=f"free space the state folder's disk must keep (64MB, 1GB, 512MiB; 0: none): below it "
                             f"/health says degraded, POST answers 507 and queued jobs wait, while --keep retention "
                             f"runs (default: {DEFAULT_MIN_FREE_BYTES // 2**20}MiB)")
    parser.add_argument("--public-docs", dest="public_docs", action="store_true",
                        help="serve /openapi.json, /docs and /redoc without the token (default: with --token, "
                             "they need it too)")
    from ..runner.cluster import add_cluster_options

    add_cluster_options(parser)
    parser.add_argument("--max-waiters", dest="max_waiters", type=int, default=Limits.max_waiters,
                        help=f"clients that may wait for their jobs at once (Prefer: wait); past them a job is "
                             f"queued and answered at once (default {Limits.max_waiters})")


def add_ui_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: loopback only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--out-dir", dest="out_dir", type=Path, default=Path("panosync-ui"),
                        help="folder the panoramas are saved to (default: ./panosync-ui, in the folder the page is "
                             "started from; the page prints where)")


def _limits(args: argparse.Namespace) -> Limits:
    return Limits(max_pixels=args.max_pixels, max_side=args.max_side, max_queue=args.max_queue,
                  max_body_bytes=getattr(args, "max_body_bytes", None),
                  max_waiters=getattr(args, "max_waiters", Limits.max_waiters))


def _load(args: argparse.Namespace):
    """The model, loaded here on --device in --dtype."""
    from .generation import PanoramaModel

    from ..models import pick_device
    from ..precision import pick_precision

    from ..loras import weights_of_options

    settings.check({"view_batch_size": args.view_batch_size})
    pick_precision(args.dtype, pick_device(args.device))  # a bad --device or --dtype: one sentence, first
    loras, inversions = weights_of_options(args.lora, args.lora_weight_name, args.textual_inversion)
    model = args.model or (settings.DEFAULT_CONTROL_MODEL if args.controlnet else settings.DEFAULT_MODEL)
    with_controlnets = f" with {', '.join(args.controlnet)}" if args.controlnet else ""
    print(f"loading {model}{with_controlnets} …", file=sys.stderr)
    loaded = PanoramaModel.load(model, args.device, args.dtype, args.model_config,
                                args.view_batch_size, args.controlnet, args.vae, loras, inversions,
                                threads=args.threads)
    if getattr(args, "gradient_checkpointing", False):
        loaded.pipe.enable_sync_checkpointing()
    return loaded


def _open_workers(args: argparse.Namespace):
    """serve --ray: the Ray workers, each loading the model, and the model as they loaded it
    (ray_worker.WorkersModel). The server loads no copy of its own: it only checks requests and
    writes the PNGs, so its machine needs neither the weights' memory nor a GPU."""
    from ..loras import weights_of_options
    from ..models import resolve_model
    from ..runner import ModelSpec, open_engine
    from .ray_worker import WorkersModel

    settings.check({"view_batch_size": args.view_batch_size})
    name = args.model or settings.DEFAULT_MODEL
    source = resolve_model(name)  # a model that is not there: one sentence, before any worker starts
    loras, inversions = weights_of_options(args.lora, args.lora_weight_name, args.textual_inversion)
    spec = ModelSpec(name, args.model_config, args.vae, args.device, args.dtype, args.gradient_checkpointing,
                     loras, inversions, threads=args.threads)
    engine = open_engine(spec, args.ray, args.workers)
    try:
        return WorkersModel(name, engine, args.model_config, args.view_batch_size, source, loras, inversions), engine
    except BaseException:
        engine.close()
        raise


def check_address(host: str, port: int) -> None:
    """A ValueError with one sentence when the server could not listen on `host`:`port` (a port out
    of range, a host that is no address, a port another program holds): found before the model
    loads, not by the web server after it. A probe socket binds as uvicorn's does (Gradio's too): IPv6
    for a host with a colon, else IPv4, with SO_REUSEADDR."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be from 0 to 65535, got {port}.")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise ValueError(f"--host {host} is not an address this machine can listen on ({error}): give an IP "
                         f"address such as 127.0.0.1 or 0.0.0.0, or a name that resolves.") from None
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise ValueError(f"Cannot listen on {host} port {port} ({error.strerror or error}): another program "
                             f"has the port, or the address is not this machine's; give another --port or "
                             f"--host.") from None


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def check_state_dir(state_dir: Path) -> None:
    """A ValueError with one sentence when `state_dir` cannot hold a server's jobs: it is a file, it
    cannot be created or written, or another server holds it. A real write, not os.access: root
    passes every permission check, but not a read-only mount or a full disk."""
    from .jobs import JobStore, StoreFault

    if state_dir.exists() and not state_dir.is_dir():
        raise ValueError(f"--state-dir {state_dir} is a file: give a folder (it is created when missing).")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=state_dir):
            pass
    except OSError as error:
        raise ValueError(f"--state-dir {state_dir} cannot be created or written ({error.strerror or error}): give "
                         f"a folder this user may write to.") from None
    probe = JobStore(state_dir)  # a folder another server holds is a ValueError (StateDirInUse) too
    try:
        probe.open()
    except (OSError, sqlite3.Error, StoreFault) as error:
        raise ValueError(f"--state-dir {state_dir} cannot hold the job database ({error}): give another "
                         f"folder.") from None
    finally:
        probe.close()


def warn_if_short_of_space(state_dir: Path, min_free: int) -> None:
    """One line on stderr when the disk of `state_dir` has less free space than the reserve: the
    server starts (space may be freed, or retention free it), but it takes no job until then."""
    from .retention import format_size

    try:
        free = shutil.disk_usage(state_dir).free
    except OSError:  # check_state_dir has written there; health() says what is wrong if this persists
        return
    if free < min_free:
        print(f"panosync: warning: the state folder {state_dir} has {format_size(free)} free, under the --min-free "
              f"reserve of {format_size(min_free)}: jobs wait and POST answers 507 until space is freed there (or "
              f"start with a smaller --min-free).", file=sys.stderr)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .api import create_app
    from .retention import parse_keep, parse_min_free

    from ..runner.cluster import check_cluster_options

    check_cluster_options(args.ray, args.workers, args.dtype, args.device)
    if args.ray and args.controlnet:
        raise ValueError("serve --ray makes SyncDiffusion panoramas: ControlSync (--controlnet) runs without --ray.")
    check_address(args.host, args.port)
    limits = _limits(args)
    retention = None if args.keep is None else parse_keep(args.keep)
    min_free = DEFAULT_MIN_FREE_BYTES if args.min_free is None else parse_min_free(args.min_free)
    token = args.token or os.environ.get(TOKEN_VARIABLE) or None
    if not _is_loopback(args.host) and token is None:
        print(f"panosync: warning: listening on {args.host} without a token: anyone who can reach this port can "
              f"run jobs (set --token or ${TOKEN_VARIABLE}).", file=sys.stderr)
    state_dir = (args.state_dir or default_state_dir()).expanduser()
    check_state_dir(state_dir)  # now, not after loading the model
    warn_if_short_of_space(state_dir, min_free)
    engine = None
    if args.ray:
        model, engine = _open_workers(args)
    else:
        model = _load(args)
    try:
        app = create_app(model, state_dir, limits, token, public_docs=args.public_docs, retention=retention,
                         min_free_bytes=min_free, engine=engine)
        print(f"jobs and outputs in {state_dir}", file=sys.stderr)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    finally:
        if engine is not None:
            engine.close()
    return 0


def ui(args: argparse.Namespace) -> int:
    from ..files import check_folder
    from .ui import build_ui, launch

    limits = _limits(args)
    check_address(args.host, args.port)
    check_folder(args.out_dir, "--out-dir")  # now, not at the first panorama
    loaded = _load(args)  # the model's options are checked (one sentence) before anything is said
    # the default is relative to where the page was started: say where that is
    print(f"panoramas are saved in {Path(args.out_dir).expanduser().resolve()}", file=sys.stderr)
    page = build_ui(loaded, limits, args.out_dir)
    launch(page, args.out_dir, args.host, args.port)
    return 0
