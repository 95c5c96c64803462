"""Helpers of scripts/bench_executor.py: workloads and metrics (workload.py), one runner
per system (llmserve_runner.py, hf_runner.py, vllm_worker.py in vLLM's own venv)."""
