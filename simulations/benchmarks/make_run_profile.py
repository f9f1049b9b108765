"""Where the time of the default run (`make run`) goes: imports, data, text features, Ray start + round 1,
steady rounds. Runs the default configuration in this process. Ends with one JSON line.

    .venv/bin/python -m simulations.benchmarks.make_run_profile [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    import flwr.simulation  # noqa: F401
    import torch  # noqa: F401

    t_import = time.perf_counter()
    from shared.config import from_mapping, parse_assignment
    from shared.workload import catalog_features, load_workload
    from simulations.simulate import simulate

    config = from_mapping(dict(parse_assignment(a) for a in args.set))
    load_workload(config)
    t_data = time.perf_counter()
    catalog_features(config)
    t_features = time.perf_counter()
    summary = simulate(config)
    t_end = time.perf_counter()
    metrics = json.loads((Path(summary["run_dir"]) / "metrics.json").read_text())
    history = [h for h in metrics if "seconds" in h]
    rounds = [h["seconds"] for h in history]
    profile = {
        "benchmark": "make_run_profile", "total_s": round(t_end - t0, 2),
        "import_flwr_torch_s": round(t_import - t0, 2), "load_data_split_s": round(t_data - t_import, 2),
        "text_features_s": round(t_features - t_data, 2),
        "simulation_s": round(t_end - t_features, 2),
        "round1_incl_ray_start_s": round(rounds[0], 2) if rounds else None,
        "later_rounds_s": [round(r, 2) for r in rounds[1:]],
        "ray_start_and_teardown_s": round((t_end - t_features) - sum(rounds), 2),
        "hr@10": summary["hr@10"], "epsilon": summary["epsilon"],
    }
    for key, value in profile.items():
        print(f"{key:<28}{value}")
    print(json.dumps(profile))
    return profile


if __name__ == "__main__":
    main()
