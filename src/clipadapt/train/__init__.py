"""Training that updates tower weights: the losses (``losses``, named in ``registry``), the
shared checkpointed loop (``loop``), what is trained (``tuning``), contrastive training on
image-text pairs (``contrastive``, ``finetune``) and the forgetting regulariser
(``retention``). Importing the package imports nothing heavy: ``options`` is read by the CLI
before torch loads.
"""
