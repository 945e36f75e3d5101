"""Compatibility, not a step: model versions logged before the library moved to ``busi/``
pickled their pyfunc class by reference as ``components.pipeline_model.BusiPipeline``.

MLflow (3.x) puts a version's logged code first on ``sys.path`` when it loads it, but once
the ``components`` package is imported, ``components.pipeline_model`` is looked up in this
folder only. This name keeps such versions loading, with the current code (as they did
before the move); ``busi.serving.server.load_pyfunc`` imports it before loading any version
so that they always do. New versions pickle ``busi.model.pipeline_model.BusiPipeline`` and
log ``busi/`` as their code. Keep this module while such versions may be served.
"""

from busi.model.pipeline_model import BusiPipeline

__all__ = ["BusiPipeline"]
