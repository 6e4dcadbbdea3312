"""The ASR benchmark's audio, built offline from real recordings and espeak-ng.

Real speech comes from Debian's pocketsphinx-testdata (read English: five
LibriVox sentences, five card names, digits, a command), the only real
recordings on the machine. Longer files are these concatenated, varied in
tempo and pitch so one file is not the same seconds repeated verbatim; the
references are the known transcripts in the same order.

Classes, each {name: [(path, reference)]}:
- short: worker/tests/data/short_clips.tsv (0.5-3.5 s, espeak and real cuts).
- sentences: the five LibriVox sentences plus espeak sentences (3-30 s).
- long: 25, 40 and 55 s of concatenated real speech (16 kHz WAV).
- half_hour: 30 minutes of it as 44.1 kHz stereo MP3 (what users upload).
- browser: 60 s as 48 kHz Opus in WebM (what MediaRecorder sends).
"""

import os
import random
import subprocess

DATA = "/usr/share/pocketsphinx/test/data"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT_CLIPS = os.path.join(ROOT, "worker", "tests", "data", "short_clips.tsv")

ENGLISH = [
    "The morning train was late again, so the station filled with tired "
    "commuters holding paper cups of coffee.",
    "Please remember to water the tomato plants on the balcony before you "
    "leave for the weekend.",
    "Our library keeps old maps of the river valley in a quiet room on the "
    "third floor.",
]
# Longer than one 30 s window, so the full-window path is measured too.
ENGLISH_LONG = (
    "Speech recognition turns spoken words into written text. A good system "
    "listens carefully, ignores the silence between sentences, and never "
    "invents words that nobody said. When the recording is long, it splits "
    "the audio into windows and decodes each one in turn. The database "
    "stores every segment with its start and end time, so a reader can jump "
    "straight to the moment where a phrase was spoken. Search then finds the "
    "passage again, even when the question uses different words."
)
VIETNAMESE = [
    "Xin chào, hôm nay trời rất đẹp và chúng tôi đi dạo trong công viên.",
    "Tôi thích đọc sách vào buổi tối sau khi ăn cơm với gia đình.",
    "Thành phố Hà Nội có nhiều hồ nước và những con phố cổ.",
]
VIETNAMESE_SHORT = ["Xin chào", "Cảm ơn", "Hà Nội", "Không sao", "Tạm biệt"]

SOX16 = ["-r", "16000", "-c", "1", "-b", "16"]


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def sox_input(path: str) -> list[str]:
    """sox arguments that read a recording (raw files are headerless)."""
    if path.endswith(".raw"):
        return ["-t", "raw", "-r", "16000", "-e", "signed", "-b", "16", "-c", "1", path]
    return [path]


def speak(text: str, voice: str, wpm: int, path: str, pad: float) -> None:
    raw = path + ".raw.wav"
    run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", raw, text])
    run(["sox", "-V1", raw, *SOX16, path, "pad", str(pad), str(pad)])
    os.remove(raw)


def short_clips(work: str) -> list[tuple[str, str]]:
    """The clips of short_clips.tsv as 16 kHz WAVs, as the worker test makes them."""
    clips = []
    with open(SHORT_CLIPS) as f:
        lines = [ln.rstrip("\n") for ln in f if ln.strip() and not ln.startswith("#")]
    for i, line in enumerate(lines):
        how, reference = line.split("\t")
        parts = how.split()
        path = os.path.join(work, f"short{i:02d}.wav")
        if parts[0] == "espeak":
            speak(reference, parts[1], int(parts[2]), path, 0.1)
        else:
            trim = ["trim", parts[2], f"={parts[3]}"] if len(parts) == 4 else []
            run(["sox", "-V1", *sox_input(os.path.join(DATA, parts[1])), *SOX16, path, *trim])
        clips.append((path, reference))
    return clips


def real_recordings() -> list[tuple[list[str], str]]:
    """Every real recording with a known transcript: (sox input, reference)."""
    items = []
    with open(os.path.join(DATA, "librivox", "transcription")) as f:
        for line in f:
            text, _, ident = line.strip().rpartition(" (")
            text = text.replace("<s>", "").replace("</s>", "").strip()
            items.append(([os.path.join(DATA, "librivox", ident.rstrip(")") + ".wav")], text))
    with open(os.path.join(DATA, "cards", "cards.transcription")) as f:
        for line in f:
            text, _, ident = line.strip().rpartition(" (")
            text = text.replace("<s>", "").replace("</s>", "").strip()
            items.append(([os.path.join(DATA, "cards", ident.rstrip(")") + ".wav")], text))
    items.append((sox_input(os.path.join(DATA, "goforward.raw")), "go forward ten meters"))
    items.append((sox_input(os.path.join(DATA, "tidigits", "dhd.2934z.raw")),
                  "two nine three four zero"))
    return items


def concatenated(work: str, name: str, seconds: float, seed: int) -> tuple[str, str]:
    """Real recordings in a shuffled order, each with its own tempo, pitch,
    gain and pause, until `seconds`; a 16 kHz mono WAV and its reference."""
    rng = random.Random(seed)
    items = real_recordings()
    pieces, words, total, n = [], [], 0.0, 0
    while total < seconds:
        order = items[:]
        rng.shuffle(order)
        for source, text in order:
            if total >= seconds:
                break
            tempo = rng.choice([0.9, 0.95, 1.0, 1.05, 1.1])
            pitch = rng.choice([-150, -50, 0, 50, 150])
            gain = rng.choice([-6, -3, 0])
            pause = rng.choice([0.3, 0.5, 0.8, 1.2])
            piece = os.path.join(work, f"{name}-{n:04d}.wav")
            run(["sox", "-V1", *source, *SOX16, piece, "tempo", str(tempo),
                 "pitch", str(pitch), "gain", str(gain), "pad", "0", str(pause)])
            out = subprocess.run(["soxi", "-D", piece], check=True, capture_output=True, text=True)
            total += float(out.stdout)
            pieces.append(piece)
            words.append(text)
            n += 1
    path = os.path.join(work, f"{name}.wav")
    # sox opens every input at once; a list file keeps the argument list short.
    listing = os.path.join(work, f"{name}.txt")
    with open(listing, "w") as f:
        f.writelines(f"file '{p}'\n" for p in pieces)
    run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "concat", "-safe", "0",
         "-i", listing, "-c:a", "pcm_s16le", path])
    for p in pieces:
        os.remove(p)
    os.remove(listing)
    return path, " ".join(words)


def build(work: str, classes: list[str]) -> dict:
    """{language: {class: [(path, reference)]}} for the classes asked for."""
    en, vi = {}, {}
    if "short" in classes:
        en["short"] = short_clips(work)
        vi["short"] = []
        for i, text in enumerate(VIETNAMESE_SHORT):
            path = os.path.join(work, f"vishort{i}.wav")
            speak(text, "vi", 150, path, 0.1)
            vi["short"].append((path, text))
    if "sentences" in classes:
        items = [(src[0], text) for src, text in real_recordings()[:5]]
        for i, text in enumerate(ENGLISH + [ENGLISH_LONG]):
            path = os.path.join(work, f"en{i}.wav")
            speak(text, "en-us", 150, path, 0.5)
            items.append((path, text))
        en["sentences"] = items
        vi["sentences"] = []
        for i, text in enumerate(VIETNAMESE):
            path = os.path.join(work, f"vi{i}.wav")
            speak(text, "vi", 150, path, 0.5)
            vi["sentences"].append((path, text))
    if "long" in classes:
        en["long"] = [concatenated(work, f"long{s}", s, seed=s) for s in (25, 40, 55)]
    if "half_hour" in classes:
        wav, text = concatenated(work, "half-hour", 1800, seed=1800)
        mp3 = os.path.join(work, "half-hour-44k-stereo.mp3")
        run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", wav, "-ar", "44100",
             "-ac", "2", "-c:a", "libmp3lame", "-b:a", "128k", mp3])
        os.remove(wav)
        en["half_hour"] = [(mp3, text)]
    if "browser" in classes:
        wav, text = concatenated(work, "browser", 60, seed=60)
        webm = os.path.join(work, "browser-48k.webm")
        run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", wav, "-ar", "48000",
             "-ac", "1", "-c:a", "libopus", "-b:a", "32k", "-application", "voip", webm])
        os.remove(wav)
        en["browser"] = [(webm, text)]
    return {"en": en, "vi": vi}
