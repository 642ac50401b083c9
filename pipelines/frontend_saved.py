"""An `AudioFrontEnd` read back from where it is saved: a component's config.json, a store's
manifest, or its own mapping (older files without a `front_end` give theirs from the fields they
had). Each function takes the class, so this module sits below `frontend`; every problem is a
ValueError that says what does not fit."""

from __future__ import annotations

from dataclasses import fields

from meshtalk.models.config import MelConfig


def from_dict(cls, values: dict):
    """From `to_dict`'s mapping (missing keys take their defaults); unknown keys and bad values
    are a ValueError."""
    if not isinstance(values, dict):
        raise ValueError(f"front_end must be a mapping, got {values!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"front_end: unknown key {', '.join(map(repr, unknown))}")
    values = dict(values)
    if "mel" in values:
        values["mel"] = mel_config(values["mel"])
    return cls(**values)


def from_component_config(cls, config: dict):
    """The front end of a stage-1 component's config.json.

    Its `front_end` if present; configs written before it existed give theirs from
    `model.mel`, `model.mel_mean`/`mel_std` and `audio_window` (true framing at 30 fps, the
    only ones they could have). A ValueError says what does not fit.
    """
    if "front_end" in config:
        front_end = from_dict(cls, config["front_end"])
    else:
        model = config.get("model")
        if not isinstance(model, dict):
            raise ValueError("has neither front_end nor a model mapping")
        front_end = _from_legacy(
            cls, model.get("mel", {}), config.get("audio_window"), 30.0
        ).with_statistics(model.get("mel_mean"), model.get("mel_std"))
    if "audio_window" in config:
        _check_audio_window(front_end, config["audio_window"])
    return front_end


def from_manifest(cls, manifest: dict):
    """The front end of a prepared store's manifest (stores before it existed: from `mel`,
    `audio_window` and `fps`). A ValueError says what does not fit."""
    if "front_end" in manifest:
        front_end = from_dict(cls, manifest["front_end"])
        if front_end.fps != manifest.get("fps", front_end.fps):
            raise ValueError(
                f"front_end.fps {front_end.fps} differs from the store's fps {manifest['fps']}"
            )
    else:
        front_end = _from_legacy(
            cls, manifest.get("mel", {}), manifest.get("audio_window"), manifest.get("fps", 30.0)
        )
    if front_end.framing != "true":
        raise ValueError(
            f"front_end.framing is {front_end.framing!r}; a store holds one mel per "
            "utterance, framing 'true'"
        )
    if "audio_window" in manifest:
        _check_audio_window(front_end, manifest["audio_window"])
    return front_end


def _from_legacy(cls, mel, audio_window, fps):
    if not isinstance(audio_window, dict):
        raise ValueError(f"audio_window must be a mapping, got {audio_window!r}")
    return cls(mel=mel_config(mel), window=audio_window.get("name"), fps=fps)


def _check_audio_window(front_end, audio_window) -> None:
    """The legacy `audio_window` beside a front end must say the same."""
    if not isinstance(audio_window, dict):
        raise ValueError(f"audio_window must be a mapping, got {audio_window!r}")
    expected = front_end.audio_window()
    clashes = [
        f"audio_window.{key} is {audio_window[key]!r} where the front end gives {expected[key]!r}"
        for key in ("name", "mel_first", "mel_frames")
        if key in audio_window and audio_window[key] != expected[key]
    ]
    if clashes:
        raise ValueError("; ".join(clashes))


def mel_config(values) -> MelConfig:
    if isinstance(values, MelConfig):
        return values
    if not isinstance(values, dict):
        raise ValueError(f"mel must be a mapping, got {values!r}")
    unknown = sorted(set(values) - {f.name for f in fields(MelConfig)})
    if unknown:
        raise ValueError(f"mel: unknown key {', '.join(map(repr, unknown))}")
    return MelConfig(**values)
