"""Keys of the round config the server sends with every fit/evaluate instruction (both sides import these)."""

ROUND_KEY = "round"                  # the global round number (continues across resumes)
RUN_DIR_KEY = "run-dir"              # where a simulated store keeps its state when no state-dir is set
NOISE_KEY = "noise-multiplier"       # σ of user-level DP-FedAvg, as the server computed it
EVALUATE_ROUND_KEY = "evaluate-round"  # fold-evaluation: evaluate the incoming (round r) model, then train
EVALUATED_PREFIX = "evaluated/"      # ... and its metrics come back in the fit reply under this prefix
