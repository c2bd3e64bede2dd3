"""Build a tiny EXL2 test model without downloading anything (needs a CUDA GPU).

    python bench/make_test_model.py OUT_DIR [--bits 4.0]

1. Trains a byte-level BPE tokenizer (`tokenizers`) on text generated here
   (support-desk words among a few thousand made-up ones, so that BPE
   learns the whole vocabulary it is asked for) and writes
   `tokenizer.json` and `tokenizer_config.json`.
2. Saves a randomly initialised small Llama (`transformers`, safetensors),
   and warns if its config.json keeps a `rope_theta` that exllamav2 would
   not read (transformers 5 moves it into `rope_parameters`).
3. Converts it to EXL2 at `--bits` with exllamav2's own converter
   (`python -m exllamav2.conversion.convert_exl2`), calibrated on a small
   parquet file of the same generated text: the converter takes its row
   counts (`-r`, `-mr`) only from a dataset of its own (`-c`); with its
   built-in calibration data it ignores them and quantizes on 115 rows.

The result, `OUT_DIR/exl2`, is what the GPU suite and `bench/gpu_inference.py`
load (`AF_EXL2_MODEL_DIR`). Its output is noise by design; the suite checks
streaming, cancellation, seeds and restarts, not language.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

_BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH.parent), *(p for p in sys.path if Path(p or ".").resolve() != _BENCH)]

from inference._exllamav2_load import rope_fix

VOCAB: Final = 4096
HIDDEN: Final = 512
INTERMEDIATE: Final = 1536
LAYERS: Final = 4
HEADS: Final = 8
CONTEXT: Final = 2048
SEED: Final = 1234
# exllamav2's fallback for a Llama whose config.json has no rope_theta it reads.
EXLLAMAV2_LLAMA_ROPE_THETA: Final = 10000.0
WORDS: Final = [
    "order",
    "refund",
    "ticket",
    "shipping",
    "carrier",
    "invoice",
    "price",
    "contract",
    "customer",
    "support",
    "agent",
    "model",
    "token",
    "stream",
    "answer",
    "question",
    "account",
    "delivery",
    "address",
    "package",
    "payment",
]
ONSETS: Final = (
    "",
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "st",
    "tr",
)
VOWELS: Final = ("a", "e", "i", "o", "u", "ai", "ou")
CODAS: Final = ("", "", "n", "r", "s", "l", "t", "x")
MADE_UP_WORDS: Final = 6000
# Calibration: rows x tokens per row, for measuring and for quantizing.
CALIBRATION_ROWS: Final = 8
MEASUREMENT_ROWS: Final = 4
ROW_TOKENS: Final = 256
CALIBRATION_LINES: Final = 2000


def lexicon(rng: random.Random) -> list[str]:
    """The support words, then made-up words of one to four syllables."""
    words = dict.fromkeys(WORDS)
    while len(words) < len(WORDS) + MADE_UP_WORDS:
        syllables = rng.randint(1, 4)
        word = "".join(
            rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables)
        )
        words.setdefault(word)
    return list(words)


def corpus(lines: int = 20_000) -> list[str]:
    """Lines of 4-24 words, common ones far more often (a Zipf-like draw)."""
    rng = random.Random(SEED)
    words = lexicon(rng)
    cumulative = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(words))))
    return [
        " ".join(rng.choices(words, cum_weights=cumulative, k=rng.randint(4, 24)))
        for _ in range(lines)
    ]


def build_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    if tokenizer.get_vocab_size() != VOCAB:
        msg = f"BPE learned {tokenizer.get_vocab_size()} tokens of the {VOCAB} asked for"
        raise SystemExit(msg)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "model_max_length": CONTEXT})
    )


def build_model(out: Path) -> None:
    import torch  # noqa: PLC0415
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=CONTEXT,
        bos_token_id=0,
        eos_token_id=1,
        torch_dtype="float16",
    )
    LlamaForCausalLM(config).half().save_pretrained(out)  # safetensors
    warning = rope_warning(json.loads((out / "config.json").read_text(encoding="utf-8")))
    if warning is not None:
        print(f"warning: {out / 'config.json'}: {warning}", file=sys.stderr)


def rope_warning(config_json: dict[str, Any]) -> str | None:
    """What exllamav2 would get wrong about this config.json's rotary positions, or None."""
    fix = rope_fix(config_json)
    if fix.theta is not None and fix.theta != EXLLAMAV2_LLAMA_ROPE_THETA:
        return (
            f"rope_theta {fix.theta} is in rope_parameters (transformers 5), where exllamav2 "
            f"does not look: its converter uses {EXLLAMAV2_LLAMA_ROPE_THETA}"
        )
    if fix.unread_type is not None:
        return f"rope_type {fix.unread_type!r} in rope_parameters is not read by exllamav2"
    return None


def write_calibration(path: Path) -> None:
    """A parquet file of generated text, one line per row, for the converter's `-c`."""
    import pandas as pd  # noqa: PLC0415 - exllamav2's converter needs pandas and fastparquet

    text = corpus(CALIBRATION_LINES)
    pd.DataFrame({"text": text}).to_parquet(path, engine="fastparquet", index=False)


def convert_command(source: Path, work: Path, target: Path, bits: float, data: Path) -> list[str]:
    """exllamav2's converter on `source`, calibrated on `data`."""
    return [
        sys.executable,
        "-m",
        "exllamav2.conversion.convert_exl2",
        *("-i", str(source), "-o", str(work), "-cf", str(target), "-b", str(bits)),
        *("-c", str(data), "-r", str(CALIBRATION_ROWS), "-mr", str(MEASUREMENT_ROWS)),
        *("-l", str(ROW_TOKENS), "-ml", str(ROW_TOKENS)),
    ]


def convert(source: Path, work: Path, target: Path, bits: float) -> None:
    data = work.parent / "calibration.parquet"
    write_calibration(data)
    subprocess.run(convert_command(source, work, target, bits, data), check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--bits", type=float, default=4.0)
    args = parser.parse_args()
    source, work, target = args.out / "hf", args.out / "work", args.out / "exl2"
    source.mkdir(parents=True, exist_ok=True)
    build_tokenizer(source)
    build_model(source)
    convert(source, work, target, args.bits)
    print(f"EXL2 test model in {target}")


if __name__ == "__main__":
    main()
