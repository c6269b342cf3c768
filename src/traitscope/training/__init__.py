"""LoRA finetuning of a prepared variant: finetune (the resumable training loop and its
adapter), chat_data (chat JSONL to tokens with assistant-only labels) and checkpoints (save and
resume). Loading the model is in `traitscope.model`.
"""
