"""Write a folder of spoken digits, "zero" .. "nine", synthesised with espeak-ng: real speech
for the audio methods, made on this machine, with no download.

    python benchmarks/make_spoken_digits.py --out spoken_digits --per-digit 60 --seed 0
    minissl pretrain cpc --data spoken_digits --epochs 8 --batch-size 32 --out runs/digits

The folder holds one subfolder per digit (the class labels of minissl's WAV-folder loader,
``minissl.data.user.wav_clips``) of 8 kHz mono 16-bit WAV files of ``--length`` samples.
Each clip is one word, spoken by a voice drawn from several English accents and espeak-ng's
voice variants (male, female, ...), at a random speed (words per minute) and pitch; the
synthesis is resampled to 8 kHz (band-limited, in the frequency domain), its silences
trimmed, scaled to a random peak, placed at a random onset and mixed with white noise at a
random signal-to-noise ratio; ``voices.csv`` in the folder lists each clip's voice, speed,
pitch and SNR. One ``--seed`` gives the same folder on every machine with the
same espeak-ng.

espeak-ng comes from the system's packages (Debian/Ubuntu: ``apt-get install espeak-ng``); it
is needed only here, never by minissl. The folder appears whole or not at all: the files are
written into a temporary folder beside ``--out`` that is renamed at the end.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import wave

import numpy as np

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc"]
VARIANTS = ["", "+m1", "+m3", "+m5", "+f1", "+f2", "+f3", "+f4", "+klatt", "+klatt2"]
SPEEDS = (160, 260)          # words per minute (espeak-ng -s, default 175)
PITCHES = (20, 80)           # espeak-ng -p, 0..99, default 50


class Failed(Exception):
    """A reason to stop, printed as one line."""


def synthesise(word, voice, speed, pitch, folder):
    """The samples (float64 in [-1, 1]) and sample rate of espeak-ng speaking ``word``."""
    path = os.path.join(folder, "espeak.wav")
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", path, word]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        err = (run.stderr.strip().splitlines() or ["no message"])[-1]
        raise Failed(f"espeak-ng failed on {' '.join(cmd[1:-3])} {word!r}: {err}")
    try:
        with wave.open(path, "rb") as w:
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            raw = w.readframes(w.getnframes())
    except (OSError, EOFError, wave.Error) as e:
        raise Failed(f"espeak-ng wrote no readable WAV for {word!r}: {e}") from None
    if width != 2:
        raise Failed(f"espeak-ng wrote {8 * width}-bit samples for {word!r}; expected 16-bit")
    x = np.frombuffer(raw, "<i2").reshape(-1, channels).mean(axis=1) / 32768.0
    return x, rate


def resample(x, rate, new_rate):
    """``x`` at ``new_rate`` Hz: its spectrum cut (or zero-padded) at the new Nyquist
    frequency, which is the band-limited resampling, no aliasing."""
    n = max(1, int(round(len(x) * new_rate / rate)))
    spec = np.fft.rfft(x)[:n // 2 + 1]
    return np.fft.irfft(spec, n=n) * (n / len(x))


def trim(x, threshold=0.02):
    """``x`` without its leading and trailing silence (samples under ``threshold`` of the
    peak)."""
    loud = np.flatnonzero(np.abs(x) > threshold * np.abs(x).max())
    return x[loud[0]:loud[-1] + 1] if len(loud) else x[:0]


def render(word, rng, args, folder):
    """One clip (``args.length`` samples at ``args.rate``) of ``word``: a random voice,
    speed, pitch, peak, onset and noise. Returns (samples in [-1, 1], the voice settings)."""
    voice = ACCENTS[rng.integers(len(ACCENTS))] + VARIANTS[rng.integers(len(VARIANTS))]
    speed, pitch = int(rng.integers(*SPEEDS, endpoint=True)), int(rng.integers(*PITCHES,
                                                                                endpoint=True))
    x, rate = synthesise(word, voice, speed, pitch, folder)
    s = trim(resample(x, rate, args.rate))
    if len(s) == 0:
        raise Failed(f"espeak-ng produced silence for {word!r} ({voice}, -s {speed})")
    s = s[:args.length] * rng.uniform(0.3, 0.9) / np.abs(s).max()
    out = np.zeros(args.length)
    onset = int(rng.integers(0, args.length - len(s) + 1))
    out[onset:onset + len(s)] = s
    snr = rng.uniform(*args.snr_db)
    out += rng.standard_normal(args.length) * np.sqrt(np.mean(s ** 2) / 10 ** (snr / 10))
    return np.clip(out, -1.0, 1.0), f"{voice},{speed},{pitch},{snr:.1f}"


def write_wav(path, x, rate):
    """16-bit mono PCM."""
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.round(x * 32767).astype("<i2").tobytes())


def make(args):
    if shutil.which("espeak-ng") is None:
        raise Failed("espeak-ng is not installed (it is needed only to make this data set; "
                     "Debian/Ubuntu: apt-get install espeak-ng)")
    if os.path.exists(args.out):
        raise Failed(f"{args.out} exists already; name a new folder")
    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    tmp = tempfile.mkdtemp(prefix=".spoken_digits-", dir=parent)
    try:
        lines = []
        for word in DIGITS:
            os.mkdir(os.path.join(tmp, word))
            for i in range(args.per_digit):
                x, how = render(word, rng, args, tmp)
                name = f"{word}_{i:04d}.wav"
                write_wav(os.path.join(tmp, word, name), x, args.rate)
                lines.append(f"{word}/{name},{how}")
        os.remove(os.path.join(tmp, "espeak.wav"))
        # what each clip is; not .txt, which would make the folder a text corpus to minissl
        with open(os.path.join(tmp, "voices.csv"), "w") as f:
            f.write("\n".join(["file,voice,words_per_minute,pitch,snr_db"] + lines) + "\n")
        os.rename(tmp, args.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the folder to write (must not exist)")
    ap.add_argument("--per-digit", type=int, default=60, help="clips of each digit")
    ap.add_argument("--length", type=int, default=4096, help="samples of each clip "
                    "(longer words are cut at the end)")
    ap.add_argument("--rate", type=int, default=8000, help="sample rate, Hz")
    ap.add_argument("--snr-db", type=float, nargs=2, default=(15.0, 35.0),
                    metavar=("LO", "HI"), help="white noise at a SNR drawn in [LO, HI] dB")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.per_digit < 1 or args.length < 64 or args.rate < 1000 \
            or args.snr_db[0] > args.snr_db[1]:
        ap.error("needs --per-digit >= 1, --length >= 64, --rate >= 1000 and LO <= HI")
    try:
        n = make(args)
    except (Failed, OSError) as e:
        print(f"make_spoken_digits: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} clips of {args.length} samples at {args.rate} Hz to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
