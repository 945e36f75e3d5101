"""The models and what is computed with them: the chain, metrics, the pipeline model,
uncertainty, behaviour, drift and the model card."""
