"""prometheus_text.render: exact-name counters as Triton prints them, everything else as
prometheus_client does."""

from prometheus_client import CollectorRegistry, Counter

from llmserve.core.prometheus_text import ExactCounter, render


class _Families:
    def collect(self):
        fam = ExactCounter("nv_inference_count", 'inferences "done"\nso far')
        fam.add_sample("nv_inference_count", {"model": 'a"b', "version": "1"}, 3.0)
        yield fam


def test_exact_counters_keep_their_name_and_type():
    registry = CollectorRegistry()
    registry.register(_Families())
    Counter("llm_tokens", "tokens", registry=registry).inc(2)
    text = render(registry).decode()
    assert text.startswith(
        '# HELP nv_inference_count inferences "done"\\nso far\n'
        "# TYPE nv_inference_count counter\n"
        'nv_inference_count{model="a\\"b",version="1"} 3.0\n')
    # prometheus_client's own counters are untouched (NAME_total)
    assert "# TYPE llm_tokens_total counter\nllm_tokens_total 2.0\n" in text
