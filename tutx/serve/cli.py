"""The command line: ``tutx serve`` (the OpenAI-compatible server) and ``tutx serve-balancer``.

    tutx serve --model tiny --port 8000
    tutx serve-balancer --backend http://127.0.0.1:8001 --backend http://127.0.0.1:8002 --port 8000

``tutx serve`` binds 127.0.0.1 unless told otherwise. On SIGTERM it drains: new requests get
503 (and ``/health`` too, so a balancer stops sending), running ones finish for up to
``--shutdown-timeout`` seconds, the rest are aborted, then the process exits 0.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import uvicorn


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="'tiny' (shipped, offline), a model folder or a Hub name")
    p.add_argument("--served-model-name", default=None, help="the id clients send as 'model' (default: --model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    p.add_argument("--max-queued", type=int, default=64, help="sequences allowed to wait; beyond: 429")
    p.add_argument("--max-num-seqs", type=int, default=16, help="sequences in the running batch")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--num-blocks", type=int, default=None, help="KV-cache blocks (default: room for every seq)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0)
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--max-body-bytes", type=int, default=1_000_000)
    p.add_argument("--cache-size", type=int, default=1024, help="response-cache entries (0: off)")
    p.add_argument("--cache-ttl", type=float, default=600.0)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: tutx.device.get())")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--keep-alive", type=float, default=30.0,
                   help="seconds an idle HTTP connection stays open (longer than clients' pools keep theirs)")
    p.add_argument("--log-level", default="warning")


def _balancer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", action="append", required=True, help="a replica's base URL (repeat)")
    p.add_argument("--policy", default="least-outstanding",
                   choices=("round-robin", "least-outstanding", "power-of-two", "prefix-affinity"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--health-interval", type=float, default=1.0)
    p.add_argument("--log-level", default="warning")


def build_server(args):
    """``(app, uvicorn.Server)`` for ``tutx serve`` arguments, with the SIGTERM drain installed."""
    import torch

    from tutx.engine import EngineConfig, LLMEngine
    from tutx.models import load
    from tutx.serve.app import create_app
    from tutx.serve.config import ServerConfig

    config = ServerConfig(model_name=args.served_model_name or args.model, api_key=args.api_key,
                          max_queued=args.max_queued, request_timeout=args.request_timeout,
                          max_body_bytes=args.max_body_bytes, shutdown_timeout=args.shutdown_timeout,
                          cache_size=args.cache_size, cache_ttl=args.cache_ttl)  # checked before the model loads
    engine_config = EngineConfig(max_num_seqs=args.max_num_seqs, num_blocks=args.num_blocks,
                                 max_model_len=args.max_model_len)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model, device=args.device)
    engine = LLMEngine(model, tokenizer, engine_config)
    app = create_app(engine, config)
    server = DrainingServer(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                           timeout_graceful_shutdown=5, timeout_keep_alive=args.keep_alive),
                                app.state.tutx)
    return app, server


class DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM drains (503 to new requests and /health) before the usual shutdown."""

    def __init__(self, config, state):
        super().__init__(config)
        self.state, self._drain_started = state, False

    def handle_exit(self, sig, frame):
        if sig != signal.SIGTERM or self._drain_started:
            return super().handle_exit(sig, frame)
        self._drain_started = True
        self.state.draining = True
        loop = asyncio.get_event_loop()  # signal handlers run in the main thread, which runs the loop
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain()))

    async def _drain(self):
        st = self.state
        if not await st.front.wait_idle(st.config.shutdown_timeout):
            st.front.stop()  # abort what is left: its clients get an error event or a 503
        await asyncio.sleep(0.05)  # let the last chunks reach their sockets
        self.should_exit = True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tutx", description="tutx command line")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_args(sub.add_parser("serve", help="serve a model through the OpenAI API"))
    _balancer_args(sub.add_parser("serve-balancer", help="a load balancer over tutx serve replicas"))
    from tutx.bench.cli import add_bench_parser, run_bench  # Chapter 8: tutx bench serve|sweep|report

    add_bench_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return run_bench(args, parser, argv)
    if args.command == "serve":
        try:
            _, server = build_server(args)
        except (TypeError, ValueError) as exc:  # a bad setting: say which, as argparse does
            parser.error(str(exc))
        server.run()
        return 0
    from tutx.serve.balancer import create_balancer_app

    try:
        app = create_balancer_app(args.backend, args.policy, health_interval=args.health_interval)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5,
                timeout_keep_alive=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
