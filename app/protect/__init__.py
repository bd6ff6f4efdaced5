"""Protective controls for sensitive results: security labels, clearances, break-glass alerts.

- labels.py: the label vocabulary, what a stored resource carries, a Bundle's high-water mark;
- policy.py: the operator's configuration (which labels are sensitive, which codes get which
  labels on arrival) and the labelling of incoming resources;
- clearance.py: which labels a registered client or user may see, and the break-glass right;
- alerts.py: the break-glass alert records a privacy officer lists and acknowledges;
- enforce.py: per request, the token's withheld labels and the ``X-Break-Glass`` header;
- writes.py: writes by id and identity operations aimed at a withheld resource are refused (403);
- views.py and cli.py: the privacy officer's endpoint and the operators' commands.

Decision record: docs/decisions/0011-sensitive-results.md; operators: docs/security.md.
"""

from __future__ import annotations

from typing import Any


def init_app(app: Any) -> None:
    """Check the sensitivity configuration (a bad file stops start-up) and mount the alert view."""
    from app.protect.policy import policy_of
    from app.protect.views import bp

    policy_of(app)
    app.register_blueprint(bp)
