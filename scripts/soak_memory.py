"""Memory soak: serve a filled model-set repository with `llmserve serve` in a subprocess,
stream OpenAI chat requests at it in rounds, and read the resident memory (/proc VmRSS)
of the server and of its engine processes after each round (issue 18).

    python scripts/soak_memory.py [--model ensemble[,tensorrt_llm_bls]] [--concurrency 16] [--rounds 10]
        [--requests 300] [--minutes M] [--isl 128] [--osl 64] [--repository DIR]
        [--checkpoint DIR] [--engine-process true|false] [--cancel-every K] [--json OUT]
        [--env KEY=VALUE ...]

Without --repository it fills the demo model's repository (models/demo-llm, with engine
processes, as `make serve` does) into build/soak_repository. --minutes runs rounds until that much time has
passed instead of --rounds. Every prompt is different (random words, seeded), so the
prefix cache keeps seeing new blocks as it does under aiperf. --cancel-every K drops
every K-th request after its first streamed piece (a client that disconnects). Prints
one line per round and, with --json, writes every round's numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import fill_demo_repository  # noqa: E402

WORDS = (
    "the a of to and in that it was for on are as with his they at be this from have "
    "or by one had not but what all were when we there can an your which their said if "
    "do will each about how up out them then she many some so these would other into has "
    "more her two like him see time could no make than first been its who now people my "
    "made over did down only way find use may water long little very after words called "
    "just where most know get through back much go good new write our me man too any day "
    "same right look think also around another came come work three word must because "
    "does part even place well such here take why things help put years different away "
    "again off went old number great tell men say small every found still between name "
    "should home big give air line set own under read last never us left end along while"
).split()


@dataclass
class Round:
    served: int
    seconds: float
    rss_mb: float  # the server and its engine processes together
    server_rss_mb: float
    tokens: int
    errors: int
    cancelled: int = 0


@dataclass
class SoakResult:
    model: str
    concurrency: int
    isl: int
    osl: int
    env: dict[str, str]
    start_rss_mb: float
    start_server_rss_mb: float
    rounds: list[Round] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of one process, in MB (VmRSS, kB in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def descendants(pid: int) -> list[int]:
    """pid's child processes, theirs, and so on (engine processes are the server's)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # the fields after the parenthesised command name: state, ppid, ...
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out += children
        todo += children
    return out


def tree_rss_mb(pid: int) -> float:
    total = rss_mb(pid)
    for child in descendants(pid):
        try:
            total += rss_mb(child)
        except (OSError, RuntimeError):
            pass  # ended meanwhile
    return total


def make_prompt(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


class Server:
    """`llmserve serve` on free local ports, as its own process (its RSS is its own)."""

    def __init__(self, repository: Path, env: dict[str, str], log_path: Path) -> None:
        self.http_port = free_port()
        ports = [f"--http-port={self.http_port}", f"--grpc-port={free_port()}",
                 f"--metrics-port={free_port()}"]
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmserve.cli", "serve", "--model-repository",
             str(repository), "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
             "--metrics-address=127.0.0.1", *ports, "--log-info=false"],
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                 # this checkout's llmserve, installed or not
                 "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                             os.environ.get("PYTHONPATH")])),
                 **env},
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.http_port}"

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready in {timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


async def sse_lines(response: httpx.Response) -> AsyncIterator[str]:
    """The lines of an event stream, ended by CR, LF or CRLF only, as the SSE spec says:
    httpx's aiter_lines() also splits at U+0085, U+2028 and the like, which JSON leaves
    raw inside strings, and so cut generated text in two."""
    pending = ""
    async for text in response.aiter_text():
        pending += text
        *lines, pending = pending.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        for line in lines:
            yield line
    if pending:
        yield pending


async def stream_chat(client: httpx.AsyncClient, model: str, prompt: str, osl: int,
                      cancel: bool = False) -> int:
    """One streamed chat completion; returns the completion tokens the server counted.
    cancel: disconnect after the first streamed piece (returns 0)."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": osl, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        async for line in sse_lines(response):
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if cancel:
                return 0  # leaving the block closes the connection mid-stream
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return tokens


async def run_round(url: str, model: str, n: int, concurrency: int, prompts: list[str],
                    osl: int, cancel_every: int = 0) -> tuple[int, int]:
    """n streamed requests, at most `concurrency` in flight, every cancel_every-th one
    dropped after its first piece; returns (tokens, errors). model may name several,
    comma-separated: request i goes to the (i mod count)-th."""
    models = model.split(",")
    queue = iter(enumerate(prompts[:n]))
    totals = [0, 0]

    async def worker(client: httpx.AsyncClient) -> None:
        for i, prompt in queue:
            cancel = cancel_every > 0 and i % cancel_every == cancel_every - 1
            try:
                tokens = await stream_chat(client, models[i % len(models)], prompt, osl,
                                           cancel)
                totals[0] += tokens  # not `+= await`: that reads totals[0] before awaiting
            except Exception as e:  # noqa: BLE001 - any failure counts, the others go on
                totals[1] += 1
                print(f"  request failed: {type(e).__name__}: {e!r}", file=sys.stderr)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return totals[0], totals[1]


def soak(repository: Path, model: str, *, concurrency: int, requests: int, rounds: int | None,
         minutes: float | None, isl: int, osl: int, env: dict[str, str], log_path: Path,
         seed: int = 0, cancel_every: int = 0, on_round=None) -> SoakResult:  # noqa: ANN001
    """Serve repository, stream rounds of `requests` chat requests at `model`, and return
    the server's RSS after each round. on_round(result) is called after every round."""
    rng = random.Random(seed)
    server = Server(repository, env, log_path)
    try:
        server.wait_ready()
        pid = server.proc.pid
        result = SoakResult(model, concurrency, isl, osl, env, round(tree_rss_mb(pid), 1),
                            round(rss_mb(pid), 1))
        deadline = time.monotonic() + minutes * 60 if minutes else None
        served = 0
        while (deadline is None and len(result.rounds) < (rounds or 0)) or (
                deadline is not None and time.monotonic() < deadline):
            # ~0.75 words per token of the demo tokenizer's English; exact length is not
            # the point, a steady mix of new prompts is.
            prompts = [make_prompt(rng, max(1, isl * 3 // 4)) for _ in range(requests)]
            start = time.monotonic()
            tokens, errors = asyncio.run(run_round(server.url, model, requests, concurrency,
                                                   prompts, osl, cancel_every))
            served += requests
            cancelled = requests // cancel_every if cancel_every else 0
            result.rounds.append(Round(served, round(time.monotonic() - start, 2),
                                       round(tree_rss_mb(pid), 1), round(rss_mb(pid), 1),
                                       tokens, errors, cancelled))
            if on_round is not None:
                on_round(result)
        return result
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ensemble",
                        help="served model name; several, comma-separated, take turns")
    parser.add_argument("--repository", type=Path, help="filled repository (default: demo)")
    parser.add_argument("--checkpoint", type=Path, default=fill_demo_repository.DEFAULT_MODEL,
                        help="checkpoint to fill the repository with (without --repository)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=300, help="requests per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--minutes", type=float, help="run rounds until this much time passed")
    parser.add_argument("--isl", type=int, default=128, help="prompt length, about, in tokens")
    parser.add_argument("--osl", type=int, default=64, help="output tokens per request")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine-process", choices=["true", "false"], default="true",
                        help="fill the repository with engine processes (without --repository)")
    parser.add_argument("--cancel-every", type=int, default=0, metavar="K",
                        help="drop every K-th request after its first piece (0: none)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment of the server (repeatable)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--log", type=Path, default=ROOT / "build" / "soak_server.log")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    repository = args.repository
    if repository is None:
        draft = fill_demo_repository.DEFAULT_DRAFT  # as `make serve` fills it
        repository = fill_demo_repository.fill_repository(
            ROOT / "build" / "soak_repository", args.checkpoint, force=True,
            draft_dir=draft if (draft / "config.json").is_file() else None,
            engine_process=args.engine_process == "true")
    args.log.parent.mkdir(parents=True, exist_ok=True)
    # `kill` ends the run like Ctrl-C: the server is stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def report(result: SoakResult) -> None:
        r = result.rounds[-1]
        print(f"served {r.served:>7,}  rss {r.rss_mb:8.1f} MB (server {r.server_rss_mb:.1f})  "
              f"round {r.seconds:6.1f} s  "
              f"tokens {r.tokens:>7,}  errors {r.errors}  cancelled {r.cancelled}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(asdict(result), indent=1) + "\n")

    print(f"model {args.model}, concurrency {args.concurrency}, isl ~{args.isl}, osl "
          f"{args.osl}, env {env or '{}'}", flush=True)
    result = soak(repository, args.model, concurrency=args.concurrency, requests=args.requests,
                  rounds=args.rounds, minutes=args.minutes, isl=args.isl, osl=args.osl,
                  env=env, log_path=args.log, seed=args.seed,
                  cancel_every=args.cancel_every, on_round=report)
    print(f"rss at start {result.start_rss_mb:.1f} MB (server {result.start_server_rss_mb:.1f})")
    return 1 if any(r.errors for r in result.rounds) else 0


if __name__ == "__main__":
    sys.exit(main())
