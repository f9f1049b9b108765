"""``fedrec serve``: start the partner's recommendation service on a trained run.

Imports nothing heavy at module level (``fedrec --help`` must stay fast); flags are derived from
``ServeSettings`` so each default is defined once (settings.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
from pathlib import Path

from client.serving.settings import DEFAULTS, ServeSettings, SettingsError, flag

HELP = {
    "host": "interface to bind", "port": "TCP port; 0 picks a free one (printed)",
    "max_k": "largest k a request may ask for", "candidates": "candidates retrieved before NeuMF re-ranking",
    "score_all_below": "catalogs up to this size are scored whole by NeuMF (no retrieval)",
    "ann_min_items": "catalog size from which retrieval uses the cluster index",
    "ann_clusters": "k-means clusters of the index (0 = 4 x the square root of the catalog size)",
    "ann_probes": "clusters scored per search (recall vs latency); 0 = tuned to --ann-recall-target",
    "ann_recall_target": "recall@10 against exact search that the tuned probe count must reach",
    "ann_tuning_queries": "store shoppers whose queries tune the probe count",
    "reload_interval_s": "seconds between checks for a newly published model",
    "max_text_chars": "longer item / query text is truncated",
    "refresh_steps": "Adam steps of the online refit after a click (0 = no refit)",
    "refresh_learning_rate": "learning rate of the online refit",
    "explain_items": "past items named per recommendation (explain)",
    "mapping_ridge": "ridge of the text -> item map fitted when the run has no cold_start.npz",
    "workers": "threads for the slow requests (text encoding, click log and refit)",
    "seed": "seed of the online refit's negatives, the index's k-means clustering and its tuning sample",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, type=Path, help="a finished run directory (model.npz)")
    parser.add_argument("--store", required=True,
                        help="store index of a simulation run (<run>/stores/store-<i>) or a store state dir")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the partner's own CSV files (default: the run's dataset)")
    for field in dataclasses.fields(ServeSettings):
        default = getattr(DEFAULTS, field.name)
        parser.add_argument(flag(field.name), type=type(default), default=default,
                            help=f"{HELP[field.name]} (default: {default})")
    parser.set_defaults(func=serve)


def settings_from(args: argparse.Namespace) -> ServeSettings:
    return ServeSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeSettings)})


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from(args)
    except SettingsError as exc:
        print(f"fedrec serve: {exc}", file=sys.stderr)
        return 2
    from client.serving.bootstrap import open_run_store
    from client.serving.model_bundle import ModelLoadError
    from client.serving.service import start_server
    from shared.text_encoder import TextEncoderError
    from shared.threads import limit_math_threads

    limit_math_threads()
    try:
        running = open_run_store(args.run_dir, args.store, settings, data_dir=args.data_dir)
    except (ModelLoadError, TextEncoderError) as exc:
        print(f"fedrec serve: cannot start: {exc}", file=sys.stderr)
        return 1
    server = start_server(running.recommender, settings, str(args.run_dir))
    running.watcher.start()
    info = running.recommender.info()
    print(f"fedrec serve: listening on {settings.host}:{server.port} — model {info.model_version}, "
          f"{info.catalog_size} items, {info.known_users} known shoppers", flush=True)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    running.watcher.stop()
    server.stop(grace=5)
    return 0
