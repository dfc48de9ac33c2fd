# DiffLoRA with the negative (right) term only, at twice the rank: the same adapter parameter
# count as both terms at rank 16, and as LoRA on Q and K at rank 32 (config/train_lora.py).
out_dir = "out-lab/negative"
variant = "negative"
lora_rank = 32
lora_alpha = 64.0
