"""Orchestration: the DAGs' settings and tasks, the profiles' workspaces and the
`make run` driver."""
