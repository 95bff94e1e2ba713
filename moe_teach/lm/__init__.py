"""The small MoE language model of lesson 07: corpus, tokenizer, model, training and checkpoints.

Built on the model library (:mod:`moe_teach.transformer`); the library never imports it.
"""
