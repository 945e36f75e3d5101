"""busi: the library of the busi-pipeline steps (data, models, tracking, serving,
orchestration, the local platform) and the `busi` command."""
