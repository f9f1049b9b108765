"""Code both sides import: model, data, split, metrics, privacy ledger, config. Imports nothing from client/,
server/ or simulations/."""
