"""Zero-shot evaluation: M2IB saliency -> post-processing -> box prompts -> SAM/LiteMedSAM -> metrics.

Submodules are imported explicitly (``from finetune.evaluation.m2ib import m2ib_saliency``) so
that importing the package stays cheap and loads no model.
"""
