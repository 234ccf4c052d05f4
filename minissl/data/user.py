"""Your own data from a path: a folder of images, an array file, text, or WAV audio.

``from_path(path, image_size=32)`` looks at what ``path`` is and returns the object the methods
train on (what ``minissl pretrain --data PATH`` does):

==============================  =============================================================
``path``                        becomes
==============================  =============================================================
folder of PNG/JPEG files        an image :class:`FileDataset`; one subfolder per class gives
                                the labels (folder names, sorted), no subfolders means
                                unlabelled. Each image is resized (shorter side) and
                                centre-cropped to ``image_size``; RGB unless every image is
                                greyscale. Needs Pillow (``pip install 'minissl[images]'``).
``.npy`` file                   (N, C, H, W) or (N, H, W) images (uint8 0..255, or floats in
                                [0, 1]): an unlabelled :class:`FileDataset`; (N, L) floats: a
                                :class:`Series` of N series.
``.npz`` file                   key ``x`` as above, optional ``y``: N integer labels 0..K-1.
``.txt`` file, or a folder      a character-level :class:`TextCorpus` (files joined in path
of ``.txt`` files               order, UTF-8).
folder of ``.wav`` files        for the audio methods (``audio="clips"``) an
                                :class:`AudioDataset`: one clip per file, mixed to mono,
                                scaled to [-1, 1], cut or zero-padded to one length; one
                                subfolder per class gives the labels. For the series methods
                                (``ar``) a :class:`Series`: every file cut into windows of
                                ``series_length`` samples. 16-bit or 8-bit PCM, one sample
                                rate for all.
==============================  =============================================================

A fifth of the examples (seeded, stratified when labelled) is held out as the test split.
Every file is checked before it is read in full: a file that is too big, truncated or not of
its kind raises ValueError naming it; a folder with no usable file says what it looked for.
"""
import os
import wave
from dataclasses import dataclass

import numpy as np

from .audio import AudioDataset
from .corpus import text
from .dataset import Dataset, stratified_split
from .series import ARSeries

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_FILE_BYTES = 1 << 30       # one file of any kind; past this it is not a small data set
MAX_TOTAL_BYTES = 4 << 30      # the decoded float32 arrays of all of it together
MAX_IMAGE_PIXELS = 1 << 26     # a decoded image (Pillow's decompression-bomb guard is 89 Mpx)
MAX_CLIP = 1 << 20             # samples of one clip of an audio data set (2 min at 8 kHz)
TEST_FRACTION = 0.2


@dataclass(frozen=True, eq=False, repr=False)
class FileDataset(Dataset):
    """An image :class:`Dataset` read from files: the file of each example, and whether the
    labels are real (class subfolders, ``y`` of an .npz) or all zero (unlabelled)."""

    train_files: tuple = ()
    test_files: tuple = ()
    labelled: bool = True


@dataclass(eq=False)
class Series(ARSeries):
    """Series of unknown origin (an array file, audio): no true coefficients to recover.
    ``series`` is the training split, ``test_series`` the held-out one."""

    test_series: np.ndarray = None
    train_files: tuple = ()
    test_files: tuple = ()

    @property
    def order(self):
        return 3   # lags of the ar model unless --set order=P says otherwise


def _check_size(path, most=MAX_FILE_BYTES):
    size = os.path.getsize(path)
    if size > most:
        raise ValueError(f"{path}: {size} bytes, more than the {most} minissl reads from one "
                         f"file")
    return size


def _split(n, labels, where, seed):
    if labels is not None:
        tr, te = stratified_split(labels, TEST_FRACTION, seed)
    else:
        order = np.random.default_rng(seed).permutation(n)
        cut = n - int(round(TEST_FRACTION * n))
        tr, te = np.sort(order[:cut]), np.sort(order[cut:])
    if len(tr) == 0 or len(te) == 0:
        raise ValueError(f"{where}: {n} examples are too few to hold out a test split; add "
                         f"more")
    return tr, te


def _image_dataset(where, x, labels, class_names, files, seed):
    y = np.zeros(len(x), np.int64) if labels is None else labels.astype(np.int64)
    tr, te = _split(len(x), labels, where, seed)
    name = os.path.basename(os.path.normpath(where))
    names = np.asarray(files)
    return FileDataset(name, x[tr], y[tr], x[te], y[te],
                       num_classes=len(class_names), class_names=list(class_names),
                       train_files=tuple(names[tr]), test_files=tuple(names[te]),
                       labelled=labels is not None)


# ------------------------------------------------------------------------------- image folders

def _read_image(path, size, Image):
    """One image file as float32 (3, size, size) in [0, 1], and whether it was greyscale."""
    _check_size(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ValueError(f"{path}: {w}x{h} pixels, more than the {MAX_IMAGE_PIXELS} "
                                 f"minissl decodes")
            grey = im.mode in ("1", "L", "LA", "I", "I;16", "F")
            scale = size / min(w, h)       # shorter side to size, then the centre square
            im = im.convert("RGB").resize((max(size, round(w * scale)),
                                           max(size, round(h * scale))), Image.BICUBIC)
            left, top = (im.width - size) // 2, (im.height - size) // 2
            im = im.crop((left, top, left + size, top + size))
            a = np.asarray(im, dtype=np.float32) / np.float32(255.0)
    except ValueError:
        raise
    except Exception as e:   # noqa: BLE001  Pillow raises many types for a bad file
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return a.transpose(2, 0, 1), grey


def _listed(folder, suffixes):
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if not f.startswith(".") and f.lower().endswith(suffixes)
                  and os.path.isfile(os.path.join(folder, f)))


def image_folder(path, image_size=32, seed=0):
    """A :class:`FileDataset` of the images in ``path`` (see the module docstring)."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(f"{path}: reading PNG/JPEG images needs Pillow: "
                          f"pip install 'minissl[images]'") from None
    classes = sorted(d for d in os.listdir(path)
                     if not d.startswith(".") and os.path.isdir(os.path.join(path, d)))
    if classes:
        files, labels = [], []
        for c, name in enumerate(classes):
            found = _listed(os.path.join(path, name), IMAGE_SUFFIXES)
            files += found
            labels += [c] * len(found)
        labels = np.asarray(labels, np.int64)
    else:
        files, labels = _listed(path, IMAGE_SUFFIXES), None
    if not files:
        raise ValueError(f"{path}: no PNG or JPEG files ({', '.join(IMAGE_SUFFIXES)}) in it"
                         + (" or its class subfolders" if classes else ""))
    need = len(files) * 3 * image_size * image_size * 4
    if need > MAX_TOTAL_BYTES:
        raise ValueError(f"{path}: {len(files)} images of {image_size}x{image_size} take "
                         f"{need} bytes, more than {MAX_TOTAL_BYTES}; lower --image-size")
    x = np.empty((len(files), 3, image_size, image_size), np.float32)
    grey = True
    for i, f in enumerate(files):
        x[i], g = _read_image(f, image_size, Image)
        grey &= g
    if grey:
        x = np.ascontiguousarray(x[:, :1])
    names = classes if classes else ["unlabelled"]
    return _image_dataset(path, x, labels, names, files, seed)


# ------------------------------------------------------------------------------- array files

def _as_images(path, x):
    if x.ndim == 3:
        x = x[:, None]
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{path}: images must be (N, C, H, W) with C = 1 or 3 (or (N, H, W)), "
                         f"got {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    x = x.astype(np.float32)
    if not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
        raise ValueError(f"{path}: float images must be finite and in [0, 1] (or give uint8)")
    return x


def array_file(path, seed=0):
    """The images or series of a ``.npy``/``.npz`` file (see the module docstring)."""
    _check_size(path)
    try:
        f = np.load(path, allow_pickle=False)
        if isinstance(f, np.ndarray):
            x, y = f, None
        else:
            with f:
                if "x" not in f.files:
                    raise ValueError(f"{path}: an .npz needs an array 'x' (and optionally "
                                     f"'y'), found {', '.join(f.files) or 'none'}")
                # A compressed member inflates: its size is checked before it is read.
                inflated = sum(i.file_size for i in f.zip.infolist())
                if inflated > MAX_TOTAL_BYTES:
                    raise ValueError(f"{path}: its arrays inflate to {inflated} bytes, more "
                                     f"than the {MAX_TOTAL_BYTES} minissl reads")
                x, y = f["x"], (f["y"] if "y" in f.files else None)
    except ValueError as e:
        if str(e).startswith(path):
            raise
        raise ValueError(f"{path}: not a readable NumPy array file ({e})") from None
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable NumPy array file ({e})") from None
    if x.dtype.kind not in "uif" or x.ndim not in (2, 3, 4) or len(x) == 0:
        raise ValueError(f"{path}: expected numbers shaped (N, C, H, W), (N, H, W) images or "
                         f"(N, L) series, got {x.dtype} {x.shape}")
    if y is not None and (y.dtype.kind not in "iu" or y.shape != (len(x),) or y.min() < 0):
        raise ValueError(f"{path}: 'y' must be {len(x)} integer labels >= 0, got {y.dtype} "
                         f"{y.shape}")
    files = [f"{path}[{i}]" for i in range(len(x))]
    if x.ndim == 2:
        return _series(path, x.astype(np.float32), files, seed)
    k = int(y.max()) + 1 if y is not None else 1
    names = [str(c) for c in range(k)] if y is not None else ["unlabelled"]
    return _image_dataset(path, _as_images(path, x), y, names, files, seed)


def _series(path, x, files, seed):
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: the series hold NaN or infinity")
    tr, te = _split(len(x), None, path, seed)
    names = np.asarray(files)
    return Series(x[tr], np.zeros(0), 0.0, test_series=x[te],
                  train_files=tuple(names[tr]), test_files=tuple(names[te]))


# ------------------------------------------------------------------------------- text, audio

def text_path(path):
    """A :class:`TextCorpus` of a ``.txt`` file or a folder of them."""
    files = ([os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
              if f.endswith(".txt") and not f.startswith(".")] if os.path.isdir(path) else [path])
    if not files:
        raise ValueError(f"{path}: no .txt files in it")
    total = sum(_check_size(f) for f in files)
    if total > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {total} bytes of text, more than {MAX_FILE_BYTES}")
    return text(path, pattern="*.txt", max_chars=None)


def read_wav(path):
    """A WAV file's samples as float32 mono in [-1, 1], and its sample rate."""
    _check_size(path)
    try:
        with wave.open(path, "rb") as w:
            ch, width, rate, n = (w.getnchannels(), w.getsampwidth(), w.getframerate(),
                                  w.getnframes())
            if width not in (1, 2):
                raise ValueError(f"{path}: {8 * width}-bit samples; minissl reads 8- and "
                                 f"16-bit PCM")
            raw = w.readframes(n)
    except ValueError:
        raise
    except (wave.Error, EOFError, OSError) as e:
        raise ValueError(f"{path}: not a readable WAV file ({e})") from None
    if len(raw) != n * ch * width:
        raise ValueError(f"{path}: truncated ({len(raw)} of {n * ch * width} data bytes)")
    a = np.frombuffer(raw, np.uint8 if width == 1 else "<i2").astype(np.float32)
    a = (a - 128) / 128 if width == 1 else a / 32768
    return a.reshape(-1, ch).mean(axis=1), rate


def write_wav(path, samples, rate):
    """Write mono ``samples`` in [-1, 1] (clipped) as a 16-bit PCM WAV file at ``rate`` Hz,
    through a temporary file moved over ``path``: never a half-written file."""
    pcm = np.round(np.clip(np.asarray(samples, np.float64), -1, 1) * 32767).astype("<i2")
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with wave.open(tmp, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(int(rate))
            w.writeframes(pcm.tobytes())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _wav_files(path):
    """The WAV files of ``path`` and their labels: one class per subfolder (names sorted),
    else the files of ``path`` itself, unlabelled (labels None); and the class names."""
    classes = sorted(d for d in os.listdir(path)
                     if not d.startswith(".") and os.path.isdir(os.path.join(path, d)))
    files, labels = [], []
    for c, name in enumerate(classes):
        found = _listed(os.path.join(path, name), (".wav",))
        files += found
        labels += [c] * len(found)
    if not files:
        classes, files, labels = [], _listed(path, (".wav",)), None
    if not files:
        raise ValueError(f"{path}: no .wav files in it or its class subfolders")
    total = sum(_check_size(f) for f in files)
    if total > MAX_TOTAL_BYTES // 4:   # 8-bit samples become 4-byte floats
        raise ValueError(f"{path}: {total} bytes of audio, more than the "
                         f"{MAX_TOTAL_BYTES // 4} minissl reads")
    return files, (None if labels is None else np.asarray(labels, np.int64)), classes


def _read_wavs(files):
    """Each file's samples (``read_wav``) and the one sample rate they share."""
    out, rate = [], None
    for f in files:
        a, r = read_wav(f)
        if rate is not None and r != rate:
            raise ValueError(f"{f}: sample rate {r} Hz, but {files[0]} has {rate} Hz; "
                             f"resample them to one rate")
        rate = r
        out.append(a)
    return out, rate


def wav_folder(path, series_length=256, seed=0):
    """A :class:`Series` of the windows of the WAV files in ``path`` (and its subfolders)."""
    files, _, _ = _wav_files(path)
    windows, names = [], []
    for f, a in zip(files, _read_wavs(files)[0]):
        k = len(a) // series_length
        windows.append(a[:k * series_length].reshape(k, series_length))
        names += [f"{f}@{i * series_length}" for i in range(k)]
    if not names:
        raise ValueError(f"{path}: every WAV file is shorter than {series_length} samples")
    return _series(path, np.concatenate(windows), names, seed)


def wav_clips(path, clip_length=None, seed=0):
    """An :class:`AudioDataset` of the WAV files in ``path``, one clip per file: class
    subfolders give the labels (folder names, sorted), no subfolders means unlabelled. Each
    clip is cut or zero-padded at its end to ``clip_length`` samples (default: the longest
    file, capped at ``MAX_CLIP``)."""
    files, labels, classes = _wav_files(path)
    waves, rate = _read_wavs(files)
    L = int(clip_length) if clip_length else min(max(len(a) for a in waves), MAX_CLIP)
    if L < 1:
        raise ValueError(f"{path}: the WAV files hold no samples")
    x = np.zeros((len(waves), L), np.float32)
    for i, a in enumerate(waves):
        x[i, :min(L, len(a))] = a[:L]
    y = np.zeros(len(x), np.int64) if labels is None else labels
    tr, te = _split(len(x), labels, path, seed)
    names = np.asarray(files)
    return AudioDataset(os.path.basename(os.path.normpath(path)), x[tr], y[tr], x[te], y[te],
                        num_classes=max(1, len(classes)),
                        class_names=list(classes) if classes else ["unlabelled"],
                        sample_rate=int(rate), train_files=tuple(names[tr]),
                        test_files=tuple(names[te]), labelled=labels is not None)


def kind_of_path(path):
    """"images", "series", "text", "audio" or "array" (images or series: read to tell)."""
    if os.path.isfile(path):
        low = path.lower()
        if low.endswith((".npy", ".npz")):
            return "array"
        if low.endswith(".txt"):
            return "text"
        raise ValueError(f"{path}: not a data file minissl reads (.npy, .npz, .txt, or a "
                         f"folder of images, .txt or .wav files)")
    if not os.path.isdir(path):
        raise ValueError(f"{path}: no such file or folder")
    found = {k for d, _, fs in os.walk(path) for f in fs for k in
             (("images",) if f.lower().endswith(IMAGE_SUFFIXES) else
              ("text",) if f.endswith(".txt") else ("audio",) if f.lower().endswith(".wav")
              else ())}
    if len(found) != 1:
        raise ValueError(f"{path}: " + ("holds no image (.png, .jpg), .txt or .wav files"
                                        if not found else
                                        f"mixes {' and '.join(sorted(found))} files; keep one "
                                        f"kind per folder"))
    return found.pop()


def from_path(path, image_size=32, series_length=256, seed=0, audio="series"):
    """What ``path`` holds, ready to train on (see the module docstring). A folder of WAV
    files becomes a :class:`Series` of windows (``audio="series"``) or an
    :class:`AudioDataset` of clips (``audio="clips"``)."""
    path = os.path.expanduser(os.fspath(path))
    if audio not in ("series", "clips"):
        raise ValueError(f"from_path: audio must be 'series' or 'clips', got {audio!r}")
    kind = kind_of_path(path)
    if kind == "images":
        return image_folder(path, image_size, seed)
    if kind == "array":
        return array_file(path, seed)
    if kind == "text":
        return text_path(path)
    if audio == "clips":
        return wav_clips(path, seed=seed)
    return wav_folder(path, series_length, seed)
