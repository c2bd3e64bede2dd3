"""The llamacpp backend: quantized GGUF models on the CPU (or any llama.cpp build).

`LlamaCppBackend` owns one `llama_cpp.Llama` and the one thread that may
touch its context: a generation runs there, token by token, and each piece
of text reaches the I/O loop through `call_soon_threadsafe`. Cancelling the
generation's task (deadline passed, caller gone) sets a flag the engine
reads before every token, so the slot is free at once and the engine stops
at the next token.

One backend runs one generation at a time (`capacity` 1): llama-cpp-python's
`Llama` decodes a single sequence, so a tier's slots are its worker
processes (`workers`), each its own OS process as exllamav2's are.

Output schemas become llama.cpp grammars (llama-cpp-python's JSON-Schema
converter), so the text is valid JSON of the requested type by
construction; a schema the converter cannot express is a `BadRequest`.

llama-cpp-python is imported only when a backend is built (the `cpu` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from inference._backend import Emit, Generation, prompt_text
from messages import (
    BadRequest,
    ConfigError,
    FinishReason,
    GenerateRequest,
    Metadata,
    OutputSchema,
    Unavailable,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from config import LlamaCppBackendSettings

logger: Final = logging.getLogger("actorfleet.inference.llamacpp")

NAME: Final = "llamacpp"
GGUF_MAGIC: Final = b"GGUF"
CHAT_TEMPLATE_KEY: Final = "tokenizer.chat_template"
_GRAMMARS: Final = 32  # output schemas whose grammars are kept per backend
_CONFIG_KEY: Final = "inference.tiers.backend"

_END: Final = object()  # the engine thread's last word on a generation


# What JSON allows unescaped in a string: llama.cpp's own converter excludes
# control characters; llama-cpp-python's copy (0.3.x) lets them through, so a
# random or weak model writes strings no JSON parser takes.
_HEX: Final = "[0-9a-fA-F]"
_JSON_CHAR: Final = rf'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" {_HEX} {_HEX} {_HEX} {_HEX})'
_CONVERTER_LOCK: Final = threading.Lock()


def _repetition(
    item_rule: str,
    min_items: int,
    max_items: int | None,
    separator_rule: str | None = None,
    item_rule_is_literal: bool = False,  # noqa: ARG001 - the replaced signature
) -> str:
    """llama.cpp's own `_build_repetition`: bounded repeats as `x{m,n}`.

    llama-cpp-python's copy nests one optional group per repeat, which
    llama.cpp's grammar parser refuses past a few hundred (`maxLength =
    2000` is "over sane defaults"); `x{m,n}` it expands itself.
    """
    if max_items == 0:
        return ""
    if min_items == 0 and max_items == 1:
        return f"{item_rule}?"
    if not separator_rule:
        if max_items is None:
            return f"{item_rule}+" if min_items == 1 else f"{item_rule}{{{min_items},}}"
        return f"{item_rule}{{{min_items},{max_items}}}"
    rest = _repetition(
        f"({separator_rule} {item_rule})",
        max(min_items - 1, 0),
        None if max_items is None else max_items - 1,
    )
    result = f"{item_rule} {rest}"
    return f"({result})?" if min_items == 0 else result


def schema_to_gbnf(schema_json: str) -> str:
    """The GBNF grammar of a JSON Schema, by llama-cpp-python's converter with llama.cpp's fixes.

    Raises:
        Exception: Whatever the converter raises for a schema it cannot
            express (`AssertionError` for a remote `$ref`, `ValueError`, ...).
    """
    from llama_cpp import llama_grammar  # noqa: PLC0415 - the cpu extra

    with _CONVERTER_LOCK:
        repetition, char = llama_grammar._build_repetition, llama_grammar.PRIMITIVE_RULES["char"]  # noqa: SLF001
        llama_grammar._build_repetition = _repetition  # noqa: SLF001
        llama_grammar.PRIMITIVE_RULES["char"] = llama_grammar.BuiltinRule(_JSON_CHAR, [])
        try:
            return str(llama_grammar.json_schema_to_gbnf(schema_json))
        finally:
            llama_grammar._build_repetition = repetition  # noqa: SLF001
            llama_grammar.PRIMITIVE_RULES["char"] = char


class EngineFailed(Exception):
    """Raised when llama.cpp fails during a generation (a decode error, a bad state)."""


def check_model_file(path: str, *, key: str = _CONFIG_KEY) -> None:
    """Fail now, naming `key`, unless `path` is a readable GGUF file whose parts are all there.

    Reads the header and tensor table with the `gguf` package (memory-mapped,
    nothing loaded), so a truncated or foreign file is refused before any
    worker process starts, instead of crash-looping there.

    Raises:
        ConfigError: If the file is missing, unreadable, not GGUF, or cut short.
    """
    where = f"{key}.model_path"
    file = Path(path)
    try:
        with file.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ConfigError(where, f"cannot read the model file {path}: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise ConfigError(where, f"{path} is not a GGUF file (it starts {magic!r})")
    try:
        import gguf  # noqa: PLC0415 - the cpu extra

        reader = gguf.GGUFReader(file)
        size = file.stat().st_size
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    except ImportError:
        return  # the magic is all that can be checked without the cpu extra
    except (ValueError, IndexError, KeyError, OSError) as exc:
        raise ConfigError(where, f"{path} is a damaged GGUF file: {exc}") from exc
    if end > size:
        raise ConfigError(
            where, f"{path} is cut short: its tensors need {end} bytes, it has {size}"
        )


_PARAMS_LOCK: Final = threading.Lock()


@contextlib.contextmanager
def _extra_buffers(*, enabled: bool) -> Iterator[None]:
    """Models loaded inside use llama.cpp's extra buffer types only if `enabled`.

    `Llama` takes no argument for `use_extra_bufts` (llama.cpp's
    `--no-repack`), so the default model parameters it starts from are
    replaced while it loads. Without this, the AMX kernels of a native
    build were seen to crash (SIGSEGV in `ggml_backend_amx_mul_mat`) on
    CPUs that report AMX inside a VM.
    """
    if enabled:
        yield
        return
    bindings: Any = importlib.import_module("llama_cpp.llama_cpp")  # what `Llama` reads
    original = bindings.llama_model_default_params

    def defaults() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    with _PARAMS_LOCK:
        bindings.llama_model_default_params = defaults
        try:
            yield
        finally:
            bindings.llama_model_default_params = original


class LlamaCppBackend:
    """One GGUF model in this process, generating one sequence at a time.

    Args:
        model_path: The `.gguf` file.
        n_ctx: Context length; 0 takes the model's own.
        n_threads: Threads for decoding; 0 lets llama.cpp choose.
        n_batch: Prompt tokens evaluated per batch.
        seed: The seed of a generation that names none.
        repack: Let llama.cpp repack the weights for the CPU's own kernels
            (its "extra buffer types": AVX2/AVX-512 repacking, AMX).

    Raises:
        ConfigError: If llama-cpp-python is missing, or the model cannot be loaded.
    """

    capacity: Final = 1

    def __init__(
        self,
        model_path: str,
        *,
        n_ctx: int = 0,
        n_threads: int = 0,
        n_batch: int = 512,
        seed: int = 0,
        repack: bool = False,
    ) -> None:
        check_model_file(model_path)
        try:
            import llama_cpp  # noqa: PLC0415 - the cpu extra
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: PLC0415
            from llama_cpp.llama_grammar import LlamaGrammar  # noqa: PLC0415
        except ImportError as exc:
            msg = (
                f"the llamacpp backend needs the 'cpu' extra (pip install 'actorfleet[cpu]'): {exc}"
            )
            raise ConfigError(_CONFIG_KEY, msg) from exc
        self._stopping = llama_cpp.StoppingCriteriaList
        self._grammar_from_gbnf = LlamaGrammar.from_string
        try:
            with _extra_buffers(enabled=repack):
                self.llm = llama_cpp.Llama(
                    model_path=model_path,
                    n_ctx=n_ctx,
                    n_threads=n_threads or None,
                    # Else prompts are evaluated on every CPU, whatever n_threads says.
                    n_threads_batch=n_threads or None,
                    n_batch=n_batch,
                    seed=seed,
                    verbose=False,
                )
        except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
            raise ConfigError(f"{_CONFIG_KEY}.model_path", f"{model_path}: {exc}") from exc
        self._bindings: Any = llama_cpp
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.name = NAME
        self.model = Path(model_path).stem
        self.context_length: int = self.llm.n_ctx()
        self.eos_text = self._piece(self.llm.token_eos())
        template = self.llm.metadata.get(CHAT_TEMPLATE_KEY)
        self._chat = (
            None
            if template is None
            else Jinja2ChatFormatter(
                template=template,
                eos_token=self.eos_text,
                bos_token=self._piece(self.llm.token_bos()),
            )
        )
        # llama.cpp's context is not thread-safe: every call that decodes runs
        # on this one thread. A daemon: a process that exits drops its work.
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._engine = threading.Thread(target=self._drive, name="llamacpp-engine", daemon=True)
        self._closed = False
        self._engine.start()
        self.grammar = functools.lru_cache(maxsize=_GRAMMARS)(self._grammar)

    def _check_open(self) -> None:
        if self._closed:
            msg = f"the llamacpp backend for {self.model} is closed"
            raise Unavailable(msg)

    def _piece(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def prompt(self, request: GenerateRequest) -> tuple[list[int], list[str]]:
        """The request's prompt as tokens, and the stop strings its chat template adds.

        Chat turns are rendered with the model's own chat template (from the
        GGUF file); without one, one `role: content` line per turn and `assistant:`.

        Raises:
            BadRequest: If the prompt is empty or the template refuses the turns.
        """
        text = prompt_text(request)  # validates: exactly one of prompt and messages, not empty
        stops: list[str] = []
        if request.messages is None:
            rendered = text
        elif self._chat is None:
            rendered = "".join(f"{m.role}: {m.content}\n" for m in request.messages) + "assistant:"
        else:
            turns: Any = [{"role": m.role, "content": m.content} for m in request.messages]
            try:
                formatted = self._chat(messages=turns)
            except ValueError as exc:  # the template's raise_exception
                msg = f"the model's chat template refused the messages: {exc}"
                raise BadRequest(msg) from exc
            rendered = formatted.prompt
            stops = [
                s
                for s in (
                    [formatted.stop] if isinstance(formatted.stop, str) else formatted.stop or []
                )
                if s
            ]
        tokens = self.llm.tokenize(rendered.encode(), add_bos=True, special=True)
        return tokens, stops

    def count_tokens(self, request: GenerateRequest) -> int:
        """Prompt tokens, by the model's own tokenizer (chat template applied).

        Raises:
            Unavailable: If the backend is closed (its model is freed).
        """
        self._check_open()
        return len(self.prompt(request)[0])

    def _grammar(self, output: OutputSchema) -> Any:
        """The llama.cpp grammar that admits exactly the JSON of `output`'s schema.

        Raises:
            BadRequest: If the schema is not JSON, or the converter cannot express it.
        """
        output.document()  # BadRequest for text that is not a JSON object, or too deep
        try:
            gbnf = schema_to_gbnf(output.json)
        except Exception as exc:  # the converter asserts, raises anything
            msg = f"output schema {output.name} cannot be expressed as a llama.cpp grammar: {exc}"
            raise BadRequest(msg) from exc
        # llama.cpp parses the grammar only when a generation starts, and a
        # grammar it cannot parse then takes the process down: parse it here.
        probe = self._bindings.llama_sampler_init_grammar(self._vocab, gbnf.encode(), b"root")
        if not probe:
            msg = f"output schema {output.name} gives a grammar llama.cpp cannot parse"
            raise BadRequest(msg)
        self._bindings.llama_sampler_free(probe)
        return self._grammar_from_gbnf(gbnf, verbose=False)

    async def generate(
        self,
        request: GenerateRequest,
        emit: Emit,
        *,
        meta: Metadata,  # noqa: ARG002 - nothing to pass on in-process
    ) -> Generation:
        """Run one generation on the engine thread, streaming its text through `emit`."""
        started = time.monotonic()
        self._check_open()
        tokens, template_stops = self.prompt(request)
        # Converting and parsing a large schema takes a while: off the loop,
        # so the worker's heartbeats and other requests go on meanwhile.
        grammar = (
            None
            if request.output is None
            else await asyncio.to_thread(self.grammar, request.output)
        )
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def put(item: Any) -> None:
            if not cancelled.is_set():  # else nobody listens, and the loop may be gone
                with contextlib.suppress(RuntimeError):  # closed while this ran
                    loop.call_soon_threadsafe(pieces.put_nowait, item)

        job = _Job(
            tokens=tokens,
            request=request,
            stops=[*request.stop, *template_stops],
            grammar=grammar,
            cancelled=cancelled,
            put=put,
        )
        self._check_open()  # closed while the grammar was made: nothing would run it
        self._jobs.put(job)
        first_token_s: float | None = None
        text: list[str] = []
        try:
            while (item := await pieces.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                if first_token_s is None:
                    first_token_s = time.monotonic() - started
                text.append(item)
                emit(item)
        finally:
            cancelled.set()  # a no-op when it ended; else the engine stops at the next token
        return Generation(
            text="".join(text),
            finish_reason=job.finish_reason,
            prompt_tokens=len(tokens),
            completion_tokens=job.completion_tokens,
            first_token_s=time.monotonic() - started if first_token_s is None else first_token_s,
        )

    def _drive(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self._run(job)
            except Exception:  # the engine thread outlives any one job's failure
                logger.exception("a llamacpp job failed outside the engine")

    def _run(self, job: _Job) -> None:
        """The engine thread's side of one generation."""
        if job.cancelled.is_set():
            job.put(_END)
            return
        sampling = job.request.sampling

        def between_tokens(ids: Any, _logits: Any) -> bool:
            # Called once per sampled token with the tokens evaluated so far
            # (and once more, alike, when the length runs out). The length is
            # enforced here: llama-cpp-python's own check is skipped while a
            # token ends inside a UTF-8 character, and overruns.
            evaluated = len(ids) - len(job.tokens)
            if evaluated >= job.request.max_tokens:
                job.completion_tokens = job.request.max_tokens
                job.cut = True
                return True
            job.completion_tokens = evaluated + 1  # EOS included, as vLLM counts it
            return job.cancelled.is_set() or self._closed

        try:
            chunks: Iterator[Any] = self.llm.create_completion(  # type: ignore[assignment]
                job.tokens,
                max_tokens=job.request.max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                min_p=0.0,
                repeat_penalty=sampling.repetition_penalty,
                stop=job.stops,
                seed=job.request.seed,
                grammar=job.grammar,
                stopping_criteria=self._stopping([between_tokens]),
                stream=True,
            )
            for chunk in chunks:
                choice = chunk["choices"][0]
                if choice["text"]:
                    job.put(choice["text"])
                if choice["finish_reason"] is not None:
                    cut = job.cut or choice["finish_reason"] == "length"
                    job.finish_reason = FinishReason.LENGTH if cut else FinishReason.STOP
                if job.cancelled.is_set():
                    job.finish_reason = FinishReason.CANCELLED
                    with contextlib.suppress(Exception):
                        chunks.close()  # type: ignore[attr-defined]
                    break
        except ValueError as exc:  # e.g. the prompt does not fit the context
            job.put(BadRequest(f"the llamacpp engine refused the request: {exc}"))
            return
        except Exception as exc:
            logger.exception("the llamacpp engine failed")
            job.put(EngineFailed(f"the llamacpp engine failed: {exc}"))
            return
        job.put(_END)

    async def aclose(self) -> None:
        """Stop the running generation at its next token, then free the model.

        Later calls to `generate` raise `Unavailable`.
        """
        self._closed = True
        self._jobs.put(None)
        await asyncio.to_thread(self._engine.join)
        await asyncio.to_thread(self.llm.close)


class _Job:
    """One generation as the engine thread sees it."""

    def __init__(
        self,
        *,
        tokens: list[int],
        request: GenerateRequest,
        stops: list[str],
        grammar: Any,
        cancelled: threading.Event,
        put: Callable[[Any], None],
    ) -> None:
        self.tokens = tokens
        self.request = request
        self.stops = stops
        self.grammar = grammar
        self.cancelled = cancelled
        self.put = put
        self.finish_reason = FinishReason.STOP
        self.completion_tokens = 0
        self.cut = False


def llamacpp_from_settings(settings: LlamaCppBackendSettings) -> LlamaCppBackend:
    """A llamacpp backend with its model loaded, as a tier's `[backend]` table describes it.

    Raises:
        ConfigError: If llama-cpp-python is missing or the model cannot be loaded.
    """
    return LlamaCppBackend(
        settings.model_path,
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        n_batch=settings.n_batch,
        seed=settings.seed,
        repack=settings.repack,
    )
