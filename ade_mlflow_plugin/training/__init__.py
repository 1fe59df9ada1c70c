"""LoRA/QLoRA fine-tuning inside the job (the only package besides dataset/ that imports torch).

    config.py      TrainingConfig: MLproject params -> validated values (no torch)
    tiny.py        `ade-mlflow make-tiny-model`: a tiny deepseek-coder-shaped model for tests and the demo
    model.py       base model (+4/8-bit through bitsandbytes), the LoRA adapter, activation checkpointing
    packing.py     prompt/completion -> token rows: completion-only loss, best-fit-decreasing packing
    trainer.py     transformers Trainer over the rows, resumable from the checkpoint dir
    callbacks.py   step metrics, SIGTERM -> save and stop, complete-checkpoint markers
    checkpoints.py checkpoint dir, SIGTERM flag, newest complete checkpoint
    tracking.py    attach to MLFLOW_RUN_ID; non-blocking metric logging that survives a server outage (no torch)
    evaluation.py  eval_loss, perplexity, exact match of greedy completions
    modelio.py     mlflow.transformers.log_model (adapter + a base reference that outlives the job, or merged)
                   and registration
    pipeline.py    the entries' work: main / train / evaluate
    entry.py       their command lines (entrypoints/*.py call these)
"""
