"""Tiny, randomly initialised Llama models written straight into GGUF files.

The models exist so that tests and benchmarks can drive a real llama.cpp engine
without downloading weights: every file is built locally in a few seconds from a
seed. The weights are random, so the text they generate is noise, but the files
are complete Llama models: a GPT-2-style byte-level BPE vocabulary whose merges are
learnt from a small built-in corpus, ``<s>``/``</s>`` special tokens, a Jinja chat
template and the metadata llama.cpp's loader asks for. Byte tokens other than
printable ASCII, tab and newline (and ``<s>``) are given hugely negative logits, so
generated text is plain ASCII; any UTF-8 text still tokenizes and round-trips.

The float model is written by the ``gguf`` package and then quantized by
llama.cpp's own quantizer (``llama_cpp.llama_model_quantize``), so the quantized
tensors are exactly what llama.cpp would produce for a converted checkpoint.

Run as ``python -m tests.models OUT_DIR [--size small|large] [--quant Q8_0]
[--seed N]``; the path of the model is printed.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import itertools
import logging
import os
import re
import string
import sys
import types
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import gguf
import numpy as np
import numpy.typing as npt

__all__ = [
    "BOS",
    "CHAT_TEMPLATE",
    "EOS",
    "QUANTS",
    "SIZES",
    "ModelShape",
    "Tokenizer",
    "build_model",
    "main",
    "model_filename",
    "tokenizer",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelShape:
    """The dimensions of one test model.

    Attributes:
        vocab: Tokens in the vocabulary: 256 bytes, the learnt merges and two
            special tokens.
        hidden: Width of the residual stream (``embedding_length``).
        intermediate: Width of the SwiGLU feed-forward layer.
        layers: Number of transformer blocks.
        heads: Attention (query) heads.
        kv_heads: Key/value heads (grouped-query attention when fewer than
            ``heads``).
        context: Training context length written to the metadata.
    """

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    context: int

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden // self.heads


SIZES: Final[Mapping[str, ModelShape]] = types.MappingProxyType(
    {
        "small": ModelShape(
            vocab=768, hidden=256, intermediate=768, layers=4, heads=4, kv_heads=2, context=2048
        ),
        "large": ModelShape(
            vocab=768, hidden=512, intermediate=1536, layers=8, heads=8, kv_heads=4, context=2048
        ),
    }
)
"""The model sizes :func:`build_model` knows, by name."""

QUANTS: Final[frozenset[str]] = frozenset({"F16", "Q8_0", "Q4_0", "Q4_K_M"})
"""The weight formats :func:`build_model` can write."""

BOS: Final = "<s>"
EOS: Final = "</s>"

CHAT_TEMPLATE: Final = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
"""The Jinja chat template stored in ``tokenizer.chat_template``."""

# llama.cpp maps "gpt-2" to its GPT-2 pre-tokenizer regex, the one the merges below
# are learnt with; an unknown or missing name makes the loader fail or warn.
_PRE_TOKENIZER: Final = "gpt-2"
_INIT_STD: Final = 0.02
# Byte tokens a random model must not emit on its own: everything but printable
# ASCII, tab and newline. A lone UTF-8 lead byte makes llama-cpp-python hold the
# text back and skip its max_tokens check, so generation would run to n_ctx.
_QUIET_BYTES: Final = tuple(
    b for b in range(256) if chr(b) not in string.printable or chr(b) in "\r\x0b\x0c"
)
# Every token embedding carries 1.0 in this channel, so after the final RMS norm the
# hidden state always has a large positive value there (about sqrt(hidden)); rows of
# output.weight set to -1.0 in it get logits around -sqrt(hidden), which neither
# greedy nor sampled decoding ever picks, while text input keeps working.
_ANCHOR: Final = 0
_RMS_EPS: Final = 1e-5
_ROPE_BASE: Final = 10000.0
_SPECIAL_TOKENS: Final = 2
_BYTE_TOKENS: Final = 256

# Python's re has no \p{L}/\p{N}; these classes match GPT-2's pattern on the
# built-in (ASCII) corpus, which is all the merge learner ever sees.
_GPT2_SPLIT: Final = re.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Tokenizer:
    """A byte-level BPE vocabulary in llama.cpp's ``gpt2`` form.

    Attributes:
        tokens: Token texts by id, bytes spelt with GPT-2's byte-to-unicode map.
        token_types: ``gguf.TokenType`` values by id.
        merges: Merge rules, best first, as ``"left right"``.
        bos_id: Id of ``<s>``.
        eos_id: Id of ``</s>``.
    """

    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    merges: tuple[str, ...]
    bos_id: int
    eos_id: int


def _bytes_to_unicode() -> dict[int, str]:
    """Return GPT-2's reversible map from byte values to printable characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shift = 0
    for b in range(_BYTE_TOKENS):
        if b not in mapping:
            mapping[b] = chr(_BYTE_TOKENS + shift)
            shift += 1
    return mapping


def _corpus() -> str:
    """Return the English, customer-support flavoured text the merges are learnt on."""
    openers = (
        "Hello, thank you for contacting support.",
        "Hi there, thanks for reaching out to our help desk.",
        "Good morning, I am sorry to hear about the problem with your account.",
        "Thanks for your patience while we looked into this.",
        "We have received your request and a support agent will reply shortly.",
    )
    issues = (
        "my invoice shows a charge I do not recognise",
        "I was billed twice for the same subscription this month",
        "the payment failed and my card was declined",
        "I cannot log in because the password reset email never arrives",
        "the order has not been delivered and the tracking number does not work",
        "I would like a refund for the last payment",
        "the application crashes when I upload a file",
        "please cancel my plan and close the account",
        "how do I change the billing address on my profile",
        "the download is very slow and the connection keeps timing out",
    )
    answers = (
        "I have checked your account and the refund will be processed within five days.",
        "Could you please send the order number and the email address you used?",
        "I have reset the password; please check your inbox and the spam folder.",
        "The duplicate charge has been reversed and you will see it on your statement.",
        "Your subscription is now cancelled and you will not be charged again.",
        "I have escalated the ticket to our billing team, who will contact you today.",
        "Please update the app to the latest version and try the upload again.",
        "You can change the address under Settings, then Billing, then Edit.",
    )
    closers = (
        "Is there anything else I can help you with today?",
        "Let us know if the issue continues and we will be happy to help.",
        "Thank you for being a customer, and have a great day!",
        "Kind regards, the support team.",
    )
    records = (
        '{"intent": "billing", "ok": true, "query": "refund for invoice 1042"}',
        '{"intent": "other", "ok": false, "query": "reset my password"}',
        '{"intent": "shipping", "ok": true, "query": "where is order 2024-118?"}',
        "Ticket #5531 (priority: high) was opened on 2024-03-12 at 09:45 and closed.",
        "Order 7781: 2 items, total $49.99, shipped to 10 Main Street, Springfield.",
    )
    faq = (
        (
            "Question: How long does a refund take? Answer: Refunds are usually returned to "
            "the original payment method within three to five business days."
        ),
        (
            "Question: Can I change my plan later? Answer: Yes, you can upgrade or downgrade "
            "at any time, and the price difference is added to your next invoice."
        ),
        (
            "Question: Where can I find my receipts? Answer: Open your account, select Billing "
            "history, and download the receipt for each payment as a PDF."
        ),
        (
            "Question: Why was my card declined? Answer: The bank may have blocked the "
            "transaction; please contact them or try another payment method."
        ),
        (
            "Question: How do I reset my password? Answer: Click Forgot password on the sign "
            "in page and follow the link we send to your email address."
        ),
        (
            "Question: Do you ship internationally? Answer: We deliver to most countries, and "
            "the shipping cost is shown at checkout before you confirm the order."
        ),
        (
            "Question: How can I contact a person? Answer: Reply to this message or call our "
            "customer service line, which is open from Monday to Friday."
        ),
        (
            "Question: Is my data safe? Answer: Your information is encrypted, and we never "
            "share personal details with third parties without your permission."
        ),
    )
    lines: list[str] = list(faq)
    for i, issue in enumerate(issues):
        opener = openers[i % len(openers)]
        answer = answers[i % len(answers)]
        closer = closers[i % len(closers)]
        lines.append(f"User: {issue[0].upper()}{issue[1:]}.")
        lines.append(f"Agent: {opener} I understand that {issue}. {answer} {closer}")
    for i, answer in enumerate(answers):
        lines.append(f"Customer: Hello, {issues[(3 * i + 1) % len(issues)]}, can you help?")
        lines.append(f"Assistant: {openers[(i + 2) % len(openers)]} {answer}")
    lines.extend(records)
    lines.extend(closers)
    return "\n".join(lines) + "\n"


def _apply_merge(word: list[str], pair: tuple[str, str], joined: str) -> list[str]:
    """Return ``word`` with every occurrence of ``pair`` replaced by ``joined``."""
    merged: list[str] = []
    j = 0
    while j < len(word):
        if j + 1 < len(word) and (word[j], word[j + 1]) == pair:
            merged.append(joined)
            j += 2
        else:
            merged.append(word[j])
            j += 1
    return merged


def _learn_merges(text: str, count: int, byte_chars: Mapping[int, str]) -> list[tuple[str, str]]:
    """Learn ``count`` BPE merges from ``text`` by greedy pair counting.

    Args:
        text: Training text, pre-tokenized with the GPT-2 pattern.
        count: Number of merges to learn.
        byte_chars: GPT-2's byte-to-unicode map.

    Returns:
        The merges, most frequent first.

    Raises:
        ValueError: The text runs out of pairs before ``count`` merges.
    """
    freqs = Counter(_GPT2_SPLIT.findall(text))
    words = [[byte_chars[b] for b in w.encode()] for w in sorted(freqs)]
    weights = [freqs[w] for w in sorted(freqs)]
    pairs: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, word in enumerate(words):
        for pair in itertools.pairwise(word):
            pairs[pair] += weights[i]
            where.setdefault(pair, set()).add(i)
    merges: list[tuple[str, str]] = []
    while len(merges) < count:
        if not pairs:
            raise ValueError(f"the corpus yields only {len(merges)} merges, not {count}")
        # Most frequent pair; ties go to the lexically smallest, so runs agree.
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        joined = "".join(best)
        for i in sorted(where.pop(best)):
            word, weight = words[i], weights[i]
            for pair in itertools.pairwise(word):
                pairs[pair] -= weight
                if pairs[pair] <= 0:
                    del pairs[pair]
            merged = _apply_merge(word, best, joined)
            words[i] = merged
            for pair in itertools.pairwise(merged):
                pairs[pair] += weight
                where.setdefault(pair, set()).add(i)
    return merges


@functools.cache
def tokenizer(vocab: int) -> Tokenizer:
    """Build the byte-level BPE vocabulary of ``vocab`` tokens.

    Ids 0-255 are the byte tokens in byte order (id == byte value), then the
    learnt merges in rank order, then ``<s>`` and ``</s>``.

    Args:
        vocab: Total number of tokens, at least 258.

    Returns:
        The vocabulary, the same for the same ``vocab``.

    Raises:
        ValueError: ``vocab`` is too small or the corpus too short for it.
    """
    n_merges = vocab - _BYTE_TOKENS - _SPECIAL_TOKENS
    if n_merges < 0:
        raise ValueError(f"vocab must be at least {_BYTE_TOKENS + _SPECIAL_TOKENS}, not {vocab}")
    byte_chars = _bytes_to_unicode()
    merges = _learn_merges(_corpus(), n_merges, byte_chars)
    tokens = [byte_chars[b] for b in range(_BYTE_TOKENS)]
    tokens.extend(a + b for a, b in merges)
    tokens.extend((BOS, EOS))
    if len(set(tokens)) != len(tokens):
        raise ValueError("the learnt merges produced duplicate tokens")
    types = [int(gguf.TokenType.NORMAL)] * (len(tokens) - _SPECIAL_TOKENS)
    types.extend([int(gguf.TokenType.CONTROL)] * _SPECIAL_TOKENS)
    return Tokenizer(
        tokens=tuple(tokens),
        token_types=tuple(types),
        merges=tuple(f"{a} {b}" for a, b in merges),
        bos_id=vocab - 2,
        eos_id=vocab - 1,
    )


def _tensors(
    shape: ModelShape, seed: int, quiet: Sequence[int]
) -> list[tuple[str, npt.NDArray[np.float32]]]:
    """Draw the model's weights, in llama.cpp's names and numpy (reversed ne) shapes.

    Weights are normal with a small deviation and the norms are ones, except that
    the tokens in ``quiet`` are made practically impossible to generate (see
    ``_ANCHOR``).
    """
    rng = np.random.default_rng(seed)

    def normal(*dims: int) -> npt.NDArray[np.float32]:
        return rng.standard_normal(dims, dtype=np.float32) * np.float32(_INIT_STD)

    def ones() -> npt.NDArray[np.float32]:
        return np.ones(shape.hidden, dtype=np.float32)

    q_dim = shape.heads * shape.head_dim
    kv_dim = shape.kv_heads * shape.head_dim
    embeddings = normal(shape.vocab, shape.hidden)
    embeddings[:, _ANCHOR] = 1.0
    out = [("token_embd.weight", embeddings)]
    for i in range(shape.layers):
        out.extend(
            (
                (f"blk.{i}.attn_norm.weight", ones()),
                (f"blk.{i}.attn_q.weight", normal(q_dim, shape.hidden)),
                (f"blk.{i}.attn_k.weight", normal(kv_dim, shape.hidden)),
                (f"blk.{i}.attn_v.weight", normal(kv_dim, shape.hidden)),
                (f"blk.{i}.attn_output.weight", normal(shape.hidden, q_dim)),
                (f"blk.{i}.ffn_norm.weight", ones()),
                (f"blk.{i}.ffn_gate.weight", normal(shape.intermediate, shape.hidden)),
                (f"blk.{i}.ffn_up.weight", normal(shape.intermediate, shape.hidden)),
                (f"blk.{i}.ffn_down.weight", normal(shape.hidden, shape.intermediate)),
            )
        )
    unembedding = normal(shape.vocab, shape.hidden)
    unembedding[[*quiet], _ANCHOR] = -1.0
    out.extend((("output_norm.weight", ones()), ("output.weight", unembedding)))
    return out


def _write_float_gguf(path: Path, *, name: str, shape: ModelShape, seed: int) -> None:
    """Write an all-F32 llama GGUF with random weights to ``path``."""
    vocab = tokenizer(shape.vocab)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.intermediate)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_layer_norm_rms_eps(_RMS_EPS)
    writer.add_rope_freq_base(_ROPE_BASE)
    writer.add_vocab_size(shape.vocab)
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_PRE_TOKENIZER)
    writer.add_token_list(list(vocab.tokens))
    writer.add_token_types(list(vocab.token_types))
    writer.add_token_merges(list(vocab.merges))
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_add_bos_token(value=True)
    writer.add_add_eos_token(value=False)
    writer.add_chat_template(CHAT_TEMPLATE)
    quiet = [*_QUIET_BYTES, vocab.bos_id]
    for tensor_name, data in _tensors(shape, seed, quiet):
        writer.add_tensor(tensor_name, data)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _quantize(src: Path, dst: Path, quant: str) -> None:
    """Convert the F32 GGUF ``src`` into ``dst`` with llama.cpp's quantizer."""
    import llama_cpp  # noqa: PLC0415 - optional: only model builds need the engine

    ftypes = {
        "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
        "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
        "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
        "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    }
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[quant]
    params.nthread = os.cpu_count() or 1
    # llama-cpp-python forwards llama.cpp's log to stderr through this logger; the
    # quantizer reports every tensor at INFO, so only let warnings through.
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    if level < logging.ERROR:
        log.setLevel(logging.ERROR)
    try:
        rc = llama_cpp.llama_model_quantize(
            os.fsencode(src), os.fsencode(dst), ctypes.byref(params)
        )
    finally:
        log.setLevel(level)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}, {quant}) returned {rc}")


def model_filename(*, size: str = "small", quant: str = "Q8_0", seed: int = 0) -> str:
    """Return the file name :func:`build_model` uses for these arguments.

    Args:
        size: A key of :data:`SIZES`.
        quant: One of :data:`QUANTS`.
        seed: The weights' random seed.

    Returns:
        A name such as ``af-test-small-q8_0-s0.gguf``.

    Raises:
        ValueError: ``size``, ``quant`` or ``seed`` is not valid.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    if quant not in QUANTS:
        raise ValueError(f"unknown quant {quant!r}; expected one of {sorted(QUANTS)}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, not {seed}")
    return f"af-test-{size}-{quant.lower()}-s{seed}.gguf"


def build_model(out_dir: Path, *, size: str = "small", quant: str = "Q8_0", seed: int = 0) -> Path:
    """Build (or reuse) a random test model and return the path of its GGUF file.

    The same arguments always give the same file. An existing file of the same
    name in ``out_dir`` is reused; a new one is written under a temporary name and
    renamed into place, so concurrent builders never see a partial file.

    Args:
        out_dir: Directory for the model; created if missing.
        size: A key of :data:`SIZES`.
        quant: One of :data:`QUANTS`: ``F16``, ``Q8_0``, ``Q4_0`` or ``Q4_K_M``.
        seed: Seed of the random weights.

    Returns:
        The path of the quantized ``.gguf`` file.

    Raises:
        ValueError: ``size``, ``quant`` or ``seed`` is not valid.
        RuntimeError: llama.cpp's quantizer failed.
    """
    final = Path(out_dir) / model_filename(size=size, quant=quant, seed=seed)
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    stem = f".{final.name}.{os.getpid()}.{uuid.uuid4().hex}"
    base = final.with_name(f"{stem}.f32.tmp")
    staged = final.with_name(f"{stem}.tmp")
    try:
        _write_float_gguf(base, name=final.stem, shape=SIZES[size], seed=seed)
        _quantize(base, staged, quant)
        staged.replace(final)
    finally:
        base.unlink(missing_ok=True)
        staged.unlink(missing_ok=True)
    return final


def main(argv: Sequence[str] | None = None) -> int:
    """Build one model from the command line and print its path.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m tests.models", description="Build a random Llama test model (GGUF)."
    )
    parser.add_argument("out_dir", type=Path, help="directory for the .gguf file")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--quant", choices=sorted(QUANTS), default="Q8_0")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_model(args.out_dir, size=args.size, quant=args.quant, seed=args.seed)
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
