"""The question set's recordings: spoken, transcribed, loaded.

Each document of qa_set.DOCS is spoken by espeak-ng one sentence at a time
(16 kHz mono, half a second between sentences, so every sentence's time in
the recording is known), transcribed by the release worker with the models
`make run` uses (`s2t-worker transcribe`, beam 5), and cached in
~/.cache/pg_s2t/bench/qa-<hash>.json (the hash covers the text, the voices
and the model files), so a rerun only loads it. load() puts the transcripts
into a database as one user's done recordings through the extension's own
functions (check_quota_and_create_recording, complete_recording, which
chunks them) and embeds the chunks with the backend's model.
"""

import hashlib
import json
import os
import subprocess
import tempfile
import time
import wave

from qa_set import DOCS

RATE = 16000
GAP_S = 0.5
VOICES = {"en": "en-us", "vi": "vi"}


def _speak(text, voice, path):
    raw = path + ".raw.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", raw, text], check=True)
    subprocess.run(["sox", raw, "-r", str(RATE), "-c", "1", "-b", "16", path], check=True)
    os.remove(raw)
    with wave.open(path, "rb") as w:
        return w.readframes(w.getnframes())


def _document_wav(key, lang, sentences, path, tmp):
    """The document as one WAV; returns each sentence's [start_ms, end_ms)."""
    gap = b"\0\0" * int(RATE * GAP_S)
    frames, times, at = [gap], [], len(gap) // 2
    for i, s in enumerate(sentences):
        pcm = _speak(s, VOICES[lang], os.path.join(tmp, f"{key}-{i}.wav"))
        start = at
        at += len(pcm) // 2
        times.append((start * 1000 // RATE, at * 1000 // RATE))
        frames += [pcm, gap]
        at += len(gap) // 2
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(b"".join(frames))
    return times, at * 1000 // RATE


def model_paths(models):
    return os.path.join(models, "ggml-base.bin"), os.path.join(models, "ggml-tiny.en.bin")


def transcripts(worker, models, cache_dir):
    """{doc: {lang, title, sentences, times, duration_ms, segments}}, built or cached."""
    multi, english = model_paths(models)
    h = hashlib.sha256(json.dumps(DOCS, sort_keys=True).encode())
    for m in (multi, english):
        st = os.stat(m)
        h.update(f"{m}:{st.st_size}".encode())
    cache = os.path.join(cache_dir, f"qa-{h.hexdigest()[:16]}.json")
    if os.path.exists(cache):
        with open(cache) as f:
            return json.load(f)
    out = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for key, (lang, title, sentences) in DOCS.items():
            path = os.path.join(tmp, f"{key}.wav")
            times, duration = _document_wav(key, lang, sentences, path, tmp)
            out[key] = {"lang": lang, "title": title, "sentences": sentences, "times": times,
                        "duration_ms": duration}
            files.setdefault(lang, []).append((key, path))
        for lang, pairs in files.items():
            run = subprocess.run([worker, "transcribe", "--model", multi, "--model-en", english,
                                  "--language", lang, "--beam-size", "5"] + [p for _, p in pairs],
                                 check=True, stdout=subprocess.PIPE, text=True)
            by_path = {}
            for line in run.stdout.splitlines():
                row = json.loads(line)
                if "file" in row:
                    by_path[row["file"]] = row
            for key, path in pairs:
                out[key]["segments"] = by_path[path]["segments"]
                out[key]["transcribe_s"] = round(by_path[path]["seconds"], 1)
    out["_meta"] = {"built_s": round(time.time() - t0, 1)}
    with open(cache + ".tmp", "w") as f:
        json.dump(out, f, ensure_ascii=False)
    os.rename(cache + ".tmp", cache)
    return out


def load(con, corpus, login="qa_user"):
    """One user's done recordings; returns (user id, {doc: recording id})."""
    uid = con.execute("SELECT s2t.register_user(%s, %s, '$argon2id$bench', NULL)",
                      (f"{login}@bench.test", login)).fetchone()[0]
    recs = {}
    for key, doc in corpus.items():
        if key.startswith("_"):
            continue
        rec = con.execute("SELECT s2t.check_quota_and_create_recording(%s, 'upload', %s, %s, NULL, %s)",
                          (uid, doc["lang"], json.dumps({"title": doc["title"]}), doc["duration_ms"])).fetchone()[0]
        segs = [{"idx": i, "start_ms": s["start_ms"], "end_ms": s["end_ms"], "text": s["text"]}
                for i, s in enumerate(doc["segments"])]
        con.execute("SELECT s2t.complete_recording(%s, %s, %s)", (rec, doc["duration_ms"], json.dumps(segs)))
        recs[key] = rec
    con.execute("UPDATE s2t.transcript_chunks SET embedding = s2t.embed(text),"
                " embedding_model = s2t.embedding_model() WHERE embedding IS NULL")
    return uid, recs


def answers(hit_start, hit_end, times, sentence):
    """Whether a retrieved passage [hit_start, hit_end) holds the answer
    sentence: it covers at least half of that sentence's time."""
    s, e = times[sentence]
    overlap = min(hit_end, e) - max(hit_start, s)
    return overlap >= 0.5 * (e - s)
