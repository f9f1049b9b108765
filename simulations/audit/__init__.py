"""Privacy audits as simulation runs (``fedrec audit``): a utility-vs-ε sweep on the real Flower apps, ε
recomputed from every client's ledger, attacks against fedrec's own outputs, and one report with plots.

Modules: ``config`` (the audit TOML, validated before anything runs), ``sweep`` (points, one result file each,
resumable), ``accounting`` (independent ε recomputation), ``attacks`` (membership and item-set inference, pure
functions), ``probes`` (the attacks applied to a finished run), ``report`` (report.json, report.md, plots).
"""
