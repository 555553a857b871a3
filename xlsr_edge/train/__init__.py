"""Training side: a synthetic espeak-ng speech corpus (`synth`) and the cross-lingual CTC fine-tuning recipe
(`finetune`). Needs the `train` extra (torch, transformers, wordfreq); the runtime never imports this package.
"""
