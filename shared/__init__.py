"""Code both sides import: model, data, split, metrics, privacy ledger, config. Imports nothing from client/,
server/ or simulations/."""

import os

# fedrec never phones home. Flower's telemetry sends an HTTPS event from every process start and every
# ClientApp task (in a deployment that was also CPU time in each task); it stays off unless the operator sets
# FLWR_TELEMETRY_ENABLED. Flower reads it when first imported, and fedrec's entry points import this package
# first; the images and docker-compose.yml set it for Flower's own commands.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
