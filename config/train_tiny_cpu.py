# DiffLoRA on gpt2 and tiny-shakespeare in a couple of minutes on a laptop CPU: short windows,
# few iterations (downloads gpt2 and tiny-shakespeare on first use).
out_dir = "out-tiny-cpu"
init_from = "gpt2"
dataset = "shakespeare"
device = "cpu"
block_size = 64
batch_size = 4
gradient_accumulation_steps = 1
max_iters = 60
eval_interval = 30
eval_iters = 4
log_interval = 10
warmup_iters = 3
learning_rate = 1e-3
min_lr = 1e-4
lora_rank = 8
lora_alpha = 16.0
