"""The exllamav2 backend: quantized EXL2/GPTQ models on a GPU, continuous batching.

`Engine` owns one model, its cache and an `ExLlamaV2DynamicGenerator`, and
drives the generator from its own thread: jobs come in through a queue,
stream events go out through callbacks. `ExLlamaV2Backend` is the pool's
`Backend` over an engine: it turns events into `emit` calls on the I/O loop
and cancels the job when its task is cancelled (deadline passed, caller
gone).

exllamav2, torch and CUDA are imported only when an engine is built
(`inference/_exllamav2_load.py`): on a machine without them, or when the
model does not load, choosing this backend fails at start with a
`ConfigError` that says why.

Where exllamav2 finds paged attention (flash-attn >= 2.5.7 that loads) the
generator runs paged, batching as many jobs as its cache has pages; without
it, unpaged, one job at a time. The backend's `capacity` says which, so the
pool never sends it more.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from inference._backend import Emit, Generation, prompt_text
from inference._exllamav2_load import CONFIG_KEY, load
from messages import BadRequest, ConfigError, FinishReason, GenerateRequest, Metadata, OutputSchema

if TYPE_CHECKING:
    from config import ExLlamaV2BackendSettings

logger: Final = logging.getLogger("actorfleet.inference.exllamav2")

NAME: Final = "exllamav2"

Event = dict[str, Any]
OnEvent = Callable[[Event], None]
T = TypeVar("T")


def render_prompt(request: GenerateRequest) -> str:
    """The text the model reads: the raw prompt, or chat turns ending with `assistant:`."""
    text = prompt_text(request)  # validates: exactly one of prompt and messages, not empty
    if request.messages is None:
        return text
    turns = "".join(f"{m.role}: {m.content}\n" for m in request.messages)
    return f"{turns}assistant:"


class Engine:
    """One model on the GPU and the thread that drives its dynamic generator.

    Args:
        model_dir: An EXL2 or GPTQ model directory.
        cache_mode: `FP16`, `Q4`, `Q6` or `Q8` (the KV cache's precision).
        max_seq_len: Context length, a multiple of 256 (the tokens the cache
            holds, shared by the jobs it runs); None keeps the model's.

    Raises:
        ConfigError: exllamav2 or torch is not installed, no CUDA device is
            visible, the cache mode or context length is not one exllamav2
            takes, or the model does not load (a missing or bad directory,
            a full GPU).
    """

    def __init__(
        self, model_dir: str, *, cache_mode: str = "FP16", max_seq_len: int | None = None
    ) -> None:
        loaded = load(model_dir, cache_mode=cache_mode, max_seq_len=max_seq_len)
        self._job_class = loaded.job_class
        self._sampler = loaded.sampler
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.generator = loaded.generator
        self.paged = loaded.paged
        self.capacity = loaded.capacity
        self.context_length = loaded.context_length
        self.model_name = model_dir.rstrip("/").rsplit("/", 1)[-1]
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._callbacks: dict[int, OnEvent] = {}
        self._jobs: dict[int, Any] = {}
        self._next_id = 0
        self._id_lock = threading.Lock()
        self._thread = threading.Thread(target=self._drive, name="exllamav2-engine", daemon=True)
        self._stopped = False
        self.failure: BaseException | None = None
        self._enforcer_data: Any = None
        self._thread.start()

    def encode(self, text: str) -> Any:
        """Token ids (a [1, n] tensor) of `text`, with the BOS token."""
        return self.tokenizer.encode(text, add_bos=True)

    def submit(self, request: GenerateRequest, on_event: OnEvent) -> int:
        """Queue a generation; `on_event(event)` is called from the engine thread.

        Raises:
            GeneratorFailed: If the engine has failed or been closed.
        """
        self._check_running()
        with self._id_lock:
            job_id = self._next_id
            self._next_id += 1
        job = self.make_job(request, job_id)
        self._commands.put(("enqueue", (job_id, job, on_event)))
        return job_id

    def make_job(self, request: GenerateRequest, identifier: object) -> Any:
        """The exllamav2 job that `submit` queues for `request` (a bench builds raw ones so).

        Raises:
            BadRequest: If the request's output schema cannot be enforced.
        """
        settings = self._sampler.Settings()
        settings.temperature = request.sampling.temperature
        settings.top_p = request.sampling.top_p
        settings.top_k = request.sampling.top_k
        settings.token_repetition_penalty = request.sampling.repetition_penalty
        stops: list[int | str] = [self.tokenizer.eos_token_id, *request.stop]
        constrained = {} if request.output is None else self.schema_filters(request.output)
        return self._job_class(
            input_ids=self.encode(render_prompt(request)),
            max_new_tokens=request.max_tokens,
            gen_settings=settings,
            seed=request.seed,
            stop_conditions=stops,
            identifier=identifier,
            **constrained,
        )

    def run_exclusive(self, work: Callable[[Any], T], *, timeout: float) -> T:
        """Run `work(generator)` on the engine thread between two steps; return its result.

        Nothing else drives the generator meanwhile, so `work` may enqueue
        and iterate jobs of its own (it must leave none behind). It runs only
        while the engine has no job of its own: its iterations would advance
        those too, and take their events.

        Raises:
            GeneratorFailed: If the engine has failed or been closed.
            RuntimeError: If the engine had jobs of its own running.
            TimeoutError: If `work` has not returned within `timeout` seconds
                (it still runs to its end on the engine thread).
        """
        self._check_running()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._commands.put(("call", (work, done)))
        return done.result(timeout=timeout)

    def _check_running(self) -> None:
        if self.failure is not None or self._stopped:
            msg = f"the exllamav2 engine is not running: {self.failure or 'closed'}"
            raise GeneratorFailed(msg)

    def schema_filters(self, output: OutputSchema) -> dict[str, Any]:
        """The job arguments that keep its text to `output`'s JSON Schema.

        A token filter from lm-format-enforcer (the `gpu` extra): its
        `JsonSchemaParser` allows, token by token, only what can still become
        a valid instance, and EOS once one is complete (`filter_prefer_eos`).
        The tokenizer's vocabulary table is built once per engine.

        Raises:
            BadRequest: If the schema is not JSON or the parser cannot take it.
        """
        schema = output.document()
        filter_class = _schema_filter_class()
        if self._enforcer_data is None:
            self._enforcer_data = filter_class.tokenizer_data(self.tokenizer)
        try:
            token_filter = filter_class(self.model, self.tokenizer, self._enforcer_data, schema)
        except Exception as exc:  # the parser raises what the schema makes it raise
            msg = f"output schema {output.name} cannot be enforced on exllamav2: {exc}"
            raise BadRequest(msg) from exc
        return {"filters": [token_filter], "filter_prefer_eos": True}

    def cancel(self, job_id: int) -> None:
        """Stop a job (its slot and cache pages are freed on the engine thread)."""
        self._commands.put(("cancel", job_id))

    def close(self) -> None:
        """Stop the engine thread (jobs still running are dropped) and unload the model."""
        self._stopped = True
        self._commands.put(("stop", None))
        self._thread.join(timeout=10)
        with contextlib.suppress(Exception):
            self.model.unload()

    def _drive(self) -> None:
        try:
            while not self._stopped:
                self._step()
        except Exception as exc:
            # Anything unexpected ends the engine: every job hears of it and
            # later submits fail at once, so the tier's breaker sees it.
            logger.exception("the exllamav2 engine failed")
            self.failure = exc
            self._fail_all(exc)

    def _step(self) -> None:
        idle = not self.generator.num_remaining_jobs()
        try:
            command = self._commands.get() if idle else self._commands.get_nowait()
        except queue.Empty:
            command = None
        if command is not None:
            self._apply(*command)
            return
        try:
            results = self.generator.iterate()
        except Exception as exc:
            logger.exception("the dynamic generator failed")
            self._fail_all(exc)
            return
        for event in results:
            self._deliver(event)

    def _apply(self, verb: str, argument: Any) -> None:
        if verb == "enqueue":
            job_id, job, on_event = argument
            self._callbacks[job_id] = on_event
            self._jobs[job_id] = job
            try:
                self.generator.enqueue(job)
            except Exception as exc:  # noqa: BLE001 - e.g. the job cannot fit the cache
                self._callbacks.pop(job_id, None)
                self._jobs.pop(job_id, None)
                on_event({"error": exc})
        elif verb == "cancel":
            job = self._jobs.pop(argument, None)
            self._callbacks.pop(argument, None)
            if job is not None:
                self.generator.cancel(job)
        elif verb == "call":
            work, done = argument
            if not done.set_running_or_notify_cancel():
                return
            if self._jobs:
                busy = f"the engine runs {len(self._jobs)} job(s) of its own"
                done.set_exception(RuntimeError(busy))
                return
            try:
                done.set_result(work(self.generator))
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who raises it
                done.set_exception(exc)

    def _deliver(self, event: Event) -> None:
        """Hand one stream event to its job's callback (a failing callback drops that job)."""
        job_id = event.get("identifier")
        if not isinstance(job_id, int):
            return
        callback = self._callbacks.get(job_id)
        if callback is None:
            return
        if event.get("eos"):
            self._callbacks.pop(job_id, None)
            self._jobs.pop(job_id, None)
            event = self._with_held_text(event)
        try:
            callback(event)
        except Exception:
            logger.warning("job %d lost its listener; cancelling it", job_id, exc_info=True)
            self._apply("cancel", job_id)

    def _with_held_text(self, event: Event) -> Event:
        """The end event with the text exllamav2 still held, when a stop token ended the job.

        exllamav2 holds back text that may still change: a partial UTF-8
        character, a prefix of a stop string. At `max_new_tokens` (and at a
        stop string, up to the string) the end event carries it as `text`;
        at a stop token it stays in `held`, after the stop token's own piece.
        """
        if event.get("eos_reason") != "stop_token":
            return event
        held = event.get("held", {}).get("text", "")
        if not held:
            return event
        token = event.get("eos_triggering_token_id")
        piece = (
            self.tokenizer.get_id_to_piece_list(include_special_tokens=False)[token]
            if isinstance(token, int)
            else ""
        )
        if piece and held.endswith(piece):
            held = held[: -len(piece)]
        return {**event, "text": event.get("text", "") + held}

    def _fail_all(self, error: Exception) -> None:
        callbacks, self._callbacks = self._callbacks, {}
        self._jobs.clear()
        try:
            self.generator.clear_queue()  # drops pending and active jobs alike
        except Exception:
            logger.debug("clearing the generator's queue failed", exc_info=True)
        for callback in callbacks.values():
            with contextlib.suppress(Exception):
                callback({"error": error})


@functools.cache
def _schema_filter_class() -> Any:
    """`SchemaFilter`, an `ExLlamaV2Filter` over lm-format-enforcer, defined once imported.

    lm-format-enforcer's own exllamav2 filter predates exllamav2 0.3's filter
    protocol (`use_background_worker`, `can_mask_logits`, `get_next`), which
    the dynamic generator calls; this one subclasses exllamav2's base class
    and asks the enforcer for the allowed tokens, on the generator's
    background worker (it is CPU work).

    Raises:
        ConfigError: If exllamav2 or lm-format-enforcer is not installed.
    """
    try:
        from exllamav2.generator.filters import ExLlamaV2Filter  # noqa: PLC0415
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer  # noqa: PLC0415
        from lmformatenforcer.integrations.exllamav2 import (  # noqa: PLC0415
            build_token_enforcer_tokenizer_data,
        )
    except ImportError as exc:
        msg = f"schema-constrained output on exllamav2 needs the 'gpu' extra: {exc}"
        raise ConfigError(CONFIG_KEY, msg) from exc

    class SchemaFilter(ExLlamaV2Filter):  # type: ignore[misc]
        """Allows only tokens that keep the text a prefix of a valid instance of a schema."""

        tokenizer_data = staticmethod(build_token_enforcer_tokenizer_data)

        def __init__(self, model: Any, tokenizer: Any, data: Any, schema: dict[str, Any]) -> None:
            super().__init__(model, tokenizer)
            self.enforcer = TokenEnforcer(data, JsonSchemaParser(schema))
            self.tokens: list[int] = []

        def clone(self, c: Any = None) -> Any:
            c = SchemaFilter.__new__(SchemaFilter) if c is None else c
            super().clone(c)
            c.enforcer, c.tokens = self.enforcer, list(self.tokens)
            return c

        def begin(self, prefix_str: str) -> None:  # noqa: ARG002 - no healed prefix to keep
            self.tokens = []

        def feed(self, token: Any) -> None:
            self.tokens.append(int(token.flatten()[0]))

        def next(self) -> tuple[set[int], set[int]]:
            allowed = self.enforcer.get_allowed_tokens(self.tokens).allowed_tokens
            return set(allowed), set()

        def use_background_worker(self) -> bool:
            return True

    return SchemaFilter


class GeneratorFailed(Exception):
    """Raised when the engine reports a failure for a job."""


class ExLlamaV2Backend:
    """The pool's view of an `Engine`: async, streaming, cancellable."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def name(self) -> str:
        """Always `exllamav2`."""
        return NAME

    @property
    def model(self) -> str:
        """The model directory's name."""
        return self.engine.model_name

    @property
    def capacity(self) -> int:
        """Jobs batched at once: the generator's batch size, or 1 when unpaged."""
        return self.engine.capacity

    @property
    def context_length(self) -> int:
        """The model's context length."""
        return self.engine.context_length

    def count_tokens(self, request: GenerateRequest) -> int:
        """Prompt tokens, by the model's own tokenizer."""
        return int(self.engine.encode(render_prompt(request)).shape[-1])

    async def generate(
        self,
        request: GenerateRequest,
        emit: Emit,
        *,
        meta: Metadata,  # noqa: ARG002 - nothing to pass on in-process
    ) -> Generation:
        """Run one job on the engine, streaming its text through `emit`."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        started = time.monotonic()

        def on_event(event: Event) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        job_id = self.engine.submit(request, on_event)
        first_token_s: float | None = None
        pieces: list[str] = []
        finished = False
        try:
            while True:
                event = await events.get()
                if "error" in event:
                    msg = f"the exllamav2 generator failed: {event['error']}"
                    raise GeneratorFailed(msg)
                text = event.get("text", "")
                if text:
                    if first_token_s is None:
                        first_token_s = time.monotonic() - started
                    pieces.append(text)
                    emit(text)
                if event.get("eos"):
                    finished = True
                    return _generation(event, pieces, first_token_s, started)
        finally:
            if not finished:
                # Cancelled, cut at the deadline, or the caller's callback
                # failed: the GPU job must stop with the pool's slot.
                self.engine.cancel(job_id)

    async def aclose(self) -> None:
        """Stop the engine and let the model and its cache go."""
        await asyncio.to_thread(self.engine.close)


def _generation(
    event: Event, pieces: list[str], first_token_s: float | None, started: float
) -> Generation:
    reason = event.get("eos_reason")
    return Generation(
        text="".join(pieces),
        finish_reason=FinishReason.LENGTH if reason == "max_new_tokens" else FinishReason.STOP,
        prompt_tokens=int(event.get("prompt_tokens", 0)),
        completion_tokens=int(event.get("new_tokens", len(pieces))),
        first_token_s=time.monotonic() - started if first_token_s is None else first_token_s,
    )


def exllamav2_from_settings(settings: ExLlamaV2BackendSettings) -> ExLlamaV2Backend:
    """An exllamav2 backend over a new engine, as a tier's `[backend]` table describes it.

    Raises:
        ConfigError: If torch or exllamav2 cannot be imported, no CUDA
            device is visible, or the model does not load.
    """
    engine = Engine(
        settings.model_dir,
        cache_mode=settings.cache_mode,
        max_seq_len=settings.max_seq_len or None,
    )
    return ExLlamaV2Backend(engine)
