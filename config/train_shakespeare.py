# DiffLoRA on the pretrained gpt2, tiny-shakespeare, sized for one GPU (downloads both on first
# use): rank 16, both terms, learned lambda, 300 iterations of 32 x 256 tokens.
#   python train.py config/train_shakespeare.py
#   python train.py config/train_shakespeare.py config/train_lora.py --out_dir=out-shakespeare-lora
out_dir = "out-shakespeare-difflora"
init_from = "gpt2"
dataset = "shakespeare"
block_size = 256
batch_size = 8
gradient_accumulation_steps = 4
max_iters = 300
eval_interval = 50
eval_iters = 20
log_interval = 10
learning_rate = 2e-4
min_lr = 2e-5
warmup_iters = 10
