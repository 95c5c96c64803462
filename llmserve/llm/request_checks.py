"""The executor's checks of an enqueued request, as TensorRT-LLM's request validation
makes them: ids in range, lengths against max_seq_len (max_tokens lowered with a warning
where it does not fit), beams and sequences against the batch, KV blocks it could need."""

from __future__ import annotations

import logging

import torch

from llmserve.core.errors import InvalidArgument
from llmserve.llm.prompt_tuning import prepare_prompt_table
from llmserve.llm.request import PromptTuningConfig, Request
from llmserve.llm.sampling import SamplingParams
from llmserve.llm.speculative import check_draft_logits
from llmserve.llm.stop import StopCriteria

logger = logging.getLogger("llmserve.llm.executor")  # the executor's own log


class RequestChecks:
    """Mixed into Executor: uses its config, runner, block_manager, vocab_size,
    max_seq_len, max_num_tokens, max_batch_size and _warned."""

    def _validate(self, req: Request) -> tuple[SamplingParams, StopCriteria, int,
                                               PromptTuningConfig | None]:
        prompt = [int(t) for t in req.input_token_ids]
        if len(prompt) == 0:
            raise InvalidArgument("input_token_ids must not be empty")
        tuning = req.prompt_tuning_config
        if min(prompt) < 0 or (tuning is None and max(prompt) >= self.vocab_size):
            raise InvalidArgument(f"input_token_ids must be in [0, {self.vocab_size})")
        if req.lora_config is not None and self.config.tensor_parallel_size > 1:
            raise InvalidArgument("LoRA adapters are not supported with tensor_parallel_size "
                                  f"{self.config.tensor_parallel_size}")
        if tuning is not None:
            arch = self.runner.arch
            tuning = prepare_prompt_table(tuning, prompt, self.vocab_size, arch.hidden_size,
                                          arch.dtype, arch.device)
        max_tokens = int(req.max_tokens)
        if max_tokens < 1:
            raise InvalidArgument(f"max_tokens must be >= 1, got {max_tokens}")
        max_input_len = self.max_seq_len - 1  # room for at least one output token
        if len(prompt) > max_input_len:
            raise InvalidArgument(
                f"Prompt length ({len(prompt)}) exceeds maximum input length ({max_input_len})."
            )
        sc = req.sampling_config
        sc.validate()
        if sc.beam_width > self.config.max_beam_width:
            raise InvalidArgument(
                f"beam_width ({sc.beam_width}) exceeds max_beam_width "
                f"({self.config.max_beam_width}) of the executor"
            )
        if not self.config.enable_chunked_context and len(prompt) > self.max_num_tokens:
            raise InvalidArgument(
                f"prompt length ({len(prompt)}) exceeds max_num_tokens "
                f"({self.max_num_tokens}); enable chunked context to serve it"
            )
        num_seqs = sc.num_return_sequences or 1
        if req.guided_decoding_params is not None and sc.beam_width > 1:
            raise InvalidArgument("guided decoding does not support beam search: send "
                                  "beam_width 1 with a guide")
        if sc.beam_width > 1:
            if num_seqs > sc.beam_width:
                raise InvalidArgument(f"num_return_sequences ({num_seqs}) exceeds beam_width "
                                      f"({sc.beam_width})")
            num_seqs = sc.beam_width  # one Sequence per running beam
        if num_seqs > self.max_batch_size:
            what = "beam_width" if sc.beam_width > 1 else "num_return_sequences"
            raise InvalidArgument(f"{what} ({num_seqs}) exceeds max_batch_size "
                                  f"({self.max_batch_size})")
        draft = req.external_draft_tokens_config
        num_draft = len(draft.tokens) if draft is not None and num_seqs == 1 else 0
        if num_draft:
            self._check_draft(draft)
        max_tokens = self._fit_output_len(len(prompt), max_tokens, num_draft)
        total = len(prompt) + max_tokens
        bm = self.block_manager
        # sampled siblings may each copy the shared partial block; beams at most hold
        # one full table each (a copy replaces a shared block)
        extra = 1 if num_seqs > 1 and sc.beam_width == 1 else 0
        per_seq = bm.blocks_for(total + num_draft)
        if sc.beam_width == 1:  # an attention window bounds the blocks held at once
            per_seq = bm.max_blocks_held(total + num_draft,
                                         min(total, self.max_num_tokens) + num_draft)
        need = (per_seq + extra) * num_seqs
        if need > bm.num_blocks:
            raise InvalidArgument(
                f"request needs up to {need} KV cache blocks but the cache has only "
                f"{bm.num_blocks}; shorten the prompt or max_tokens"
            )
        for name, words in (("bad_words", req.bad_words), ("stop_words", req.stop_words)):
            for word in (words if words is not None else []):
                if any(not 0 <= t < self.vocab_size for t in word):
                    raise InvalidArgument(f"{name} token ids must be in [0, {self.vocab_size})")
        bias = req.embedding_bias
        if bias is not None:
            bias = torch.as_tensor(bias, dtype=torch.float32).reshape(-1)
            if bias.numel() != self.vocab_size:
                raise InvalidArgument(
                    f"embedding_bias has {bias.numel()} values, vocab size is {self.vocab_size}"
                )
        end_id = int(req.end_id) if req.end_id is not None and req.end_id >= 0 else None
        params = SamplingParams.from_config(
            sc, end_id=end_id, bad_words=req.bad_words, embedding_bias=bias,
            return_log_probs=req.output_config.return_log_probs,
            log_probs_over_kept=bool(self.config.normalize_log_probs))
        stop = StopCriteria.build(max_tokens, end_id, req.stop_words)
        if not 0.0 <= float(req.priority) <= 1.0:
            raise InvalidArgument(f"Request priority must be in [0, 1], got {req.priority}")
        self._warn_request_fields(req)
        return params, stop, num_seqs, tuning

    def _fit_output_len(self, prompt_len: int, max_tokens: int, num_draft: int) -> int:
        """max_tokens lowered to fit max_seq_len with the step's draft tokens, with a
        warning, as TensorRT-LLM's request validation does (it is not an error there)."""
        if prompt_len + max_tokens + num_draft <= self.max_seq_len:
            return max_tokens
        fitted = self.max_seq_len - prompt_len - num_draft
        if fitted < 1:
            raise InvalidArgument(
                f"Prompt length + number of draft tokens ({prompt_len} + {num_draft}) leaves no "
                f"room for output tokens in the maximum sequence length ({self.max_seq_len})."
            )
        logger.warning(
            "Prompt length + number of requested output tokens + draft tokens per step "
            "(%d + %d + %d) exceeds maximum sequence length (%d). Number of requested output "
            "tokens is changed to (%d).",
            prompt_len, max_tokens, num_draft, self.max_seq_len, fitted)
        return fitted

    def _check_draft(self, draft) -> None:
        if any(not 0 <= int(t) < self.vocab_size for t in draft.tokens):
            raise InvalidArgument(f"draft token ids must be in [0, {self.vocab_size})")
        try:
            check_draft_logits(draft.logits, len(draft.tokens), self.vocab_size)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        t = draft.acceptance_threshold
        if t is not None and not 0.0 < t <= 1.0:
            raise InvalidArgument(f"draft_acceptance_threshold must be in (0, 1], got {t}")

    def _warn_request_fields(self, req: Request) -> None:
        draft = req.external_draft_tokens_config
        notes = {
            "external draft tokens with beam_width > 1 (beam search runs without drafts)":
                draft is not None and bool(draft.tokens) and req.sampling_config.beam_width > 1,
            "sampling (top_k / top_p) with beam_width > 1 (beam search is deterministic)":
                req.sampling_config.beam_width > 1 and bool(
                    (req.sampling_config.top_k or 0) > 1 or req.sampling_config.top_p),
            "draft_acceptance_threshold without draft logits (drafts are accepted by "
            "token match)": draft is not None and draft.logits is None
                and draft.acceptance_threshold is not None,
        }
        for note, present in notes.items():
            if present and note not in self._warned:
                self._warned.add(note)
                logger.warning("Request field %s is accepted but has no effect", note)
