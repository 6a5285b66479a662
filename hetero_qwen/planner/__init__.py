"""The placement planner: plain data about where weights, caches and ops live, made from the model
config and a Profile without touching a tensor. The policies (which GPU set to try) live in the
top-level `placement_policies` package; this package is what every policy shares:

    plan data   : items.py (weight groups and their bytes), context.py (one planning problem),
                  plan.py (the Plan), build.py (homes -> Plan with tiers and predictions)
    cost model  : cost.py (roofline seconds per op and per hop; equations in COST_MODEL.md)
    report      : report.py (the plan table), advice.py (why nothing fits, which knob fixes it)
    running a policy: run_policy.py (stream-slot sizes, disk spill, best plan that fits),
                  disk_spill.py (which RAM groups stay on disk when RAM overflows)
"""

from .context import PlanContext
from .plan import GroupPlacement, Plan, Prediction, TierUsage

__all__ = ["GroupPlacement", "Plan", "PlanContext", "Prediction", "TierUsage"]
