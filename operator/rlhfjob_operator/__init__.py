"""rlhfjob's operator: RLHFJob spec, planning and Kubernetes reconciliation. Never imports torch."""
