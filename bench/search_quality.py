"""Retrieval quality of s2t.search on the question set over real transcripts.

The qa_set documents are spoken, transcribed by the worker and loaded as
one user's recordings (qa_corpus). Every question of qa_set.QUESTIONS is
asked through s2t.search as the application role under row-level security,
three ways: hybrid (both rankings fused, the defaults), dense only
(s2t.lexical_weight = 0, hits the dense ranking found, in its order) and
lexical only (s2t.dense_weight = 0, likewise). A hit is right when it is of
the answer's recording and covers most of the answer sentence's time.

Reports per mode, overall and per language: MRR@10 (1/rank of the first
right hit), recall@1 and recall@5 (a right hit among the first 1 or 5).
Writes bench/results/search_quality.json.
"""

import argparse
import json
import os
import sys
import time

import psycopg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qa_corpus  # noqa: E402
from qa_set import QUESTIONS  # noqa: E402

MODES = {"hybrid": (None, None), "dense": (1, 0), "lexical": (0, 1)}
# The fusion's settings tried besides the defaults (s2t.rrf_k 60, both
# weights 1): (rrf_k, dense weight, lexical weight).
SWEEP = [(k, 1, lw) for k in (10, 30, 60) for lw in (0.25, 0.5, 0.75, 1)]


def ranked(con, uid, question, mode, rrf_k=None):
    dense_w, lexical_w = MODES[mode] if isinstance(mode, str) else mode
    with con.transaction():
        con.execute("SET LOCAL ROLE s2t_app")
        con.execute("SELECT set_config('s2t.user_id', %s, true)", (str(uid),))
        if rrf_k is not None:
            con.execute(f"SET LOCAL s2t.rrf_k = {rrf_k}")
        if dense_w is not None:
            con.execute(f"SET LOCAL s2t.dense_weight = {dense_w}")
            con.execute(f"SET LOCAL s2t.lexical_weight = {lexical_w}")
        rows = con.execute("SELECT recording_id, start_ms, end_ms, dense_rank, lexical_rank"
                           " FROM s2t.search(%s, 10)", (question,)).fetchall()
    if mode == "dense":
        rows = sorted((r for r in rows if r[3] is not None), key=lambda r: r[3])
    elif mode == "lexical":
        rows = sorted((r for r in rows if r[4] is not None), key=lambda r: r[4])
    return rows


def first_right(rows, corpus, recs, doc, sentence):
    """The 1-based rank of the first hit that holds the answer, or None."""
    times = corpus[doc]["times"]
    return next((i for i, r in enumerate(rows, 1)
                 if str(r[0]) == str(recs[doc]) and qa_corpus.answers(r[1], r[2], times, sentence)), None)


def metrics(ranks):
    n = len(ranks)
    return {"questions": n,
            "mrr_at_10": round(sum(1 / r for r in ranks if r) / n, 3),
            "recall_at_1": round(sum(1 for r in ranks if r == 1) / n, 3),
            "recall_at_5": round(sum(1 for r in ranks if r and r <= 5) / n, 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--worker", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/pg_s2t/bench"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.cache_dir, exist_ok=True)
    corpus = qa_corpus.transcripts(args.worker, args.models, args.cache_dir)
    con = psycopg.connect(host=args.host, port=args.port, user="s2t", dbname="bench", autocommit=True)
    t0 = time.time()
    uid, recs = qa_corpus.load(con, corpus)
    load_s = time.time() - t0
    chunks = con.execute("SELECT count(*) FROM s2t.transcript_chunks").fetchone()[0]
    result = {"date": time.strftime("%Y-%m-%d"), "documents": len(recs), "chunks": chunks,
              "audio_minutes": round(sum(d["duration_ms"] for k, d in corpus.items()
                                         if not k.startswith("_")) / 60000, 1),
              "transcribed_s": corpus["_meta"]["built_s"], "load_and_embed_s": round(load_s, 1),
              "embedding_model": con.execute("SELECT s2t.embedding_model()").fetchone()[0],
              "modes": {}, "misses": {}}
    for mode in MODES:
        ranks, by_lang = [], {}
        misses = []
        for q, doc, sentence, _ in QUESTIONS:
            rows = ranked(con, uid, q, mode)
            d = corpus[doc]
            rank = first_right(rows, corpus, recs, doc, sentence)
            ranks.append(rank)
            by_lang.setdefault(d["lang"], []).append(rank)
            if rank != 1:
                misses.append({"question": q, "rank": rank})
        result["modes"][mode] = {"all": metrics(ranks), **{lang: metrics(r) for lang, r in by_lang.items()}}
        result["misses"][mode] = misses
    result["sweep"] = []
    for k, dw, lw in SWEEP:
        ranks = [first_right(ranked(con, uid, q, (dw, lw), k), corpus, recs, doc, sentence)
                 for q, doc, sentence, _ in QUESTIONS]
        result["sweep"].append({"rrf_k": k, "dense_weight": dw, "lexical_weight": lw, **metrics(ranks)})
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
    print(json.dumps({m: v["all"] for m, v in result["modes"].items()}, indent=2))
    for row in result["sweep"]:
        print(row)


if __name__ == "__main__":
    main()
