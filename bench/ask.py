"""Answer quality of s2t.ask on the question set over real transcripts.

The qa_set documents are spoken, transcribed by the worker and loaded as
one user's recordings (qa_corpus, cached). Every question is asked through
s2t.ask as the application role under row-level security:
- qa_set.QUESTIONS (known answer sentence) and qa_set.UNANSWERABLE.
- A citation is right when it is of the answer's recording and covers most
  of the answer sentence's time (the time of the sentence it highlights).

Reports for extractive mode:
- citation precision: right citations / all citations;
- answer recall: answerable questions with a right citation;
- correct refusals: unanswerable questions answered found = false;
- false refusals: answerable questions answered found = false;
- time per answer (p50/p95, the whole s2t.ask call);
- the calibration of s2t.answer_min_relevance: each threshold's correct
  refusals and answer recall, from the best relevance of every question.

With --gateway (make bench-ask starts s2t-llm and a gateway), every
question is also asked through POST /rag/ask?stream=true in generative
mode, the local chat model writing and the gateway checking: the same
measures over the final answers, how many stayed generative and why the
others fell back, and the time to the first event, to the model's first
token and to done.

Writes bench/results/ask.json.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.request

import psycopg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qa_corpus  # noqa: E402
from qa_set import QUESTIONS, UNANSWERABLE  # noqa: E402


def ask(con, uid, question, lang, min_relevance=None, max_sentences=3):
    with con.transaction():
        con.execute("SET LOCAL ROLE s2t_app")
        con.execute("SELECT set_config('s2t.user_id', %s, true)", (str(uid),))
        if min_relevance is not None:
            con.execute(f"SET LOCAL s2t.answer_min_relevance = {min_relevance}")
        t0 = time.perf_counter()
        a = con.execute("SELECT s2t.ask(%s, lang => %s, max_sentences => %s)",
                        (question, lang, max_sentences)).fetchone()[0]
        return a, (time.perf_counter() - t0) * 1000


def right(c, recs, corpus, doc, sentence):
    return (str(c["recording_id"]) == str(recs[doc])
            and qa_corpus.answers(c["start_ms"], c["end_ms"], corpus[doc]["times"], sentence))


def pct(xs, p):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(len(xs) * p))], 1)


def evaluate(con, uid, recs, corpus, min_relevance=None, max_sentences=3):
    cited = right_cited = recalled = false_refusals = refusals = 0
    times, best_answerable, best_unanswerable, misses = [], [], [], []
    for q, doc, sentence, _ in QUESTIONS:
        a, ms = ask(con, uid, q, corpus[doc]["lang"], min_relevance, max_sentences)
        times.append(ms)
        best_answerable.append(a["best_relevance"])
        if not a["found"]:
            false_refusals += 1
            misses.append({"question": q, "why": "not found", "best_relevance": round(a["best_relevance"], 3)})
            continue
        ok = [right(c, recs, corpus, doc, sentence) for c in a["citations"]]
        cited += len(ok)
        right_cited += sum(ok)
        if any(ok):
            recalled += 1
        else:
            misses.append({"question": q, "why": "wrong passage", "answer": a["answer"][:200]})
    for q in UNANSWERABLE:
        lang = "vi" if any(ord(ch) > 127 for ch in q) else "en"
        a, ms = ask(con, uid, q, lang, min_relevance, max_sentences)
        times.append(ms)
        best_unanswerable.append(a["best_relevance"])
        if not a["found"]:
            refusals += 1
        else:
            misses.append({"question": q, "why": "answered the unanswerable", "answer": a["answer"][:200]})
    return {
        "answerable": len(QUESTIONS), "unanswerable": len(UNANSWERABLE),
        "citation_precision": round(right_cited / cited, 3) if cited else None,
        "answer_recall": round(recalled / len(QUESTIONS), 3),
        "correct_refusals": f"{refusals}/{len(UNANSWERABLE)}",
        "false_refusals": f"{false_refusals}/{len(QUESTIONS)}",
        "citations_per_answer": round(cited / max(1, len(QUESTIONS) - false_refusals), 2),
        "ms_p50": pct(times, 0.5), "ms_p95": pct(times, 0.95),
        "misses": misses,
    }, best_answerable, best_unanswerable


def token(secret, uid):
    """An access token for uid, signed as the gateway signs (HS256)."""
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    now = int(time.time())
    head = enc(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = enc(json.dumps({"sub": str(uid), "iat": now, "exp": now + 3600,
                           "iss": "pg_s2t", "typ": "access"}).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{enc(sig)}"


def ask_gateway(base, tok, question, lang):
    """One streamed answer: its events and when each arrived (ms)."""
    req = urllib.request.Request(
        f"{base}/rag/ask?stream=true", method="POST",
        data=json.dumps({"question": question, "lang": lang, "mode": "generative"}).encode(),
        headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"})
    t0 = time.perf_counter()
    events, event, data = [], None, []
    with urllib.request.urlopen(req, timeout=300) as r:
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif not line and event:
                events.append((event, json.loads("".join(data)), (time.perf_counter() - t0) * 1000))
                event, data = None, []
    return events


def evaluate_generative(base, tok, recs, corpus):
    cited = right_cited = recalled = refusals = false_refusals = generative = 0
    first_event, first_token, total, reasons, misses = [], [], [], {}, []
    for q, doc, sentence, _ in QUESTIONS + [(u, None, None, None) for u in UNANSWERABLE]:
        lang = corpus[doc]["lang"] if doc else ("vi" if any(ord(ch) > 127 for ch in q) else "en")
        events = ask_gateway(base, tok, q, lang)
        done = events[-1][1]
        assert events[-1][0] == "done", events
        first_event.append(events[0][2])
        total.append(events[-1][2])
        tokens = [ms for e, _, ms in events if e == "answer"]
        if done["mode"] == "generative":
            generative += 1
            first_token.append(tokens[0])
        elif done.get("fallback"):
            why = done["fallback"]
            reasons[why] = reasons.get(why, 0) + 1
        if doc is None:
            if not done["found"]:
                refusals += 1
            continue
        if not done["found"]:
            false_refusals += 1
            continue
        ok = [right(c, recs, corpus, doc, sentence) for c in done["citations"]]
        cited += len(ok)
        right_cited += sum(ok)
        recalled += any(ok)
        if done["mode"] == "generative" and not any(ok):
            misses.append({"question": q, "answer": done["answer"][:200]})
    n = len(QUESTIONS) + len(UNANSWERABLE)
    return {
        "stayed_generative": f"{generative}/{n}",
        "fallbacks": reasons,
        "citation_precision": round(right_cited / cited, 3) if cited else None,
        "answer_recall": round(recalled / len(QUESTIONS), 3),
        "correct_refusals": f"{refusals}/{len(UNANSWERABLE)}",
        "false_refusals": f"{false_refusals}/{len(QUESTIONS)}",
        "first_event_ms_p50": pct(first_event, 0.5), "first_event_ms_p95": pct(first_event, 0.95),
        "first_token_ms_p50": pct(first_token, 0.5) if first_token else None,
        "first_token_ms_p95": pct(first_token, 0.95) if first_token else None,
        "total_ms_p50": pct(total, 0.5), "total_ms_p95": pct(total, 0.95),
        "generative_misses": misses,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--worker", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/pg_s2t/bench"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--gateway", help="base URL of a gateway with a chat model configured")
    ap.add_argument("--jwt-secret", help="the gateway's S2T_JWT_SECRET")
    ap.add_argument("--llm-model", help="the chat model's name (for the report)")
    args = ap.parse_args()
    os.makedirs(args.cache_dir, exist_ok=True)
    corpus = qa_corpus.transcripts(args.worker, args.models, args.cache_dir)
    con = psycopg.connect(host=args.host, port=args.port, user="s2t", dbname="bench", autocommit=True)
    uid, recs = qa_corpus.load(con, corpus)
    default = con.execute("SELECT current_setting('s2t.answer_min_relevance')::float").fetchone()[0]
    # Warm the backend's model once.
    ask(con, uid, "warm up", "en")
    # Calibration: every question's best relevance with no threshold.
    _, best_a, best_u = evaluate(con, uid, recs, corpus, 0)
    calibration = []
    for t in [x / 100 for x in range(30, 71, 5)]:
        calibration.append({"min_relevance": t,
                            "correct_refusals": sum(1 for b in best_u if b < t),
                            "answerable_kept": sum(1 for b in best_a if b >= t)})
    result, _, _ = evaluate(con, uid, recs, corpus)
    # Fewer quoted sentences: more precise citations, the same recall?
    by_sentences = []
    for n in (1, 2, 3):
        r, _, _ = evaluate(con, uid, recs, corpus, None, n)
        by_sentences.append({"max_sentences": n, **{k: v for k, v in r.items() if k != "misses"}})
    out = {"date": time.strftime("%Y-%m-%d"), "mode": "extractive",
           "embedding_model": con.execute("SELECT s2t.embedding_model()").fetchone()[0],
           "answer_min_relevance": default, "extractive": result,
           "best_relevance": {"answerable_min": round(min(best_a), 3),
                              "answerable_p10": round(sorted(best_a)[len(best_a) // 10], 3),
                              "unanswerable_max": round(max(best_u), 3),
                              "unanswerable": [round(b, 3) for b in best_u]},
           "calibration": calibration, "by_max_sentences": by_sentences}
    if args.gateway:
        gen_result = evaluate_generative(args.gateway, token(args.jwt_secret, uid), recs, corpus)
        out["generative"] = {"model": args.llm_model, "through": "POST /rag/ask?stream=true",
                             **gen_result}
        print(json.dumps({k: v for k, v in gen_result.items() if k != "generative_misses"}, indent=2))
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2, ensure_ascii=False)
    print(json.dumps({k: v for k, v in result.items() if k != "misses"}, indent=2))
    print(json.dumps(out["best_relevance"]))
    for row in calibration + by_sentences:
        print(row)


if __name__ == "__main__":
    main()
