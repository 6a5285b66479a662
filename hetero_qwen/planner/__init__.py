"""The placement planner: plain data about where weights, caches and ops live, made from the model
config and a Profile without touching a tensor. Policies live in `placement_policies`."""

from .context import PlanContext
from .plan import GroupPlacement, Plan, Prediction, TierUsage

__all__ = ["GroupPlacement", "Plan", "PlanContext", "Prediction", "TierUsage"]
