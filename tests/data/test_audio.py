"""The procedural audio classes, the spectrogram, and WAV folders read as labelled clips."""
import wave

import numpy as np
import pytest

from minissl import data
from minissl.data import AudioDataset, SOUND_NAMES, audio, log_spectrogram, render_sounds
from minissl.data.user import from_path, wav_clips


def test_audio_shapes_range_balance_and_determinism():
    d = audio(n_per_class=10, clip_length=1024, seed=3)
    assert isinstance(d, AudioDataset) and d.sample_rate == 8000 and d.num_classes == 10
    assert d.train_x.shape == (80, 1024) and d.test_x.shape == (20, 1024)
    assert d.train_x.dtype == np.float32 and np.abs(d.train_x).max() <= 1.0
    assert np.bincount(d.train_y).tolist() == [8] * 10
    assert np.bincount(d.test_y).tolist() == [2] * 10
    again = audio(n_per_class=10, clip_length=1024, seed=3)
    np.testing.assert_array_equal(d.train_x, again.train_x)
    other = audio(n_per_class=10, clip_length=1024, seed=4)
    assert not np.array_equal(d.train_x, other.train_x)
    assert data.load("audio", n_per_class=2, clip_length=256).clip_length == 256
    assert d.class_names == SOUND_NAMES


def test_audio_rejects_bad_sizes():
    with pytest.raises(ValueError, match="sample_rate >= 5000"):
        audio(sample_rate=4000)
    with pytest.raises(ValueError, match="train_x must be a float32"):
        AudioDataset("x", np.zeros((2, 3, 4), np.float32), np.zeros(2, np.int64),
                     np.zeros((1, 4), np.float32), np.zeros(1, np.int64), 1, ["a"])


def _pitch_track(clip, rate=8000):
    """Dominant frequency (Hz) of each frame that holds most of the clip's energy."""
    s = log_spectrogram(clip[None], n_fft=256, hop=64)[0]             # (F, 129)
    loud = s.max(1) > s.max() - 4
    return np.argmax(s[loud], axis=1) * rate / 256


@pytest.mark.parametrize("name, sign", [("rising chirp", 1), ("falling chirp", -1),
                                        ("steady tone", 0)])
def test_sounds_are_what_they_are_called(name, sign):
    rng = np.random.default_rng(0)
    label = SOUND_NAMES.index(name)
    clips = render_sounds(np.full(6, label), rng, clip_length=4096, snr_db=(30, 30))
    for clip in clips:
        track = _pitch_track(clip)
        rise = np.log2(track[-3:].mean() / track[:3].mean())   # octaves over the sound
        if sign == 0:
            assert abs(rise) < 0.15
        else:
            assert sign * rise > 0.4


def test_harmonic_stack_has_its_harmonics_below_nyquist():
    rng = np.random.default_rng(1)
    clip = render_sounds([SOUND_NAMES.index("harmonic stack")], rng, 4096, snr_db=(40, 40))[0]
    power = np.abs(np.fft.rfft(clip)) ** 2
    f = np.fft.rfftfreq(len(clip), 1 / 8000)
    f0 = f[np.argmax(power)]
    assert power[np.abs(f - 2 * f0) < 10].max() > 0.1 * power.max()   # (1/2)^2 = 0.25
    assert power[np.abs(f - 1.5 * f0) < 10].max() < 1e-3 * power.max()


def test_log_spectrogram_of_a_sine_peaks_at_its_bin():
    t = np.arange(1024) / 8000
    s = log_spectrogram(np.sin(2 * np.pi * 1000 * t)[None], n_fft=256, hop=128)
    assert s.shape == (1, 7, 129) and s.dtype == np.float32
    assert (np.argmax(s[0], axis=1) == 32).all()          # 1000 Hz / (8000 / 256) Hz per bin
    with pytest.raises(ValueError, match="log_spectrogram"):
        log_spectrogram(np.zeros((2, 100)), n_fft=256)


def test_classes_are_learnable_from_spectrograms_not_from_raw_samples():
    from minissl.evaluate import linear_probe
    # Random onset, pitch and phase defeat a linear model of the samples (chance: 0.1); the
    # spectrogram sees the sound, though the classes that differ only in their pitch contour
    # keep a linear model of it well below 1 (the learned features have room to do better).
    d = audio(n_per_class=100, clip_length=2048, seed=0)
    raw = linear_probe(d.train_x, d.train_y, d.test_x, d.test_y, steps=300)
    spec = [log_spectrogram(x).reshape(len(x), -1) for x in (d.train_x, d.test_x)]
    acc = linear_probe(spec[0], d.train_y, spec[1], d.test_y, steps=300)
    assert raw < 0.3 < 0.4 < acc, (raw, acc)


# ---------------------------------------------------------------------------------- WAV folders

def write_wav(path, samples, rate=8000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.clip(np.asarray(samples) * 32767, -32768, 32767).astype("<i2")
                      .tobytes())


def test_wav_class_subfolders_become_labelled_clips(tmp_path, rng):
    for c, name in enumerate(["bark", "meow"]):
        (tmp_path / name).mkdir()
        for i in range(5):
            write_wav(tmp_path / name / f"{i}.wav", np.full(300 + 100 * c + i, 0.25 * (c + 1)))
    d = from_path(tmp_path, audio="clips")
    assert isinstance(d, AudioDataset) and d.labelled and d.class_names == ["bark", "meow"]
    assert d.clip_length == 404 and d.sample_rate == 8000          # the longest file
    assert len(d.train_x) == 8 and np.bincount(d.test_y).tolist() == [1, 1]
    for x, y, f in zip(d.train_x, d.train_y, d.train_files):
        assert f"/{d.class_names[y]}/" in f
        n = 300 + 100 * y + int(f[-5])
        np.testing.assert_allclose(x[:n], 0.25 * (y + 1), atol=1e-4)
        assert (x[n:] == 0).all()                                  # zero-padded at the end
    assert wav_clips(tmp_path, clip_length=100).clip_length == 100   # cut
    # The series methods still get windows of every file (subfolders included).
    s = from_path(tmp_path, series_length=100)
    assert isinstance(s, data.Series) and s.series.shape[1] == 100


def test_wav_flat_folder_is_unlabelled_and_rates_must_agree(tmp_path):
    for i in range(5):
        write_wav(tmp_path / f"{i}.wav", np.zeros(256))
    d = from_path(tmp_path, audio="clips")
    assert not d.labelled and d.class_names == ["unlabelled"] and (d.train_y == 0).all()
    write_wav(tmp_path / "odd.wav", np.zeros(256), rate=16000)
    with pytest.raises(ValueError, match="odd.wav: sample rate 16000 Hz"):
        from_path(tmp_path, audio="clips")
    with pytest.raises(ValueError, match="audio must be"):
        from_path(tmp_path, audio="wave")
