"""Memory soak (issue 18): 2,000 streamed OpenAI chat requests at concurrency 16 against
the filled model set's ensemble on a tiny checkpoint, served as `make serve` serves (its
own `llmserve serve` process, tensorrt_llm in an engine process); the two processes' RSS
after the last quarter stays within 5% of their RSS after the first quarter."""

from __future__ import annotations

import sys
from pathlib import Path

from llm_fixtures import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import fill_demo_repository  # noqa: E402
import soak_memory  # noqa: E402

QUARTER = 500
OSL = 8


def test_server_rss_stays_flat_under_sustained_streaming(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    repo = fill_demo_repository.fill_repository(tmp_path / "repo", ckpt, max_batch_size=16,
                                                engine_process=True)
    log = tmp_path / "server.log"
    result = soak_memory.soak(repo, "ensemble", concurrency=16, requests=QUARTER, rounds=4,
                              minutes=None, isl=16, osl=OSL, env={}, log_path=log)
    rss = [r.rss_mb for r in result.rounds]
    print(f"RSS MB at start {result.start_rss_mb:.0f}, after each quarter {rss}; "
          f"round seconds {[r.seconds for r in result.rounds]}")
    assert [r.errors for r in result.rounds] == [0] * 4, log.read_text()[-2000:]
    # ignore_eos: every request streams exactly OSL tokens
    assert [r.tokens for r in result.rounds] == [QUARTER * OSL] * 4
    assert rss[-1] <= rss[0] * 1.05, (
        f"RSS grew from {rss[0]:.0f} MB after the first quarter to {rss[-1]:.0f} MB after "
        f"the last (per quarter: {rss}, the server's alone: "
        f"{[r.server_rss_mb for r in result.rounds]}; at start {result.start_rss_mb:.0f} MB)")
