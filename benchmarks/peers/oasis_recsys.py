"""OASIS's recommenders (camel-oasis), timed on a platform of our size.

Runs inside the ``oasis`` peer environment (``benchmarks/peers/setup.sh oasis``). For each of
OASIS's ``reddit`` (hot score) and ``random`` recommenders it builds a ``Platform`` on a SQLite file
with ``--users`` users and ``--posts`` posts (random likes/dislikes and creation times), then times
``Platform.update_rec_table()``: what OASIS runs every step to refresh every user's feed of
``--k`` posts (read the tables, rank, rewrite the rec table), and the ranking function alone
(``rec_sys_reddit`` / ``rec_sys_random``). The interest recommenders (``twitter``, ``twhin-bert``)
need sentence-transformer / TwHIN-BERT weights from a model hub, which this machine cannot reach,
so they are not run. Prints one JSON line per recommender.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from datetime import datetime, timedelta


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--posts", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from importlib.metadata import version

    from oasis.social_platform import recsys
    from oasis.social_platform.database import fetch_rec_table_as_matrix, fetch_table_from_db
    from oasis.social_platform.platform import Platform

    rng = random.Random(0)
    t_start = datetime(2024, 1, 1)
    for kind, fn in (("reddit", recsys.rec_sys_reddit), ("random", recsys.rec_sys_random)):
        with tempfile.TemporaryDirectory() as tmp:
            pf = Platform(os.path.join(tmp, "oasis.db"), recsys_type=kind, max_rec_post_len=args.k)
            cur = pf.db_cursor
            cur.executemany("INSERT INTO user (user_id, agent_id, user_name, name, bio, created_at) VALUES (?,?,?,?,?,?)",
                            [(u + 1, u, f"u{u}", f"user {u}", "", "2024-01-01 00:00:00") for u in range(args.users)])
            cur.executemany(
                "INSERT INTO post (post_id, user_id, content, created_at, num_likes, num_dislikes, num_shares) "
                "VALUES (?,?,?,?,?,?,?)",
                [(p + 1, rng.randrange(args.users) + 1, f"post {p}",
                  (t_start + timedelta(seconds=rng.randrange(86_400))).strftime("%Y-%m-%d %H:%M:%S.%f"),
                  rng.randrange(50), rng.randrange(20), 0) for p in range(args.posts)])
            pf.db.commit()
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                asyncio.run(pf.update_rec_table())
                times.append(time.perf_counter() - t0)
            post_table = fetch_table_from_db(cur, "post")
            rec_matrix = fetch_rec_table_as_matrix(cur)
            t0 = time.perf_counter()
            new = fn(post_table, rec_matrix, args.k)
            rank_s = time.perf_counter() - t0
            rows = cur.execute("SELECT COUNT(*) FROM rec").fetchone()[0]
            pf.db.close()
        print(json.dumps({"peer": "oasis", "recommender": kind, "version": version("camel-oasis"),
                          "users": args.users, "posts": args.posts, "k": args.k,
                          "update_rec_table_ms": 1e3 * min(times), "rank_only_ms": 1e3 * rank_s,
                          "rec_rows": rows, "feeds": len(new)}), flush=True)


if __name__ == "__main__":
    main()
