"""bench/make_test_model.py's CPU side: its corpus, its converter call, its rope check."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from bench import make_test_model


def test_the_corpus_has_more_distinct_words_than_the_vocabulary_asks_for() -> None:
    # BPE cannot learn more tokens than the corpus holds pieces: 21 words stopped it at 379.
    words = {word for line in make_test_model.corpus(5000) for word in line.split()}
    assert len(words) > make_test_model.VOCAB


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("tokenizers") is None, reason="tokenizers (the gpu extra) is absent"
)
def test_the_tokenizer_learns_the_whole_vocabulary_it_asks_for(tmp_path: Path) -> None:
    from tokenizers import Tokenizer  # noqa: PLC0415

    make_test_model.build_tokenizer(tmp_path)
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == make_test_model.VOCAB
    assert tokenizer.token_to_id("</s>") == 1


def test_the_converter_is_calibrated_on_a_dataset_that_its_row_counts_apply_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With its built-in calibration data, exllamav2's converter ignores -r and -mr.
    written: list[Path] = []
    commands: list[list[str]] = []
    monkeypatch.setattr(make_test_model, "write_calibration", written.append)
    monkeypatch.setattr(
        subprocess, "run", lambda command, **_kw: commands.append([str(c) for c in command])
    )
    make_test_model.convert(tmp_path / "hf", tmp_path / "work", tmp_path / "exl2", bits=4.0)
    [command] = commands
    flags = dict(zip(command[3::2], command[4::2], strict=True))
    assert flags["-c"] == str(written[0]) == str(tmp_path / "calibration.parquet")
    assert (flags["-r"], flags["-mr"], flags["-l"]) == ("8", "4", "256")


def test_a_rope_theta_exllamav2_would_not_read_is_warned_about() -> None:
    moved = {"rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}}
    assert "rope_parameters" in (make_test_model.rope_warning(moved) or "")
    scaled = {"rope_parameters": {"rope_theta": 10000.0, "rope_type": "llama3"}}
    assert "llama3" in (make_test_model.rope_warning(scaled) or "")
    # The test model's own: transformers 5's default, which is exllamav2's fallback too.
    assert make_test_model.rope_warning({"rope_parameters": {"rope_theta": 10000.0}}) is None
    assert make_test_model.rope_warning({"rope_theta": 500000.0}) is None
