# The LoRA baseline on the needle task at DiffLoRA's parameter budget (Q, K at rank 32).
out_dir = "out-needle-lora"
dataset = "needle"
block_size = 255
batch_size = 16
gradient_accumulation_steps = 2
max_iters = 400
eval_interval = 50
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 12
method = "lora"
lora_targets = "q,k"
lora_rank = 32
lora_alpha = 64.0
