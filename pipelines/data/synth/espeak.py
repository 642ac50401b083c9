"""Speech from eSpeak NG (the `espeakng-loader` wheel ships the library and its voices).

`speak(text, voice)` returns the waveform and the timed phonemes espeak reports while it
synthesises; `to_phones` maps those phonemes onto the articulation classes of
`synth.speech` (its vowels and consonants), so the same timeline drives the mouth.

The library is driven through ctypes with `AUDIO_OUTPUT_SYNCHRONOUS` and a synth callback that
collects the samples and the phoneme events (espeak's `audio_position`, in milliseconds). espeak
carries state from one utterance to the next (the same text comes out a few milliseconds longer or
shorter depending on what was said before), so every utterance is spoken in a fresh child process.
The breathy variants (f1 ... f5) add noise from espeak's own random numbers, which it seeds with
the clock when it starts; the child seeds them again from what is said (text, voice, rate, pitch)
just before speaking (`espeak_ng_SetRandSeed`). So the same text and voice always give the same
samples.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError

AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
INITIALIZE_DONT_EXIT = 0x8000
EVENT_LIST_TERMINATED, EVENT_WORD, EVENT_END, EVENT_PHONEME = 0, 1, 5, 7
POS_CHARACTER = 1
CHARS_UTF8 = 1
PARAM_RATE, PARAM_PITCH, PARAM_RANGE = 1, 3, 4


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)

# espeak phoneme mnemonics (English) -> articulation class of synth.speech ('a e i o u' vowels,
# 'p b m t k s f' consonants, ' ' silence). Diphthongs become two halves.
PHONEME_CLASSES = {
    **dict.fromkeys(["a", "a#", "A:", "A@", "aa", "{", "V", "A"], "a"),
    **dict.fromkeys(["E", "e", "e@", "3:", "3", "@", "@2", "@5", "a2", "@L", "E2", "E@"], "e"),
    **dict.fromkeys(["i", "i:", "I", "I2", "I#", "i@", "j", "i@3"], "i"),
    **dict.fromkeys(["0", "O", "O:", "O@", "o", "o@", "0#", "O2"], "o"),
    **dict.fromkeys(["u", "u:", "U", "U@", "w", "u@"], "u"),
    **dict.fromkeys(["p"], "p"),
    **dict.fromkeys(["b"], "b"),
    **dict.fromkeys(["m", "m-"], "m"),
    **dict.fromkeys(["f", "v"], "f"),
    **dict.fromkeys(
        ["t", "d", "n", "l", "r", "T", "D", "t#", "d#", "n-", "l-", "R", "r-", "*"], "t"
    ),
    **dict.fromkeys(["k", "g", "N", "h", "x", "?", "n^"], "k"),
    **dict.fromkeys(["s", "z", "S", "Z", "tS", "dZ", "s2"], "s"),
}
DIPHTHONGS = {
    "aI": "ai",
    "eI": "ei",
    "OI": "oi",
    "aU": "au",
    "oU": "ou",
    "@U": "eu",
    "I@": "ie",
    "e@": "ee",
    "U@": "ue",
    "aI@": "ai",
    "aU@": "au",
}


@dataclass
class SpokenPhoneme:
    """One phoneme espeak reported: its mnemonic and its start in seconds."""

    name: str
    start: float


@dataclass
class Utterance:
    """What espeak said: mono float32 samples, their rate, the timed phonemes and word starts."""

    samples: np.ndarray
    rate: int
    phonemes: list[SpokenPhoneme]
    word_starts: list[float]


@lru_cache(maxsize=1)
def _library() -> tuple[ctypes.CDLL, int]:
    """Load and initialise libespeak-ng once; returns it and its sample rate."""
    try:
        import espeakng_loader
    except ImportError:
        raise MeshtalkError(
            None, "the espeak voice needs espeakng-loader (pip install espeakng-loader)"
        ) from None
    library = ctypes.CDLL(espeakng_loader.get_library_path())
    library.espeak_Initialize.restype = ctypes.c_int
    library.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    library.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    library.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    library.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    library.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.POINTER(ctypes.c_uint),
        ctypes.c_void_p,
    ]
    data_parent = str(Path(espeakng_loader.get_data_path()).parent).encode()
    rate = library.espeak_Initialize(
        AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent, INITIALIZE_PHONEME_EVENTS | INITIALIZE_DONT_EXIT
    )
    if rate <= 0:
        raise MeshtalkError(None, f"espeak-ng could not start (its data: {data_parent.decode()})")
    return library, rate


def available() -> bool:
    """Whether eSpeak NG's library and data are installed (`espeakng-loader`)."""
    try:
        import espeakng_loader

        ctypes.CDLL(espeakng_loader.get_library_path())
        espeakng_loader.get_data_path()
    except (ImportError, OSError, RuntimeError):
        return False
    return True


def speak(text: str, voice: str = "en-us", rate_wpm: int = 165, pitch: int = 50) -> Utterance:
    """Synthesise `text` with an espeak voice (e.g. 'en-us', 'en-us+f2'), in a fresh process.

    Args:
        text: what to say.
        voice: an espeak voice name, optionally with a variant after '+'.
        rate_wpm: speaking rate in words per minute (80..450).
        pitch: base pitch, 0..100 (50: the voice's own).
    """
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_speak_child, args=(sender, text, voice, rate_wpm, pitch))
    child.start()
    sender.close()
    try:
        header = json.loads(receiver.recv_bytes())
        samples = np.frombuffer(receiver.recv_bytes(), dtype=np.float32).copy()
    except EOFError:
        header, samples = {"error": "espeak-ng stopped while speaking"}, None
    finally:
        receiver.close()
        child.join()
    if "error" in header:
        raise MeshtalkError(None, header["error"])
    phonemes = [SpokenPhoneme(name, start) for name, start in header["phonemes"]]
    return Utterance(samples, header["rate"], phonemes, header["words"])


def _speak_child(sender, text: str, voice: str, rate_wpm: int, pitch: int) -> None:  # noqa: ANN001
    """Speak in this (child) process and send a JSON header and the float32 samples back."""
    try:
        utterance = _speak_here(text, voice, rate_wpm, pitch)
    except MeshtalkError as error:
        sender.send_bytes(json.dumps({"error": str(error)}).encode())
        sender.send_bytes(b"")
    else:
        header = {
            "rate": utterance.rate,
            "phonemes": [(p.name, p.start) for p in utterance.phonemes],
            "words": utterance.word_starts,
        }
        sender.send_bytes(json.dumps(header).encode())
        sender.send_bytes(utterance.samples.astype(np.float32).tobytes())
    finally:
        sender.close()


def _speak_here(text: str, voice: str, rate_wpm: int, pitch: int) -> Utterance:
    """Speak with the library loaded in this process (its state carries to the next call)."""
    library, sample_rate = _library()
    chunks: list[np.ndarray] = []
    phonemes: list[SpokenPhoneme] = []
    words: list[float] = []

    def collect(wav, count, events):  # noqa: ANN001 - ctypes callback
        index = 0
        while events[index].type != EVENT_LIST_TERMINATED:
            event = events[index]
            seconds = event.audio_position / 1000.0
            if event.type == EVENT_PHONEME:
                name = event.id.string.decode("ascii", "replace").strip()
                phonemes.append(SpokenPhoneme(name, seconds))
            elif event.type == EVENT_WORD:
                words.append(seconds)
            index += 1
        if count > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).astype(np.float32) / 32768)
        return 0

    callback = _CALLBACK(collect)
    encoded = text.encode("utf-8") + b"\0"
    # espeak seeds its random numbers (the breath noise of the f1-f5 variants) with the clock when
    # it initialises: seeded again from what is said, the same call gives the same samples.
    seed = zlib.crc32(f"{voice}|{rate_wpm}|{pitch}|{text}".encode())
    library.espeak_ng_SetRandSeed(seed)
    library.espeak_SetSynthCallback(callback)
    if library.espeak_SetVoiceByName(voice.encode()) != 0:
        raise MeshtalkError(None, f"espeak has no voice '{voice}'")
    library.espeak_SetParameter(PARAM_RATE, int(rate_wpm), 0)
    library.espeak_SetParameter(PARAM_PITCH, int(pitch), 0)
    status = library.espeak_Synth(
        encoded, len(encoded), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None
    )
    if status != 0:
        raise MeshtalkError(None, f"espeak could not synthesise the text (status {status})")
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return Utterance(samples, sample_rate, phonemes, words)


def to_phones(utterance: Utterance) -> list[tuple[str, float, float]]:
    """(class symbol, start s, duration s) for each phoneme, diphthongs split in two halves;
    pauses and unknown phonemes give ' ' (the mouth rests)."""
    end = len(utterance.samples) / utterance.rate
    timed = [p for p in utterance.phonemes if p.name]
    phones = []
    for index, phoneme in enumerate(timed):
        stop = timed[index + 1].start if index + 1 < len(timed) else end
        duration = max(stop - phoneme.start, 0.0)
        if duration <= 0:
            continue
        name = phoneme.name.lstrip("',")
        if name in DIPHTHONGS:
            first, second = DIPHTHONGS[name]
            phones.append((first, phoneme.start, duration / 2))
            phones.append((second, phoneme.start + duration / 2, duration / 2))
        else:
            phones.append((PHONEME_CLASSES.get(name, " "), phoneme.start, duration))
    return phones
