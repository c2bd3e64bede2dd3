"""Build a tiny EXL2 test model without downloading anything (needs a CUDA GPU).

    python bench/make_test_model.py OUT_DIR [--bits 4.0]

1. Trains a byte-level BPE tokenizer (`tokenizers`) on text generated here
   and writes `tokenizer.json` and `tokenizer_config.json`.
2. Saves a randomly initialised small Llama (`transformers`, safetensors).
3. Converts it to EXL2 at `--bits` with exllamav2's own converter
   (`python -m exllamav2.conversion.convert_exl2`).

The result, `OUT_DIR/exl2`, is what the GPU suite and `bench/gpu_inference.py`
load (`AF_EXL2_MODEL_DIR`). Its output is noise by design; the suite checks
streaming, cancellation, seeds and restarts, not language.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Final

VOCAB: Final = 4096
HIDDEN: Final = 512
INTERMEDIATE: Final = 1536
LAYERS: Final = 4
HEADS: Final = 8
CONTEXT: Final = 2048
SEED: Final = 1234
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


def corpus(lines: int = 20_000) -> list[str]:
    rng = random.Random(SEED)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 24))) for _ in range(lines)]


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
    LlamaForCausalLM(config).half().save_pretrained(out, safe_serialization=True)


def convert(source: Path, work: Path, target: Path, bits: float) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "exllamav2.conversion.convert_exl2",
            "-i",
            str(source),
            "-o",
            str(work),
            "-cf",
            str(target),
            "-b",
            str(bits),
            "-l",
            "256",
            "-ml",
            "256",
            "-r",
            "8",
            "-mr",
            "4",
        ],
        check=True,
    )


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
