"""Reproducing a past pipeline run (``busi reproduce``): its MLflow records, the commit's
git worktree and the rerun of that code."""
