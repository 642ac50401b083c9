"""Speech: pseudo-word sentences, their phone timelines, articulation curves and audio.

The same phone timeline drives both the audio (a formant synthesiser) and the mouth (jaw
opening, lip rounding, spreading and closure), so lips are a deterministic function of the audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshtalk.pipelines.data.synth.face import MOUTH_PARAMS

AUDIO_RATE = 48_000
CONTROL_RATE = 1000  # articulation curves are built at 1 kHz, then sampled

# Vowels: jaw opening, rounding, spreading, F1, F2, F3 (Hz).
VOWELS = {
    "a": (1.0, 0.0, 0.2, 750, 1250, 2600),
    "e": (0.55, 0.0, 0.6, 500, 1850, 2600),
    "i": (0.25, 0.0, 1.0, 300, 2250, 3000),
    "o": (0.6, 0.8, 0.0, 500, 900, 2500),
    "u": (0.3, 1.0, 0.0, 320, 800, 2400),
}
# Consonants: kind, lip closure, jaw, noise band (Hz) for fricatives and bursts.
CONSONANTS = {
    "p": ("plosive", 1.0, 0.05, (500, 4000)),
    "b": ("plosive", 1.0, 0.05, (300, 3000)),
    "m": ("nasal", 1.0, 0.05, None),
    "t": ("plosive", 0.0, 0.2, (2500, 7000)),
    "k": ("plosive", 0.0, 0.25, (1500, 4000)),
    "s": ("fricative", 0.0, 0.1, (4000, 9000)),
    "f": ("fricative", 0.6, 0.1, (1500, 7000)),
}


@dataclass
class Phone:
    """One phone of a sentence: start and duration in seconds."""

    symbol: str
    start: float
    duration: float


def sentence_words(rng: np.random.Generator, min_words: int, max_words: int) -> list[str]:
    """A random sentence of pseudo-words built from consonant-vowel syllables."""
    words = []
    for _ in range(rng.integers(min_words, max_words + 1)):
        syllables = []
        for _ in range(rng.integers(1, 4)):
            onset = rng.choice([*CONSONANTS, ""], p=[0.14] * 7 + [0.02])
            syllables.append(onset + rng.choice(list(VOWELS)))
        words.append("".join(syllables))
    return words


_WORD_TEXT = """
a about after all also and any apple are around as at away back bad ball be because bed been
before big bird black blue boat book both box boy bring brown but by call came can car cat
chair child city cold come could cup day did do dog door down each early eat eight even every
eye face fall far farm fast father feel few find fine fire fish five floor food foot for four
friend from full game girl give go good green hand happy has have he head hear help her here
high him his home horse hot house how I if in is it just keep kind know lady large last late
leave left light like line little live long look love made make man many may me mean might
milk money moon more morning most mother move much music must my name near never new next nice
night nine no not now number of off often oh old on one only open or other our out over page
paper park people pick place play please point put quick rain read red right river road room
round run said same saw say school sea see seven she ship shoe short should show side sing sit
six sleep slow small so some soon spoon stand start stay still stop story street sun table take
talk tell ten than thank that the their them then there these they thing think this those three
through time to today together too took top town tree try two under up us very walk wall want
warm was watch water way we week well went were what when where which white who why will wind
window with woman wood word work world would write year yellow yes you young your zoo
"""
ENGLISH_WORDS = tuple(_WORD_TEXT.split())
"""Everyday English words the espeak voice reads in random order (a sentence per segment)."""


def english_words(rng: np.random.Generator, min_words: int, max_words: int) -> list[str]:
    """A random sentence of everyday English words (for the espeak voice)."""
    count = int(rng.integers(min_words, max_words + 1))
    return [str(word) for word in rng.choice(ENGLISH_WORDS, size=count)]


def phone_timeline(
    words: list[str], rate: float, rng: np.random.Generator
) -> tuple[list[Phone], float]:
    """Timed phones of a sentence (pauses as ' '), and its total duration in seconds."""
    phones: list[Phone] = []
    t = rng.uniform(0.25, 0.4)  # silence before speech
    for index, word in enumerate(words):
        if index:
            pause = rng.uniform(0.06, 0.18) / rate
            phones.append(Phone(" ", t, pause))
            t += pause
        for symbol in word:
            if symbol in VOWELS:
                duration = rng.uniform(0.11, 0.2)
            elif CONSONANTS[symbol][0] == "plosive":
                duration = rng.uniform(0.06, 0.09)
            else:
                duration = rng.uniform(0.07, 0.12)
            phones.append(Phone(symbol, t, duration / rate))
            t += duration / rate
    return phones, t + rng.uniform(0.3, 0.45)


def gaussian_kernel(sigma_samples: float) -> np.ndarray:
    radius = int(3 * sigma_samples) + 1
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_samples) ** 2)
    return kernel / kernel.sum()


def gaussian_smooth(curve: np.ndarray, sigma_samples: float) -> np.ndarray:
    kernel = gaussian_kernel(sigma_samples)
    radius = len(kernel) // 2
    padded = np.pad(curve, (radius, radius), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def articulation(phones: list[Phone], duration: float) -> dict[str, np.ndarray]:
    """Control curves at CONTROL_RATE: mouth parameters and the synthesiser's source settings."""
    n = int(np.ceil(duration * CONTROL_RATE)) + 1
    curves = {
        name: np.zeros(n)
        for name in ("jaw", "round", "spread", "closure", "voice", "noise", "nasal")
    }
    formants = np.tile(np.array([500.0, 1500.0, 2500.0]), (n, 1))
    noise_band = np.zeros((n, 2))
    curves["jaw"][:] = 0.05
    for phone in phones:
        a, b = int(phone.start * CONTROL_RATE), int((phone.start + phone.duration) * CONTROL_RATE)
        if phone.symbol in VOWELS:
            jaw, rnd, spread, f1, f2, f3 = VOWELS[phone.symbol]
            curves["jaw"][a:b], curves["round"][a:b], curves["spread"][a:b] = jaw, rnd, spread
            curves["voice"][a:b] = 1.0
            formants[a:b] = (f1, f2, f3)
        elif phone.symbol in CONSONANTS:
            kind, closure, jaw, band = CONSONANTS[phone.symbol]
            curves["closure"][a:b], curves["jaw"][a:b] = closure, jaw
            if kind == "nasal":
                curves["nasal"][a:b] = 1.0
            elif kind == "fricative":
                curves["noise"][a:b] = 0.5
                noise_band[a:b] = band
            else:  # silence while closed, then a short burst
                burst = max(a, b - int(0.015 * CONTROL_RATE))
                curves["noise"][burst:b] = 0.8
                noise_band[burst:b] = band
    mouth_sigma = 0.025 * CONTROL_RATE  # coarticulation
    for name in MOUTH_PARAMS:
        curves[name] = gaussian_smooth(curves[name], mouth_sigma)
    for name in ("voice", "noise", "nasal"):
        curves[name] = gaussian_smooth(curves[name], 0.006 * CONTROL_RATE)
    for k in range(3):
        formants[:, k] = gaussian_smooth(formants[:, k], 0.012 * CONTROL_RATE)
    curves["formants"] = formants
    curves["noise_band"] = noise_band
    return curves


def synthesise_audio(
    curves: dict[str, np.ndarray], duration: float, f0: float, rng: np.random.Generator
) -> np.ndarray:
    """A formant synthesiser: harmonics of a gliding f0 shaped by three formants, plus noise."""
    n = int(round(duration * AUDIO_RATE))
    t_audio = np.arange(n) / AUDIO_RATE
    t_control = np.arange(len(curves["voice"])) / CONTROL_RATE

    def at_audio_rate(curve: np.ndarray) -> np.ndarray:
        return np.interp(t_audio, t_control, curve)

    def glide(t: np.ndarray) -> np.ndarray:  # declining intonation with a slow vibrato
        return f0 * (1.1 - 0.2 * t / max(duration, 1e-3)) * (1 + 0.03 * np.sin(2 * np.pi * 3.1 * t))

    phase = 2 * np.pi * np.cumsum(glide(t_audio)) / AUDIO_RATE
    # Harmonic amplitudes change slowly: compute them at the control rate, then interpolate.
    pitch = glide(t_control)
    formants = curves["formants"]
    signal = np.zeros(n)
    for k in range(1, int(5000 / f0) + 1):
        frequency = k * pitch
        gain = sum(
            1.0 / np.sqrt((1 - (frequency / fk) ** 2) ** 2 + (frequency / (fk * 8)) ** 2)
            for fk in formants.T
        )
        murmur = 1.0 / np.sqrt((1 - (frequency / 250) ** 2) ** 2 + (frequency / 2000) ** 2)
        amplitude = (curves["voice"] * gain + 0.5 * curves["nasal"] * murmur) / k
        signal += at_audio_rate(amplitude) * np.sin(k * phase)
    white = rng.standard_normal(n)
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, 1 / AUDIO_RATE)
    noise_level = at_audio_rate(curves["noise"])
    low = at_audio_rate(curves["noise_band"][:, 0])
    for band in ((300, 3000), (500, 4000), (1500, 4000), (1500, 7000), (2500, 7000), (4000, 9000)):
        filtered = np.fft.irfft(spectrum * ((freqs >= band[0]) & (freqs < band[1])), n)
        signal += 3.0 * noise_level * (np.abs(low - band[0]) < 1) * filtered
    signal += 1e-3 * rng.standard_normal(n)
    return (0.5 * signal / np.abs(signal).max()).astype(np.float32)
