"""Keys of the round config the server sends with every fit/evaluate instruction (both sides import these)."""

ROUND_KEY = "round"                  # the global round number (continues across resumes)
RUN_DIR_KEY = "run-dir"              # where a simulated store keeps its state when no state-dir is set
NOISE_KEY = "noise-multiplier"       # σ of user-level DP-FedAvg, as the server computed it
