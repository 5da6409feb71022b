"""The LLM proposer: any OpenAI-compatible chat endpoint proposes a code change, checked by a cascade before
any branch exists: parse -> allowed paths -> SEARCH/REPLACE applies exactly -> compiles -> new -> CPU smoke run.
A refused answer goes back to the model with the exact error, up to llm.max_repairs times; then the proposal
is refused (ProposalRejected, carrying a FailedProposal record for refs/notes/arbot-proposals).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import git
import openai

from bot.config import ConfigError, LLMConfig, TargetConfig
from bot.proposers.base import ProposalContext, ProposalError
from bot.proposers.edits import EditError, check_compiles, check_paths, apply_edits, parse_answer
from bot.proposers.failures import ProposalRejected, SpendCapReached, now
from bot.proposers.prompt import build_prompt, estimate_tokens, fenced
from bot.proposers.validate import SmokeRunner, check_new
from bot.core.records import Attempt, Cost, FailedProposal, Proposal

ANSWER_CHARS_KEPT = 4000
ERROR_CHARS = 300

RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "proposal",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "hypothesis": {"type": "string"},
                "rationale": {"type": "string"},
                "edits": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"path": {"type": "string"}, "search": {"type": "string"},
                                       "replace": {"type": "string"}},
                        "required": ["path", "search", "replace"],
                        "additionalProperties": False,
                    },
                },
            },
            "required": ["hypothesis", "rationale", "edits"],
            "additionalProperties": False,
        },
    },
}


class LLMEndpointError(ProposalError):
    """The endpoint cannot be used (unreachable, timing out, refusing the key or the model): one clear line."""


class NoChange(EditError):
    stage = "apply"


def make_client(cfg: LLMConfig) -> openai.OpenAI:
    """An SDK client from config, falling back to the SDK's own variables OPENAI_BASE_URL and OPENAI_API_KEY."""
    base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL") or None
    key = os.environ.get(cfg.api_key_env) or os.environ.get("OPENAI_API_KEY")
    if not key:
        if base_url is None or "api.openai.com" in base_url:
            raise ConfigError(f"the LLM proposer needs an API key: set {cfg.api_key_env} (or llm.base_url for a local endpoint)")
        key = "none"  # local servers (vLLM, Ollama, llama.cpp) accept any key
    return openai.OpenAI(base_url=base_url, api_key=key, timeout=cfg.timeout_seconds, max_retries=cfg.max_retries)


class LLMProposer:
    name = "llm"

    def __init__(self, cfg: LLMConfig, target: TargetConfig, repo: git.Repo | None = None,
                 client: openai.OpenAI | None = None, spent_today: Callable[[], float] | None = None,
                 sandbox: Callable[[], Any] | None = None):
        if not cfg.model:
            raise ConfigError("the LLM proposer needs a model: set llm.model in arbot.yml or pass --model NAME")
        self.cfg = cfg
        self.model = cfg.model
        self.allowed = target.allowed_paths
        self.pinned = dict(target.overrides)
        self.client = client or make_client(cfg)
        self.endpoint = str(self.client.base_url).rstrip("/")
        self.structured = cfg.structured_output
        self.smoke = SmokeRunner(cfg.smoke, target.script, repo, sandbox, target.artifact) if cfg.smoke.enabled else None
        self.spent_run = 0.0  # USD this proposer spent in this process
        self._spent_today = spent_today

    # --- the endpoint ---------------------------------------------------------------------------
    def check(self) -> None:
        """Fail fast, before any training, when the endpoint is unreachable or refuses the key."""
        try:
            self.client.with_options(max_retries=0).models.list()
        except (openai.AuthenticationError, openai.APIConnectionError) as e:
            raise self._endpoint_error(e) from None
        except openai.APIStatusError:
            pass  # some servers have no /models; the first real request will tell

    def _endpoint_error(self, e: Exception) -> LLMEndpointError:
        where = f"LLM endpoint {self.endpoint} (model {self.model})"
        retries = f" after {self.cfg.max_retries} retries" if self.cfg.max_retries else ""
        if isinstance(e, openai.APITimeoutError):
            return LLMEndpointError(f"{where} did not answer within {self.cfg.timeout_seconds:g} s{retries} "
                                    "(llm.timeout_seconds)")
        if isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or e
            return LLMEndpointError(f"cannot reach the {where}: {str(cause)[:ERROR_CHARS] or type(cause).__name__}; "
                                    "check llm.base_url or OPENAI_BASE_URL")
        if isinstance(e, openai.AuthenticationError):
            return LLMEndpointError(f"the {where} refused the API key (HTTP 401); set {self.cfg.api_key_env}")
        if isinstance(e, openai.NotFoundError):
            return LLMEndpointError(f"the {where} answered HTTP 404: no such model or path; check llm.model (--model) "
                                    "and llm.base_url (usually ends in /v1)")
        if isinstance(e, openai.RateLimitError):
            return LLMEndpointError(f"the {where} is still rate-limiting (HTTP 429){retries}")
        if isinstance(e, openai.APIStatusError):
            return LLMEndpointError(f"the {where} answered HTTP {e.status_code}{retries}: {e.message[:ERROR_CHARS]}")
        return LLMEndpointError(f"the {where} failed: {e}")

    def _chat(self, messages: list[dict]) -> tuple[str, Cost]:
        kwargs: dict = {"model": self.model, "messages": messages}
        if self.cfg.temperature is not None:
            kwargs["temperature"] = self.cfg.temperature
        if self.structured:
            kwargs["response_format"] = RESPONSE_FORMAT
        try:
            resp = self.client.chat.completions.create(**kwargs)
        except openai.BadRequestError as e:
            if not self.structured:
                raise self._endpoint_error(e) from None
            self.structured = False  # the endpoint does not do structured output: plain text from now on
            return self._chat(messages)
        except openai.APIError as e:
            raise self._endpoint_error(e) from None
        content = (resp.choices[0].message.content or "") if resp.choices else ""
        if resp.usage is not None:
            prompt, completion = resp.usage.prompt_tokens or 0, resp.usage.completion_tokens or 0
        else:  # servers without usage: estimate as the prompt does
            prompt = sum(estimate_tokens(str(m["content"])) for m in messages)
            completion = estimate_tokens(content)
        p = self.cfg.prices
        usd = (prompt * p.prompt + completion * p.completion) / 1e6
        self.spent_run += usd
        return content, Cost(prompt_tokens=prompt, completion_tokens=completion, usd=usd)

    # --- spend caps ---------------------------------------------------------------------------
    def _check_caps(self, current: Cost) -> str | None:
        """The reason to stop, or None. `current`: what the proposal in progress has spent (not yet recorded)."""
        run_cap, day_cap = self.cfg.max_usd_per_run, self.cfg.max_usd_per_day
        if run_cap is not None and self.spent_run >= run_cap:
            return f"LLM spend cap reached: ${self.spent_run:.4f} spent in this run (llm.max_usd_per_run = ${run_cap:g})"
        if day_cap is not None:
            today = (self._spent_today() + current.usd) if self._spent_today else self.spent_run
            if today >= day_cap:
                return f"LLM spend cap reached: ${today:.4f} spent today, UTC (llm.max_usd_per_day = ${day_cap:g})"
        return None

    # --- proposing ------------------------------------------------------------------------------
    def propose(self, ctx: ProposalContext) -> Proposal:
        cost = Cost()
        attempts: list[Attempt] = []
        hypothesis = ""
        try:
            system, user, _ = build_prompt(ctx, self.allowed, self.cfg.prompt_token_budget, self.pinned)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        for _ in range(self.cfg.max_repairs + 1):
            stop = self._check_caps(cost)
            if stop:
                record = self._record(ctx, "spend_cap", stop, attempts, cost, hypothesis) if attempts else None
                raise SpendCapReached(stop, record)
            content, used = self._chat(messages)
            cost = Cost(prompt_tokens=cost.prompt_tokens + used.prompt_tokens,
                        completion_tokens=cost.completion_tokens + used.completion_tokens, usd=cost.usd + used.usd)
            try:
                answer = parse_answer(content)
                hypothesis = answer.hypothesis
                check_paths(answer.edits, self.allowed)
                changed = {p: t for p, t in apply_edits(ctx.files, answer.edits).items() if t != ctx.files.get(p)}
                if not changed:
                    raise NoChange("the edits change nothing: every REPLACE equals its SEARCH")
                check_compiles(changed)
                check_new(changed, ctx.history)
                if self.smoke is not None:
                    self.smoke.run(ctx.champion, ctx.files, changed)
            except EditError as e:
                attempts.append(Attempt(stage=e.stage, error=str(e), answer=content[:ANSWER_CHARS_KEPT]))
                messages += [{"role": "assistant", "content": content},
                             {"role": "user", "content": repair_message(e)}]
                continue
            return Proposal(
                proposer=self.name, hypothesis=answer.hypothesis, rationale=answer.rationale, files=changed,
                cost=cost, params={"model": self.model, "repairs": len(attempts)},
            )
        last = attempts[-1]
        reason = f"{last.stage}: {last.error}"
        message = (f"{self.model} gave no usable proposal in {len(attempts)} answer(s) "
                   f"({', '.join(a.stage for a in attempts)}); last error: {reason.splitlines()[0]}")
        raise ProposalRejected(message, self._record(ctx, last.stage, reason, attempts, cost, hypothesis))

    def _record(self, ctx: ProposalContext, stage: str, reason: str, attempts: list[Attempt], cost: Cost,
                hypothesis: str) -> FailedProposal:
        return FailedProposal(proposer=self.name, model=self.model, champion=ctx.champion, hypothesis=hypothesis,
                              stage=stage, reason=reason, attempts=attempts, cost=cost, at=now())


def repair_message(e: EditError) -> str:
    return (f"Your answer was refused by the {e.stage} check.\n\n{fenced(str(e), 'What the check reported')}\n\n"
            "Reply with a corrected, complete answer in the same format: the 'Hypothesis:' line, then "
            "SEARCH/REPLACE blocks against the ORIGINAL files shown above (your refused edits were not applied).")
