"""Runs benchmark workloads on Hugging Face transformers generate() with static batches:
a server that, when idle, takes up to batch_size arrived requests, left-pads them and
generates until the longest is done (greedy, EOS ignored), then takes the next batch."""

from __future__ import annotations

import time

import torch

from bench.workload import BenchRequest, Timing


class _StepClock:
    """A generate() streamer recording when each decoding step's tokens were ready."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def load(model: str):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    return m.eval()


def _generate(model, batch: list[BenchRequest], pad_id: int) -> list[float]:
    width = max(len(r.prompt) for r in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, r in enumerate(batch):
        ids[i, width - len(r.prompt):] = torch.tensor(r.prompt)
        mask[i, width - len(r.prompt):] = 1
    steps = max(r.max_tokens for r in batch)
    clock = _StepClock()
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps,
                       min_new_tokens=steps, do_sample=False, pad_token_id=pad_id,
                       streamer=clock)
    return clock.times


def run_workload(model, requests: list[BenchRequest], batch_size: int) -> list[Timing]:
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    t0 = time.perf_counter()
    pending = sorted(range(len(requests)), key=lambda i: requests[i].arrival)
    timings: list[Timing | None] = [None] * len(requests)
    while pending:
        now = time.perf_counter() - t0
        first = requests[pending[0]].arrival
        if first > now:
            time.sleep(first - now)
            now = time.perf_counter() - t0
        take = [i for i in pending if requests[i].arrival <= now][:batch_size]
        pending = [i for i in pending if i not in take]
        steps = _generate(model, [requests[i] for i in take], pad_id)
        for i in take:
            r = requests[i]
            times = [s - t0 for s in steps[: r.max_tokens]]
            timings[i] = Timing(r.arrival, times, len(times))
    return [t for t in timings if t is not None]


def run(model_path: str, workloads: dict[str, tuple[list[BenchRequest], int]],
        warmup: list[BenchRequest]) -> dict[str, list[Timing]]:
    """workloads: name -> (requests, static batch size)."""
    model = load(model_path)
    run_workload(model, warmup, len(warmup))
    return {name: run_workload(model, reqs, bs) for name, (reqs, bs) in workloads.items()}
