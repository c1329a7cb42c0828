"""The smart-turn v3.2 end-of-turn model (smart_turn.py) and the spliced test set (turnset.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rejoinder.bench.turnset import build, load
from rejoinder.core.audio import SAMPLE_RATE, read_wav
from rejoinder.core.errors import MissingExtraError
from rejoinder.providers.local.smart_turn import (
    SmartTurn,
    SmartTurnModelMissing,
    SmartTurnOptions,
    features,
    find_model,
)
from rejoinder.testing.loop import LoopTicks


@pytest.fixture(scope="module")
def model() -> Iterator[SmartTurn]:
    turn = SmartTurn()
    yield turn
    turn.close()


@pytest.fixture(scope="module")
def turnset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recorded-speech part of the test set (the espeak-ng part is not needed here)."""
    return build(tmp_path_factory.mktemp("turnset"), espeak=False)


def test_features_hear_the_last_eight_seconds_padded_at_the_start() -> None:
    rng = np.random.default_rng(0)
    speech = (rng.standard_normal(3 * SAMPLE_RATE) * 3000).astype(np.int16)
    short = features(speech)
    assert short.shape == (80, 800) and short.dtype == np.float32
    padded = np.concatenate([np.zeros(5 * SAMPLE_RATE, dtype=np.int16), speech])
    np.testing.assert_array_equal(short, features(padded))  # zeros go before the audio
    longer = np.concatenate([(rng.standard_normal(4 * SAMPLE_RATE) * 3000).astype(np.int16),
                             padded])
    np.testing.assert_array_equal(short, features(longer))  # only the last 8 s count
    assert features(np.zeros(0, dtype=np.int16)).shape == (80, 800)


def test_a_missing_model_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    with pytest.raises(MissingExtraError, match=r"pip install --no-deps 'pipecat-ai=="):
        SmartTurn(SmartTurnOptions(model_path=tmp_path / "missing.onnx"))
    monkeypatch.setitem(sys.modules, "pipecat", None)  # as if pipecat-ai were not installed
    with pytest.raises(SmartTurnModelMissing, match=r"pip install --no-deps"):
        find_model()


def test_the_turnset_manifest_marks_pauses_and_ends(turnset: Path) -> None:
    items = load(turnset)
    assert len(items) >= 15
    for item in items:
        audio = read_wav(turnset.parent / item.file)
        kinds = [s.kind for s in item.silences]
        assert kinds[-1] == "end" and set(kinds[:-1]) <= {"pause"}
        end = item.silences[-1]
        assert abs(end.end_s - len(audio) / SAMPLE_RATE) < 0.01
        for s in item.silences:
            if s.kind == "pause":
                assert 0.4 <= s.end_s - s.start_s <= 0.7
            quiet = audio[int(s.start_s * SAMPLE_RATE) + 160: int(s.end_s * SAMPLE_RATE) - 160]
            assert np.abs(quiet.astype(np.int32)).max() < 2000  # silence (or room noise) there


@pytest.mark.slow
async def test_a_real_end_scores_higher_than_a_pause_mid_sentence(
    model: SmartTurn, turnset: Path,
) -> None:
    # "Had he married a more amiable woman, | he might have been made still more respectable
    # than he was.": a 0.4-0.7 s pause after "woman," (P ~0.05 there, ~0.94 at the end).
    item = next(i for i in load(turnset) if i.file == "librivox-0920-b.wav")
    audio = read_wav(turnset.parent / item.file)
    pause, end = item.silences[0], item.silences[-1]
    assert (pause.kind, end.kind) == ("pause", "end")

    def upto(seconds: float) -> np.ndarray:
        return audio[: int(seconds * SAMPLE_RATE)]

    mid = await model.probability(upto(pause.start_s + 0.2))
    done = await model.probability(upto(end.start_s + 0.2))
    assert 0.0 <= mid <= 1.0 and 0.0 <= done <= 1.0
    assert done > mid + 0.3, (mid, done)


@pytest.mark.slow
async def test_probability_does_not_block_the_event_loop(model: SmartTurn) -> None:
    audio = read_wav(Path("/usr/share/pocketsphinx/test/data/librivox/"
                          "sense_and_sensibility_01_austen_64kb-0870.wav"))
    async with LoopTicks() as ticks:
        for _ in range(3):
            await model.probability(audio)
    assert ticks.share >= 0.5
